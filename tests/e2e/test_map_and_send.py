"""`relay map` shows what the ingress would make of a sample, and `relay send` posts a sample signed as its
vendor signs it: both checked against the sender examples' own expectations and a real ingress."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from pytest_aiohttp import AiohttpClient
from redis import Redis

from relay.dev.redis_server import EmbeddedRedis
from tests.conftest import ADMIN_HEADERS, Sandbox, check_for_leaks, clean_environment
from tests.e2e.test_sender_examples import (
    EXAMPLE_TABLE,
    EXAMPLES,
    PUBLIC_URL,
    ROOT,
    SALESFORCE_ADDRESS,
    SECRETS,
    Example,
    _ids,
    start_relay,
)

WEBSITE_FORM = EXAMPLES / "website-form.yaml"
[GITHUB] = [example for example in EXAMPLE_TABLE if example.id == "github"]
[WEBSITE] = [example for example in EXAMPLE_TABLE if example.id == "website-form"]


def relay(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [sys.executable, "-m", "relay", *args],
        cwd=ROOT,
        env=clean_environment(**env),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    check_for_leaks("relay " + " ".join(args[:2]), result.stdout + result.stderr)
    return result


def header_args(headers: dict[str, str]) -> list[str]:
    return [arg for name, value in headers.items() for arg in ("-H", f"{name}: {value}")]


def map_args(example: Example, body_file: Path, secret: str) -> list[str]:
    """`relay map --verify --json` of an example's sample, signed as the vendor signs it."""
    path, signed = example.sign(example.body, f"/hooks/{example.source}", secret)
    return [
        "map",
        example.source,
        str(body_file),
        "--config",
        str(EXAMPLES / f"{example.source}.yaml"),
        "--content-type",
        example.content_type,
        *header_args({**example.headers(), **signed}),
        "--url",
        PUBLIC_URL + path,
        "--client-ip",
        SALESFORCE_ADDRESS,  # only Salesforce's ip-allow scheme reads it
        "--verify",
        "--json",
    ]


def planned(report: dict[str, Any]) -> list[tuple[str, str]]:
    """The (PHLO id, payload) of every run the report says would be queued, comparable in any order."""
    runs = [
        (route["phlo_id"], json.dumps(route["payload"], sort_keys=True))
        for event in report["events"]
        for route in event["routes"]
        if "payload" in route
    ]
    return sorted(runs)


@pytest.mark.parametrize("example", _ids(EXAMPLE_TABLE))
def test_map_prints_the_payloads_the_example_delivers(example: Example, tmp_path: Path) -> None:
    body_file = tmp_path / "body"
    body_file.write_bytes(example.body)
    mapped = relay(*map_args(example, body_file, example.secret), **SECRETS[example.source])
    assert mapped.returncode == 0, mapped.stdout + mapped.stderr
    report = json.loads(mapped.stdout)
    assert report["verified"] is True
    expected = sorted((phlo_id, json.dumps(payload, sort_keys=True)) for phlo_id, payload in example.runs)
    assert planned(report) == expected
    assert report["runs"] == len(example.runs)


def test_map_reads_the_content_type_from_the_samples_extension() -> None:
    for sample in ["website-form.urlencoded", "jotform.multipart", "salesforce-outbound.xml"]:
        source = sample.partition(".")[0]
        mapped = relay(
            "map", source, f"config/examples/samples/{sample}", "--config", f"config/examples/{source}.yaml"
        )
        assert mapped.returncode == 0, mapped.stdout + mapped.stderr
        assert "run(s) would be queued" in mapped.stdout


async def test_a_malformed_body_exits_2_with_the_ingress_answer(
    tmp_path: Path, aiohttp_client: AiohttpClient, redis_server: EmbeddedRedis, redis: Redis, sandbox: Sandbox
) -> None:
    body = b'{"form": "callback-request", "phone": '
    (tmp_path / "body.json").write_bytes(body)
    mapped = relay(
        "map", "website-form", str(tmp_path / "body.json"), "--config", str(WEBSITE_FORM), "--json"
    )
    assert mapped.returncode == 2
    ingress = await start_relay(WEBSITE, aiohttp_client, redis_server, sandbox.url)
    answer = await ingress.client.post(
        "/hooks/website-form", data=body, headers={"Content-Type": "application/json"}
    )
    assert json.loads(mapped.stdout) == {"status": answer.status, **(await answer.json())}
    assert answer.status == 400

    text = relay("map", "website-form", str(tmp_path / "body.json"), "--config", str(WEBSITE_FORM))
    assert text.returncode == 2
    assert "HTTP 400" in text.stderr and "malformed_body" in text.stderr


