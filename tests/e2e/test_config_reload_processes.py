"""Config reload in real processes: SIGHUP to ``relay serve --processes 2`` under a steady load of signed
webhooks, and to ``relay worker --processes 2``; the supervisor passes it to every child.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
from redis import Redis
from rq.job import Job
from rq.serializers import JSONSerializer

from relay.dev.redis_server import free_port
from relay.mapping.config import parse_config
from relay.mapping.version import ConfigVersion
from relay.queue.records import read_event
from relay.settings import Settings
from tests.conftest import KNOWN_PHLO, answers, clean_environment, poll
from tests.e2e.test_cli_commands import Lines

SECRET_ENV = "RELOAD_SIGNING_SECRET"
SECRET = "reload-signing-secret-41d7"
RATE_PER_S = 50
LOAD_S = 6.0
RELOAD_AT_S, INVALID_AT_S = 2.0, 4.0
SOURCE = f"verify: {{scheme: github, secrets: [{SECRET_ENV}]}}, event_id: {{path: ref}}"
ROUTE = f"phlo_id: {KNOWN_PHLO}, payload: {{ref: {{path: ref}}, to: {{path: phone, required: true}}"
OLD_CONFIG = f"""
sources:
  crm: {{{SOURCE}}}
routes:
  - {{name: crm-call, source: crm, {ROUTE}}}}}
"""
# The reload adds a signed source and changes the crm route's payload.
NEW_CONFIG = f"""
sources:
  crm: {{{SOURCE}}}
  forms: {{{SOURCE}}}
routes:
  - {{name: crm-call, source: crm, {ROUTE}, script: v2}}}}
  - {{name: forms-call, source: forms, {ROUTE}}}}}
"""
INVALID_CONFIG = NEW_CONFIG + "  - name: broken\n    source: nowhere\n    phlo_id: x\n"


def version_of(text: str) -> str:
    return ConfigVersion.of(parse_config(text, "test.yaml")).hash


def signed(ref: str) -> tuple[bytes, dict[str, str]]:
    body = json.dumps({"ref": ref, "phone": "+14155550123"}).encode()
    digest = hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
    return body, {"Content-Type": "application/json", "X-Hub-Signature-256": f"sha256={digest}"}


@contextlib.contextmanager
def relay(settings: Settings, *args: str) -> Iterator[tuple[subprocess.Popen[str], Lines]]:
    """A real ``relay`` command with text logs on stderr; killed with its process group at the end."""
    env = clean_environment(**{**settings.as_environment(), "RELAY_LOG_FORMAT": "text", SECRET_ENV: SECRET})
    process = subprocess.Popen(
        [sys.executable, "-m", "relay", *args],
        env=env,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        yield process, Lines(process.stderr)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(10)


@dataclass
class Load:
    """What the steady stream saw: every answer's status, and the events the 2xx ones stored."""

    statuses: list[int] = field(default_factory=list)
    events: list[tuple[float, str, str]] = field(default_factory=list)  # (sent at, event id, job id)


async def steady_load(url: str, started: float, load: Load) -> None:
    """RATE_PER_S signed webhooks a second to ``crm`` for LOAD_S, each on its own schedule (not waiting)."""

    async def one(client: httpx.AsyncClient, number: int) -> None:
        body, headers = signed(f"load-{number}")
        sent_at = time.monotonic()
        response = await client.post(f"{url}/hooks/crm", content=body, headers=headers)
        load.statuses.append(response.status_code)
        if response.status_code == 202:
            answer = response.json()
            load.events.append((sent_at, answer["event_id"], answer["jobs"][0]["job_id"]))

    async with httpx.AsyncClient(timeout=10) as client:
        sends = []
        for number in range(int(RATE_PER_S * LOAD_S)):
            await asyncio.sleep(max(0.0, started + number / RATE_PER_S - time.monotonic()))  # the schedule
            sends.append(asyncio.ensure_future(one(client, number)))
        await asyncio.gather(*sends)


async def first_202_of_new_source(client: httpx.AsyncClient, url: str, deadline_s: float) -> float:
    """Ask ``forms`` until it answers 202; the moment it did."""
    number = 0
    while time.monotonic() < deadline_s:
        number += 1
        body, headers = signed(f"probe-{number}")
        response = await client.post(f"{url}/hooks/forms", content=body, headers=headers)
        if response.status_code == 202:
            return time.monotonic()
        assert response.status_code == 404, response.text  # not yet reloaded: an unknown source
        await asyncio.sleep(0.01)  # the probe's pace
    raise AssertionError("the new source never answered 202")


