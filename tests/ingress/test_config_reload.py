"""Reloading the config in a running ingress: ``POST /admin/config/reload`` puts a file checked in full in
force, refuses an invalid one (the old one serving on); a request in flight keeps the config it began with.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from pydantic import SecretStr
from redis import Redis
from rq.job import Job
from rq.serializers import JSONSerializer

from relay.ingress.app import create_app
from relay.ingress.state import READINESS
from relay.mapping.config import parse_config
from relay.mapping.version import ConfigVersion
from relay.queue.records import EventRecord, read_event
from relay.settings import Settings
from tests.conftest import TEST_CONFIG, poll
from tests.worker.test_delivery_to_runner import FORM

TOKEN = "reload-admin-token-3f9a"
Client = TestClient[web.Request, web.Application]
AUTH = {"Authorization": f"Bearer {TOKEN}"}
# What an operator's edit adds: a source, and a field in the callback route's payload.
NEW_CONFIG = TEST_CONFIG.replace(
    "  misrouted:\n", "  new-crm:\n    event_id: {path: id}\n  misrouted:\n"
).replace(
    "      name: {path: name, default: there}\n",
    "      name: {path: name, default: there}\n      campaign: spring\n",
)
NEW_CONFIG += """
  - name: new-crm-call
    source: new-crm
    phlo_id: 11111111-aaaa-4bbb-8ccc-000000000001
    payload: {to: {path: phone, required: true}}
"""
# What a reload must refuse: a route to no source (a cross-route rule), a source whose secret is not set.
INVALID_CONFIGS = {
    "no source 'new-cmr'": NEW_CONFIG.replace("    source: new-crm\n", "    source: new-cmr\n"),
    "environment variable RELOAD_TEST_UNSET_SECRET is not set": NEW_CONFIG.replace(
        "  new-crm:\n", "  new-crm:\n    verify: {scheme: github, secrets: [RELOAD_TEST_UNSET_SECRET]}\n"
    ),
}


def version_of(text: str) -> str:
    return ConfigVersion.of(parse_config(text, "test.yaml")).hash


async def start(aiohttp_client: Any, settings: Settings) -> Client:
    """The ingress on the settings' config file, with the admin API on."""
    with_token = settings.model_copy(update={"admin_token": SecretStr(TOKEN)})
    config = parse_config(settings.config_path.read_text(encoding="utf-8"), str(settings.config_path))
    client: Client = await aiohttp_client(create_app(with_token, config))
    return client


async def ready_version(client: Client) -> str:
    response = await client.get("/readyz")
    assert response.status == 200
    version: dict[str, Any] = (await response.json())["config_version"]
    return str(version["hash"])


def payload_of(redis: Redis, job_id: str) -> dict[str, Any]:
    payload: dict[str, Any] = Job.fetch(job_id, connection=redis, serializer=JSONSerializer).kwargs["payload"]
    return payload


async def test_a_valid_file_is_put_in_force_and_its_version_shown(
    aiohttp_client: Any, settings: Settings, redis: Redis
) -> None:
    client = await start(aiohttp_client, settings)
    old, new = version_of(TEST_CONFIG), version_of(NEW_CONFIG)
    assert await ready_version(client) == old
    assert (await client.post("/hooks/new-crm", json={"id": "c-1", "phone": "+14155550123"})).status == 404

    settings.config_path.write_text(NEW_CONFIG, encoding="utf-8")
    response = await client.post("/admin/config/reload", headers=AUTH)
    assert response.status == 200
    body = await response.json()
    assert body["reloaded"] is True and body["config_version"]["hash"] == new != old
    assert (body["sources"], body["routes"]) == (5, 6)
    assert await ready_version(client) == new

    added = await client.post("/hooks/new-crm", json={"id": "c-1", "phone": "+14155550123"})
    assert added.status == 202
    answer = await client.post("/hooks/website-form", json={**FORM, "submission_id": "after-reload"})
    assert answer.status == 202
    event = await answer.json()
    view = read_event(redis, event["event_id"])
    assert view is not None and view.event.config_version == new
    assert payload_of(redis, event["jobs"][0]["job_id"])["campaign"] == "spring"
    scraped = await (await client.get("/metrics", headers=AUTH)).text()
    assert f'relay_config_info{{version="{new}"}} 1.0' in scraped
    assert f'relay_config_info{{version="{old}"}} 0.0' in scraped


@pytest.mark.parametrize("problem", list(INVALID_CONFIGS))
async def test_an_invalid_file_is_refused_with_its_problems_and_the_old_config_serves_on(
    aiohttp_client: Any, settings: Settings, redis: Redis, problem: str
) -> None:
    client = await start(aiohttp_client, settings)
    old = version_of(TEST_CONFIG)
    settings.config_path.write_text(INVALID_CONFIGS[problem], encoding="utf-8")
    response = await client.post("/admin/config/reload", headers=AUTH)
    assert response.status == 422
    body = await response.json()
    assert body["error"] == "invalid_config" and body["config_version"]["hash"] == old
    assert [text for text in body["problems"] if problem in text], body["problems"]
    assert await ready_version(client) == old
    answer = await client.post("/hooks/website-form", json=FORM)
    assert answer.status == 202
    assert payload_of(redis, (await answer.json())["jobs"][0]["job_id"]).get("campaign") is None
    assert (await client.post("/hooks/new-crm", json={"id": "c-2", "phone": "+1"})).status == 404


async def test_reload_needs_the_admin_token(aiohttp_client: Any, settings: Settings) -> None:
    client = await start(aiohttp_client, settings)
    settings.config_path.write_text(NEW_CONFIG, encoding="utf-8")
    response = await client.post("/admin/config/reload", headers={"Authorization": "Bearer wrong"})
    assert response.status == 401
    assert await ready_version(client) == version_of(TEST_CONFIG)


async def test_a_request_in_flight_finishes_with_the_config_it_started_with(
    aiohttp_client: Any, settings: Settings, redis: Redis
) -> None:
    client = await start(aiohttp_client, settings)
    rest_may_go = asyncio.Event()
    body = (
        f'{{"submission_id": "in-flight", "form": "callback-request", "phone": "{FORM["phone"]}"}}'.encode()
    )

    async def slow_body() -> AsyncIterator[bytes]:
        yield body[:10]
        await rest_may_go.wait()  # the reload happens while the handler waits for the rest of the body
        yield body[10:]

    sending = asyncio.ensure_future(
        client.post("/hooks/website-form", data=slow_body(), headers={"Content-Type": "application/json"})
    )
    readiness = client.app[READINESS]
    await asyncio.to_thread(poll, lambda: readiness.in_flight == 1 or None, 10.0)
    settings.config_path.write_text(NEW_CONFIG, encoding="utf-8")
    assert (await client.post("/admin/config/reload", headers=AUTH)).status == 200
    rest_may_go.set()
    answer = await sending
    assert answer.status == 202
    event = await answer.json()
    view = read_event(redis, event["event_id"])
    assert view is not None and view.event.config_version == version_of(TEST_CONFIG)
    assert "campaign" not in payload_of(redis, event["jobs"][0]["job_id"])


def test_records_written_before_versions_still_load() -> None:
    older = (
        '{"event_id": "e-1", "source": "s", "source_event_id": null, "event_type": null, '
        '"received_at": 1.0, "status": "accepted", "routes": ["r"]}'
    )
    assert EventRecord.model_validate_json(older).config_version is None
