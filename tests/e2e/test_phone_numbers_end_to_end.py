"""`format: e164` end to end: numbers as a form stores them reach the runner sandbox in E.164 through the
ingress, Redis and a real worker; an invalid one is dead-lettered at once with a reason that never shows
the number, and a replay after the config is fixed delivers it; `relay map` shows the normalised value."""

from __future__ import annotations

import json
import logging
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from redis import Redis

from relay.ingress.app import create_app
from relay.mapping.config import RelayConfig, parse_config
from relay.outcome.deadletters import list_dead_letters
from relay.outcome.replay import ReplayResult, replay
from relay.queue import records
from relay.queue.jobs import relay_queue
from relay.settings import Settings
from tests.conftest import (
    KNOWN_PHLO,
    Sandbox,
    assert_sdk_request,
    check_for_leaks,
    clean_environment,
    drain_queue,
)

Client = TestClient[web.Request, web.Application]
ROOT = Path(__file__).resolve().parents[2]

# The form's numbers carry no country code: without a default region none is valid.
CONFIG = f"""
sources:
  website-form:
    event_id: {{path: submission_id}}
routes:
  - name: callback
    source: website-form
    phlo_id: {KNOWN_PHLO}
    payload:
      from: "+14155550100"
      to: {{path: phone, required: true, format: e164}}
      name: {{path: name}}
"""
FIXED = CONFIG.replace("format: e164}", "format: e164, default_region: US}")
NATIONAL = "(415) 555-0123"


def config_of(text: str) -> RelayConfig:
    return parse_config(text, "phones.yaml")


async def start(aiohttp_client: Any, settings: Settings, text: str) -> Client:
    settings.config_path.write_text(text, encoding="utf-8")  # what a worker or a reload reads
    client: Client = await aiohttp_client(create_app(settings, config_of(text)))
    return client


async def post(client: Client, body: dict[str, Any]) -> dict[str, Any]:
    response = await client.post("/hooks/website-form", json=body)
    assert response.status in (200, 202), await response.text()
    answer: dict[str, Any] = await response.json()
    return answer


def assert_hidden(number: str, text: str) -> None:
    """Neither the number as stored nor its digits run together show in ``text``."""
    assert number not in text
    assert re.sub(r"\D", "", number) not in re.sub(r"\D", "", text)


async def test_numbers_as_stored_reach_the_runner_in_e164(
    aiohttp_client: Any, settings: Settings, sandbox: Sandbox
) -> None:
    client = await start(aiohttp_client, settings, FIXED)
    stored = [
        ("s-1", NATIONAL, "+14155550123"),
        ("s-2", "+44 (0) 20 7946 0958", "+442079460958"),
        ("s-3", 4155550124, "+14155550124"),  # a form that sends the number as a JSON number
        ("s-4", "tel:+1-415-555-0125", "+14155550125"),
    ]
    for submission_id, phone, _ in stored:
        answer = await post(client, {"submission_id": submission_id, "phone": phone, "name": "Ada"})
        assert answer["dead_lettered"] == [] and len(answer["jobs"]) == 1
    drain_queue(settings)
    runs = sandbox.runs()
    assert len(runs) == len(stored)
    received = sorted(json.loads(run["raw_body"])["to"] for run in runs)
    assert received == sorted(e164 for _, _, e164 in stored)
    for run in runs:
        assert_sdk_request(
            run, KNOWN_PHLO, {"from": "+14155550100", "to": json.loads(run["raw_body"])["to"], "name": "Ada"}
        )


async def test_an_invalid_number_is_dead_lettered_by_its_shape_and_a_replay_after_a_fix_delivers_it(
    aiohttp_client: Any,
    settings: Settings,
    sandbox: Sandbox,
    redis: Redis,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    client = await start(aiohttp_client, settings, CONFIG)
    answer = await post(client, {"submission_id": "s-9", "phone": NATIONAL, "name": "Grace"})

    # Dead-lettered at once: nothing queued, the sender told why, by the value's shape.
    assert answer["jobs"] == []
    [dead] = answer["dead_lettered"]
    reason = (
        "payload key 'to': not a valid phone number: no valid country code, and no region to read it in "
        "(value of 14 chars: digits, spaces, parentheses, hyphens; no default region)"
    )
    assert dead == {"route": "callback", "reason": reason}
    assert relay_queue(redis, settings).count == 0
    [letter] = list_dead_letters(redis, settings)
    job_id = f"{answer['event_id']}-callback"
    assert letter.job_id == job_id
    assert letter.reason is not None and reason in letter.reason
    run = records.read_run(redis, answer["event_id"], job_id)
    assert run is not None and run.status.value == "dead_lettered"
    for text in [json.dumps(answer), letter.reason, run.model_dump_json(), caplog.text]:
        assert_hidden(NATIONAL, text)

    # A replay with the config unchanged says again why, still without the number.
    still = replay(redis, settings, config_of(CONFIG), job_id)
    assert not still.replayed and still.reason == f"still cannot be mapped: {reason}"

    # The operator adds a default region; the replay maps the stored event again and delivers it.
    settings.config_path.write_text(FIXED, encoding="utf-8")
    result = replay(redis, settings, config_of(FIXED), job_id)
    assert result == ReplayResult(job_id=job_id, replayed=True, new_phlo_id=KNOWN_PHLO)
    drain_queue(settings)
    [delivered] = sandbox.runs()
    assert_sdk_request(delivered, KNOWN_PHLO, {"from": "+14155550100", "to": "+14155550123", "name": "Grace"})
    done = records.read_run(redis, answer["event_id"], job_id)
    assert done is not None and (done.status.value, done.attempts) == ("succeeded", 1)
    assert list_dead_letters(redis, settings) == []
    assert_hidden(NATIONAL, caplog.text)


# --- relay map ---------------------------------------------------------------------------------------


def relay_map(config: Path, sample: Path, *args: str) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [sys.executable, "-m", "relay", "map", "website-form", str(sample), "--config", str(config), *args],
        cwd=ROOT,
        env=clean_environment(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    check_for_leaks("relay map", result.stdout + result.stderr)
    return result


def test_map_shows_the_normalised_number_and_why_an_invalid_one_is_dead_lettered(tmp_path: Path) -> None:
    sample = tmp_path / "form.json"
    sample.write_text(
        json.dumps({"submission_id": "s-1", "phone": NATIONAL, "name": "Ada"}), encoding="utf-8"
    )
    fixed, broken = tmp_path / "fixed.yaml", tmp_path / "broken.yaml"
    fixed.write_text(FIXED, encoding="utf-8")
    broken.write_text(CONFIG, encoding="utf-8")

    mapped = relay_map(fixed, sample, "--json")
    assert mapped.returncode == 0, mapped.stdout + mapped.stderr
    [route] = json.loads(mapped.stdout)["events"][0]["routes"]
    assert route["payload"] == {"from": "+14155550100", "to": "+14155550123", "name": "Ada"}
    text = relay_map(fixed, sample)
    assert '"to": "+14155550123"' in text.stdout

    refused = relay_map(broken, sample)
    assert refused.returncode == 1, refused.stdout + refused.stderr
    assert "callback: matched, dead-lettered: payload key 'to': not a valid phone number" in refused.stdout
    assert "(value of 14 chars: digits, spaces, parentheses, hyphens; no default region)" in refused.stdout
    assert_hidden(NATIONAL, refused.stdout + refused.stderr)