def test_sighup_reload_under_load_across_two_ingress_processes(settings: Settings, redis: Redis) -> None:
    settings.config_path.write_text(OLD_CONFIG, encoding="utf-8")
    old, new = version_of(OLD_CONFIG), version_of(NEW_CONFIG)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with relay(settings, "serve", "--port", str(port), "--processes", "2") as (supervisor, lines):
        poll(lambda: answers(f"{url}/readyz") == 200 or None, timeout_s=30)
        load = Load()

        async def scenario() -> tuple[float, float]:
            started = time.monotonic()
            stream = asyncio.ensure_future(steady_load(url, started, load))
            await asyncio.sleep(max(0.0, started + RELOAD_AT_S - time.monotonic()))  # a point in the stream
            async with httpx.AsyncClient(
                timeout=5
            ) as probe:  # made before: its setup is not the relay's time
                settings.config_path.write_text(NEW_CONFIG, encoding="utf-8")
                hup_at = time.monotonic()
                supervisor.send_signal(signal.SIGHUP)
                answered_at = await first_202_of_new_source(probe, url, hup_at + 5)
            await asyncio.sleep(max(0.0, started + INVALID_AT_S - time.monotonic()))
            settings.config_path.write_text(INVALID_CONFIG, encoding="utf-8")
            supervisor.send_signal(signal.SIGHUP)
            await stream
            return hup_at, answered_at

        hup_at, answered_at = asyncio.run(scenario())
        reloaded = [lines.wait_for(f"config reloaded (SIGHUP): version {new}") for _ in range(2)]
        refused = [lines.wait_for(f"refused, version {new} stays in force") for _ in range(2)]
        readyz = [httpx.get(f"{url}/readyz").json()["config_version"]["hash"] for _ in range(10)]

    print(f"\nreload: first 202 of the new source {answered_at - hup_at:.3f} s after SIGHUP; "
          f"{len(load.statuses)} webhooks, {sum(s >= 300 for s in load.statuses)} non-2xx")  # fmt: skip
    assert len(load.statuses) == RATE_PER_S * LOAD_S
    assert [status for status in load.statuses if not 200 <= status < 300] == []
    assert answered_at - hup_at <= 1.0
    assert len(reloaded) == 2 and all("no source 'nowhere'" in line for line in refused)
    assert set(readyz) == {new}  # the invalid file left the new config serving in both processes
    # Each run carries the payload of the config its event record names; the runs sent once both processes
    # had reloaded (by the time the new source answered, plus the time both log lines took) carry the new one.
    by_version: dict[str | None, int] = {}
    for sent_at, event_id, job_id in load.events:
        view = read_event(redis, event_id)
        assert view is not None
        version = view.event.config_version
        by_version[version] = by_version.get(version, 0) + 1
        payload: dict[str, Any] = Job.fetch(job_id, connection=redis, serializer=JSONSerializer).kwargs[
            "payload"
        ]
        assert payload.get("script") == ("v2" if version == new else None), (version, payload)
        if sent_at >= hup_at + 1.0:
            assert version == new, (sent_at - hup_at, version)
    assert by_version.get(old) and by_version.get(new), by_version


def test_sighup_reaches_every_worker_process(settings: Settings) -> None:
    settings.config_path.write_text(OLD_CONFIG, encoding="utf-8")
    with relay(settings, "worker", "--processes", "2") as (supervisor, lines):
        started = [
            lines.wait_for(f"config loaded (start): version {version_of(OLD_CONFIG)}") for _ in range(2)
        ]
        settings.config_path.write_text(NEW_CONFIG, encoding="utf-8")
        supervisor.send_signal(signal.SIGHUP)
        lines.wait_for("SIGHUP passed to 2 process(es)")
        reloaded = [
            lines.wait_for(f"config loaded (SIGHUP): version {version_of(NEW_CONFIG)}") for _ in range(2)
        ]
        settings.config_path.write_text(INVALID_CONFIG, encoding="utf-8")
        supervisor.send_signal(signal.SIGHUP)
        refused = [
            lines.wait_for(f"refused, version {version_of(NEW_CONFIG)} stays in force") for _ in range(2)
        ]
        assert supervisor.poll() is None  # no process ended on the signal
    assert len(started) == len(reloaded) == len(refused) == 2
