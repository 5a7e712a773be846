"""Requests to events, end to end: batches, duplicates, pings, and answers shaped for the sender."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from redis import Redis

from relay.dev.redis_server import free_port
from relay.ingress.app import create_app
from relay.ingress.hooks import SALESFORCE_ACK
from relay.mapping.config import RelayConfig, parse_config
from relay.queue.jobs import relay_queue
from relay.settings import Settings
from tests.conftest import (
    ADMIN_HEADERS,
    KNOWN_PHLO,
    Sandbox,
    answers,
    assert_sdk_request,
    clean_environment,
    drain_queue,
    poll,
    watch_secrets,
    with_admin_token,
)

GITHUB_SECRET = "It's a Secret to Everybody"
watch_secrets(GITHUB_SECRET)
CONFIG = f"""
sources:
  tally:
    event_id: {{path: eventId}}
    event_type: {{path: eventType}}
  website-form:
    event_type: {{path: form}}
  no-dedupe:
    event_id: {{path: id}}
    dedupe_window_s: 0
  short-window:
    event_id: {{path: id}}
    dedupe_window_s: 1
  hubspot-app:
    batch: "@"
    event_id: {{path: eventId}}
    event_type: {{path: subscriptionType}}
  salesforce:
    batch: Envelope.Body.notifications.Notification
    event_id: {{path: Id}}
    reply: salesforce-ack
  github:
    verify: {{scheme: github, secrets: [TEST_GITHUB_SECRET]}}
    event_id: {{header: X-GitHub-Delivery}}
    event_type: {{header: X-GitHub-Event}}
    form_document_field: payload
    ping_events: [ping]
  twilio-sms:
    event_id: {{path: MessageSid}}
    reply: twiml
routes:
  - {{name: tally-call, source: tally, phlo_id: {KNOWN_PHLO}, payload: {{to: {{path: data.phone}}}}}}
  - {{name: form-call, source: website-form, phlo_id: {KNOWN_PHLO}, payload: {{to: {{path: phone}}}}}}
  - {{name: plain, source: no-dedupe, phlo_id: {KNOWN_PHLO}, payload: {{to: {{path: phone}}}}}}
  - {{name: short, source: short-window, phlo_id: {KNOWN_PHLO}, payload: {{to: {{path: phone}}}}}}
  - name: new-contact
    source: hubspot-app
    events: [contact.creation]
    phlo_id: {KNOWN_PHLO}
    payload: {{contact: {{path: objectId}}}}
  - name: lead-call
    source: salesforce
    phlo_id: {KNOWN_PHLO}
    payload: {{to: {{path: sObject.Phone, required: true}}, lead: {{path: sObject.Id}}}}
  - name: issue-call
    source: github
    events: [issues]
    phlo_id: {KNOWN_PHLO}
    payload: {{title: {{path: issue.title}}}}
  - name: sms-reply
    source: twilio-sms
    phlo_id: {KNOWN_PHLO}
    payload: {{to: {{path: From}}}}