def test_a_body_no_route_takes_exits_1_and_says_why(tmp_path: Path) -> None:
    (tmp_path / "bot.urlencoded").write_bytes(b"form=callback-request&phone=%2B14155550139&website=spam")
    (tmp_path / "other.urlencoded").write_bytes(b"form=newsletter&phone=%2B14155550139")
    bot = relay(
        "map", "website-form", str(tmp_path / "bot.urlencoded"), "--config", str(WEBSITE_FORM), "--json"
    )
    other = relay("map", "website-form", str(tmp_path / "other.urlencoded"), "--config", str(WEBSITE_FORM))
    assert (bot.returncode, other.returncode) == (1, 1)
    [event] = json.loads(bot.stdout)["events"]
    assert event["event_type"] == "callback-request"
    assert event["routes"] == [
        {
            "route": "website-callback-request",
            "phlo_id": "173e29d0-4443-49a3-a7f9-bffe02ffbfb7",
            "matched": False,
            "reason": "when '!website' is false",
        }
    ]
    assert "not matched: event type 'newsletter' is not one of callback-request" in other.stdout
    assert "0 run(s) would be queued" in other.stdout


def test_a_route_missing_a_required_key_shows_its_dead_letter_reason(tmp_path: Path) -> None:
    (tmp_path / "no-phone.urlencoded").write_bytes(b"form=callback-request&name=Ada")
    mapped = relay(
        "map", "website-form", str(tmp_path / "no-phone.urlencoded"), "--config", str(WEBSITE_FORM)
    )
    assert mapped.returncode == 1
    assert (
        "website-callback-request: matched, dead-lettered: required payload key 'visitor_phone': "
        "path 'phone' found no value" in mapped.stdout
    )


def test_routes_of_other_sources_are_listed_as_not_theirs(tmp_path: Path) -> None:
    config = tmp_path / "two.yaml"
    config.write_text(
        WEBSITE_FORM.read_text()
        + "  - {name: crm-call, source: crm, phlo_id: crm-phlo, payload: {to: {path: phone}}}\n"
        + "  - {name: catch-all, source: website-form, phlo_id: any-phlo}\n"
    )
    config.write_text(config.read_text().replace("sources:\n", "sources:\n  crm: {}\n", 1))
    sample = "config/examples/samples/website-form.urlencoded"
    mapped = relay("map", "website-form", sample, "--config", str(config), "--json")
    assert mapped.returncode == 0, mapped.stderr
    [event] = json.loads(mapped.stdout)["events"]
    assert [(route["route"], route["matched"]) for route in event["routes"]] == [
        ("website-callback-request", True),
        ("crm-call", False),
        ("catch-all", True),
    ]
    assert event["routes"][1]["reason"] == "the route is for source 'crm'"
    assert json.loads(mapped.stdout)["runs"] == 2


def test_verify_with_a_wrong_signature_exits_2_without_showing_the_secret(tmp_path: Path) -> None:
    body_file = tmp_path / "body"
    body_file.write_bytes(GITHUB.body)
    mapped = relay(*map_args(GITHUB, body_file, GITHUB.wrong_secret), **SECRETS["github"])
    assert mapped.returncode == 2
    assert json.loads(mapped.stdout) == {
        "status": 401,
        "error": "verification_failed",
        "message": "no signature matches any configured secret",
    }
    assert GITHUB.secret not in mapped.stdout + mapped.stderr


@pytest.mark.parametrize("example", [GITHUB, WEBSITE], ids=["github-hmac", "website-form-unsigned"])
async def test_send_signs_the_sample_and_the_relay_stores_its_event(
    example: Example,
    tmp_path: Path,
    aiohttp_client: AiohttpClient,
    redis_server: EmbeddedRedis,
    redis: Redis,
    sandbox: Sandbox,
) -> None:
    ingress = await start_relay(example, aiohttp_client, redis_server, sandbox.url)
    body_file = tmp_path / "body"
    body_file.write_bytes(example.body)
    # The relay verifies URL-signing schemes against RELAY_PUBLIC_URL; these sign the body only.
    command = [
        *("send", example.source, str(body_file), "--config", str(EXAMPLES / f"{example.source}.yaml")),
        *("--content-type", example.content_type, *header_args(example.headers())),
        *("--url", str(ingress.client.make_url(f"/hooks/{example.source}"))),
    ]
    sent = await asyncio.to_thread(relay, *command, **SECRETS[example.source])
    assert sent.returncode == 0, sent.stdout + sent.stderr
    status, _, answer = sent.stdout.partition("\n")
    assert status == "HTTP 202"
    event_id = json.loads(answer)["event_id"]
    stored = await ingress.client.get(f"/events/{event_id}", headers=ADMIN_HEADERS)
    assert stored.status == 200
    view = await stored.json()
    assert view["event"]["status"] == "accepted"
    assert [run["phlo_id"] for run in view["runs"]] == [phlo_id for phlo_id, _ in example.runs]


def test_send_exits_1_when_no_relay_answers() -> None:
    """No relay listens: no answer, exit 1, and the token in the query is not shown."""
    [jotform] = [example for example in EXAMPLE_TABLE if example.id == "jotform"]
    sent = relay(
        *("send", "jotform", "config/examples/samples/jotform.multipart"),
        *("--config", str(EXAMPLES / "jotform.yaml"), "--url", "http://127.0.0.1:9/hooks/jotform"),
        **SECRETS["jotform"],
    )
    assert sent.returncode == 1
    assert "no answer from http://127.0.0.1:9/hooks/jotform" in sent.stderr
    assert jotform.secret not in sent.stdout + sent.stderr