"""
ENVIRON = {"TEST_GITHUB_SECRET": GITHUB_SECRET}


def salesforce_message(*leads: tuple[str, str]) -> bytes:
    notifications = "".join(
        f"<Notification><Id>{notification_id}</Id>"
        '<sObject xsi:type="sf:Lead" xmlns:sf="urn:sobject.enterprise.soap.sforce.com">'
        f"<sf:Id>00Q{notification_id}</sf:Id><sf:Phone>{phone}</sf:Phone></sObject></Notification>"
        for notification_id, phone in leads
    )
    return (
        '<soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/" '
        'xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"><soapenv:Body>'
        '<notifications xmlns="http://soap.sforce.com/2005/09/outbound">'
        "<OrganizationId>00Dxx0000000000EAA</OrganizationId>"
        f"{notifications}</notifications></soapenv:Body></soapenv:Envelope>"
    ).encode()


@pytest.fixture
def events_config() -> RelayConfig:
    return parse_config(CONFIG, "events.yaml")


@pytest.fixture
async def client(aiohttp_client: Any, settings: Settings, events_config: RelayConfig) -> Any:
    return await aiohttp_client(create_app(with_admin_token(settings), events_config, environ=ENVIRON))


def queued(redis: Redis, settings: Settings) -> int:
    return relay_queue(redis, settings).count


async def test_a_repeat_is_answered_2xx_as_a_duplicate_and_creates_no_run(
    client: Any, settings: Settings, redis: Redis, sandbox: Sandbox
) -> None:
    tally = {"eventId": "evt-1", "eventType": "FORM_RESPONSE", "data": {"phone": "+14155550123"}}
    first = await client.post("/hooks/tally", json=tally)
    assert first.status == 202
    first_body = await first.json()
    again = await client.post("/hooks/tally", json=tally)
    assert again.status == 200
    again_body = await again.json()
    assert again_body["status"] == "duplicate"
    assert again_body["event_id"] == first_body["event_id"]
    assert again_body["jobs"] == []
    assert queued(redis, settings) == 1
    other = await client.post("/hooks/tally", json={**tally, "eventId": "evt-2"})
    assert other.status == 202
    drain_queue(settings)
    assert len(sandbox.runs()) == 2


async def test_without_an_event_id_the_body_digest_is_the_duplicate_key(
    client: Any, settings: Settings, redis: Redis
) -> None:
    form = {"form": "callback", "phone": "+14155550123"}
    assert (await client.post("/hooks/website-form", data=form)).status == 202
    assert (await (await client.post("/hooks/website-form", data=form)).json())["status"] == "duplicate"
    assert (await client.post("/hooks/website-form", data={**form, "phone": "+1415"})).status == 202
    assert queued(redis, settings) == 2


async def test_window_zero_never_deduplicates_and_a_window_expires(
    client: Any, settings: Settings, redis: Redis
) -> None:
    body = {"id": "same", "phone": "+14155550123"}
    for _ in range(2):
        assert (await client.post("/hooks/no-dedupe", json=body)).status == 202
    assert (await client.post("/hooks/short-window", json=body)).status == 202
    assert (await client.post("/hooks/short-window", json=body)).status == 200
    [seen_key] = redis.keys("relay:seen:short-window:*")
    assert 0 < redis.pttl(seen_key) <= 1000

    async def accepted_again() -> bool | None:
        response = await client.post("/hooks/short-window", json=body)
        return True if response.status == 202 else None

    deadline = asyncio.get_running_loop().time() + 5
    while not await accepted_again():
        assert asyncio.get_running_loop().time() < deadline, "the 1 s window never expired"
        await asyncio.sleep(0.05)
    assert queued(redis, settings) == 4


async def test_a_batch_becomes_one_event_each_recorded_and_deduplicated_on_its_own(
    client: Any, settings: Settings, redis: Redis
) -> None:
    def change(event_id: int, kind: str, object_id: int) -> dict[str, Any]:
        return {"eventId": event_id, "subscriptionType": kind, "objectId": object_id, "attemptNumber": 0}

    batch = [
        change(1, "contact.creation", 101),
        change(2, "contact.deletion", 102),
        change(1, "contact.creation", 101),  # HubSpot may repeat an event inside one batch
        change(3, "contact.creation", 103),
    ]
    response = await client.post("/hooks/hubspot-app", json=batch)
    assert response.status == 202
    events = (await response.json())["events"]
    assert [event["status"] for event in events] == ["accepted", "ignored", "duplicate", "accepted"]
    assert [event["source_event_id"] for event in events] == ["1", "2", "1", "3"]
    assert events[2]["event_id"] == events[0]["event_id"]
    for event in (events[0], events[1], events[3]):
        record = await (await client.get(f"/events/{event['event_id']}", headers=ADMIN_HEADERS)).json()
        assert record["event"]["source_event_id"] == event["source_event_id"]
    assert queued(redis, settings) == 2

    retried = await client.post("/hooks/hubspot-app", json=[{**batch[3], "attemptNumber": 1}])
    assert retried.status == 200
    [event] = (await retried.json())["events"]
    assert (event["status"], event["event_id"]) == ("duplicate", events[3]["event_id"])


async def test_salesforce_notifications_are_acked_with_soap_and_each_runs(
    client: Any, settings: Settings, redis: Redis, sandbox: Sandbox
) -> None:
    leads = [("04l001", "+14155550101"), ("04l002", "+14155550102"), ("04l003", "+14155550103")]
    headers = {"Content-Type": "text/xml; charset=utf-8", "SOAPAction": '""'}
    response = await client.post("/hooks/salesforce", data=salesforce_message(*leads), headers=headers)
    assert response.status == 200
    assert response.content_type == "text/xml"
    assert await response.text() == SALESFORCE_ACK
    # Salesforce sends the message again until acked; the repeat is acked and runs nothing more.
    again = await client.post("/hooks/salesforce", data=salesforce_message(*leads[:1]), headers=headers)
    assert await again.text() == SALESFORCE_ACK
    drain_queue(settings)
    runs = sorted(sandbox.runs(), key=lambda run: str(run["body"]["to"]))
    for run, (notification_id, phone) in zip(runs, leads, strict=True):
        assert_sdk_request(run, KNOWN_PHLO, {"to": phone, "lead": f"00Q{notification_id}"})


async def test_github_ping_is_answered_without_routing_and_the_form_payload_is_the_document(
    client: Any, settings: Settings, redis: Redis, sandbox: Sandbox
) -> None:
    def signed(body: bytes, event: str, delivery: str, content_type: str) -> dict[str, str]:
        digest = hmac.new(GITHUB_SECRET.encode(), body, hashlib.sha256).hexdigest()
        return {
            "X-Hub-Signature-256": f"sha256={digest}",
            "X-GitHub-Event": event,
            "X-GitHub-Delivery": delivery,
            "Content-Type": content_type,
        }

    ping = json.dumps({"zen": "Keep it logically awesome.", "hook_id": 1}).encode()
    response = await client.post(
        "/hooks/github", data=ping, headers=signed(ping, "ping", "d-0", "application/json")
    )
    assert response.status == 200
    assert (await response.json())["status"] == "ping"
    assert redis.keys("relay:*") == []

    issue = json.dumps({"action": "opened", "issue": {"title": "Call me"}})
    form = httpx.QueryParams({"payload": issue}).__str__().encode()
    headers = signed(form, "issues", "d-1", "application/x-www-form-urlencoded")
    response = await client.post("/hooks/github", data=form, headers=headers)
    assert response.status == 202
    drain_queue(settings)
    [run] = sandbox.runs()
    assert_sdk_request(run, KNOWN_PHLO, {"title": "Call me"})


async def test_a_request_that_fails_verification_is_401_logged_and_stores_nothing(
    client: Any, redis: Redis, caplog: pytest.LogCaptureFixture
) -> None:
    body = b'{"action": "opened"}'
    headers = {
        "X-Hub-Signature-256": "sha256=" + "0" * 64,
        "X-GitHub-Event": "issues",
        "Content-Type": "application/json",
    }
    with caplog.at_level(logging.WARNING, logger="relay.ingress.app"):
        response = await client.post("/hooks/github", data=body, headers=headers)
    assert response.status == 401
    reason = await response.json()
    assert reason["error"] == "verification_failed"
    assert reason["message"]
    assert redis.dbsize() == 0
    # The operator's log says why, and neither it nor the answer shows the secret or the right signature.
    [line] = [record.getMessage() for record in caplog.records if "refused" in record.getMessage()]
    assert "/hooks/github" in line and reason["message"] in line
    expected = hmac.new(GITHUB_SECRET.encode(), body, hashlib.sha256).hexdigest()
    for text in (line, json.dumps(reason)):
        assert GITHUB_SECRET not in text and expected not in text


async def test_twilio_messaging_webhooks_get_empty_twiml(
    client: Any, settings: Settings, redis: Redis
) -> None:
    form = {"MessageSid": "SM1", "From": "+14155550123", "To": "+14155550100", "Body": "call me"}
    response = await client.post("/hooks/twilio-sms", data=form)
    assert response.status == 200
    assert response.content_type == "text/xml"
    assert "<Response>" in await response.text()
    assert queued(redis, settings) == 1


@pytest.fixture
def two_ingresses(settings: Settings, tmp_path: Path) -> Iterator[list[str]]:
    config_path = tmp_path / "events.yaml"
    config_path.write_text(CONFIG, encoding="utf-8")
    ports = [free_port(), free_port()]
    processes = [
        subprocess.Popen(
            [sys.executable, "-m", "relay", "serve", "--port", str(port)],
            env=clean_environment(
                **{**settings.as_environment(), "RELAY_CONFIG_PATH": str(config_path)}, **ENVIRON
            ),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for port in ports
    ]
    try:
        urls = [f"http://127.0.0.1:{port}" for port in ports]
        for url in urls:
            poll(lambda url=url: answers(f"{url}/healthz"))  # type: ignore[misc]
        yield urls
    finally:
        for process in processes:
            process.terminate()
            process.wait(timeout=30)


async def test_concurrent_repeats_on_two_ingress_processes_make_one_set_of_runs(
    two_ingresses: list[str], settings: Settings, redis: Redis
) -> None:
    tally = {"eventId": "evt-concurrent", "eventType": "FORM_RESPONSE", "data": {"phone": "+14155550123"}}
    async with httpx.AsyncClient() as http:
        responses = await asyncio.gather(
            *(http.post(f"{two_ingresses[n % 2]}/hooks/tally", json=tally) for n in range(40))
        )
    statuses = sorted(response.status_code for response in responses)
    assert statuses == [200] * 39 + [202]
    bodies = [response.json() for response in responses]
    assert len({body["event_id"] for body in bodies}) == 1
    assert sorted(body["status"] for body in bodies) == ["accepted"] + ["duplicate"] * 39
    assert queued(redis, settings) == 1


async def test_a_burst_of_concurrent_events_is_all_stored(
    client: Any, settings: Settings, redis: Redis
) -> None:
    # Each store holds a WATCHed connection while RQ takes another: the pool must not run dry under load.
    async def post(number: int) -> int:
        tally = {
            "eventId": f"burst-{number}",
            "eventType": "FORM_RESPONSE",
            "data": {"phone": "+14155550123"},
        }
        response = await client.post("/hooks/tally", json=tally)
        return int(response.status)

    statuses = await asyncio.gather(*(post(number) for number in range(300)))
    assert statuses == [202] * 300
    assert queued(redis, settings) == 300
