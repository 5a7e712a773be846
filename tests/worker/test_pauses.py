"""Pause and resume as operators use them: real worker processes, the ingress, the sandbox, the CLI and the
admin API. A paused route, account or source holds its runs unattempted; resume releases them."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from typing import Any

from pydantic import SecretStr
from redis import Redis
from rq import Worker
from rq.registry import FailedJobRegistry

from relay import keys
from relay.ingress.app import create_app
from relay.mapping.config import RelayConfig
from relay.queue import pause
from relay.queue.jobs import relay_queue
from relay.settings import DEFAULT_ACCOUNT, Settings
from tests.conftest import (
    ADMIN_HEADERS,
    Sandbox,
    assert_attempts_are_its_attempt_steps,
    clean_environment,
    poll,
    with_admin_token,
)
from tests.worker.test_delivery_to_runner import FORM
from tests.worker.test_worker_processes import (
    busiest_window,
    post_events,
    until_all,
    wait_for_runs,
    worker_process,
)

TOKEN = "pause-admin-token"
HELD_LINE = 'relay_runs_held{kind="route",name="callback"} 100.0'


def _dead_letters(redis: Redis, settings: Settings) -> int:
    return FailedJobRegistry(queue=relay_queue(redis, settings)).count


async def _metrics(client: Any) -> str:
    response = await client.get("/metrics", headers=ADMIN_HEADERS)
    assert response.status == 200
    return str(await response.text())


async def test_a_paused_route_holds_100_runs_through_a_restart_and_resume_delivers_them_within_the_limit(
    aiohttp_client: Any, settings: Settings, config: RelayConfig, sandbox: Sandbox, redis: Redis
) -> None:
    limited = settings.model_copy(update={"rate_limit": 20, "rate_window_s": 1.0})
    assert pause.pause(redis, "route", "callback", "PHLO being fixed", "ops")
    client, event_ids = await post_events(aiohttp_client, limited, config, 100)
    with worker_process(limited):
        held = await until_all(client, event_ids, "paused")
    assert len(held) == 100
    assert all(run["attempts"] == 0 and run["history"][-1]["status"] == "paused" for run in held)
    assert sandbox.runs() == []
    assert _dead_letters(redis, limited) == 0
    assert redis.zcard(keys.held_key("route", "callback")) == 100
    assert HELD_LINE in await _metrics(client)

    # Every process restarts: a new ingress and a new worker. The pause and its held runs are in Redis.
    restarted = await aiohttp_client(create_app(with_admin_token(limited), config))
    with worker_process(limited):
        # A new run of the route, taken by the new worker, is held too: the new process reads the pause.
        late = await restarted.post("/hooks/website-form", json={**FORM, "submission_id": "sub-late"})
        assert late.status == 202
        event_ids.append((await late.json())["event_id"])
        await until_all(restarted, event_ids, "paused")
        assert sandbox.runs() == []
        assert 'relay_runs_held{kind="route",name="callback"} 101.0' in await _metrics(restarted)

        assert pause.resume(redis, relay_queue(redis, limited), "route", "callback") == 101
        received = await asyncio.to_thread(wait_for_runs, sandbox, 101)
        delivered = await until_all(restarted, event_ids, "succeeded")
    assert busiest_window([run["received_at"] for run in received], 1.0) <= 20
    for run in delivered:
        assert run["attempts"] == 1
        assert_attempts_are_its_attempt_steps(run)
        assert "paused" in [step["status"] for step in run["history"]]
    assert len(sandbox.runs()) == 101  # each delivered once
    assert _dead_letters(redis, limited) == 0
    assert pause.list_paused(redis) == []
    assert "relay_runs_held{" not in await _metrics(restarted)


async def test_a_paused_source_answers_202_stores_its_events_and_holds_their_runs(
    aiohttp_client: Any, settings: Settings, config: RelayConfig, sandbox: Sandbox, redis: Redis
) -> None:
    pause.pause(redis, "source", "website-form", "sender misbehaving", "ops")
    client, event_ids = await post_events(aiohttp_client, settings, config, 3)  # asserts 202 each
    with worker_process(settings):
        held = await until_all(client, event_ids, "paused")
        assert {step["note"] for run in held for step in run["history"] if step["status"] == "paused"} == {
            "source 'website-form' is paused"
        }
        assert sandbox.runs() == []
        assert pause.resume(redis, relay_queue(redis, settings), "source", "website-form") == 3
        await until_all(client, event_ids, "succeeded")
    assert len(sandbox.runs()) == 3


async def test_a_paused_account_holds_its_runs_and_the_time_held_does_not_spend_their_max_age(
    aiohttp_client: Any, settings: Settings, config: RelayConfig, sandbox: Sandbox, redis: Redis
) -> None:
    short = settings.model_copy(update={"run_max_age_s": 3})
    pause.pause(redis, "account", DEFAULT_ACCOUNT, "credentials rotated", "ops")
    with worker_process(short):
        await asyncio.to_thread(poll, lambda: Worker.count(connection=redis) or None)  # it is up
        client, event_ids = await post_events(aiohttp_client, short, config, 1)
        [run] = await until_all(client, event_ids, "paused")
        # Time must pass here: the run is held until its max age (from its event) has passed.
        await asyncio.sleep(max(0.0, run["history"][0]["at"] + short.run_max_age_s + 1 - time.time()))
        # Its first attempt fails: the retry is scheduled only if the time held extended its age.
        sandbox.fail(503, 1)
        assert pause.resume(redis, relay_queue(redis, short), "account", DEFAULT_ACCOUNT) == 1
        [run] = await until_all(client, event_ids, "succeeded")
    assert run["attempts"] == 2
    assert run["held_s"] >= short.run_max_age_s
    assert _dead_letters(redis, short) == 0


def _relay(settings: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "relay", *args],
        env=clean_environment(**settings.as_environment()),
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def test_the_cli_pauses_lists_and_resumes(settings: Settings, redis: Redis) -> None:
    paused = _relay(settings, "pause", "route", "callback", "--reason", "bad payload", "--by", "alice")
    assert paused.returncode == 0, paused.stderr
    listed = json.loads(_relay(settings, "paused", "--json").stdout)["paused"]
    assert [(p["kind"], p["name"], p["reason"], p["by"], p["held"]) for p in listed] == [
        ("route", "callback", "bad payload", "alice", 0)
    ]
    assert abs(listed[0]["at"] - time.time()) < 30
    text = _relay(settings, "paused").stdout
    assert "callback" in text and "alice" in text and "bad payload" in text
    resumed = _relay(settings, "resume", "route", "callback")
    assert resumed.returncode == 0 and "0 held runs queued" in resumed.stdout
    assert _relay(settings, "paused").stdout.strip() == "nothing is paused"
    again = _relay(settings, "resume", "route", "callback")
    assert again.returncode == 1 and "is not paused" in again.stderr
    wrong = _relay(settings, "pause", "widget", "x")
    assert wrong.returncode == 2 and "invalid choice: 'widget'" in wrong.stderr


async def test_the_admin_api_pauses_lists_and_resumes_and_refuses_bad_requests(
    aiohttp_client: Any, settings: Settings, config: RelayConfig, redis: Redis
) -> None:
    admin = settings.model_copy(update={"admin_token": SecretStr(TOKEN)})
    client = await aiohttp_client(create_app(admin, config))
    auth = {"Authorization": f"Bearer {TOKEN}"}
    assert (await client.post("/admin/pause", json={"kind": "route", "name": "callback"})).status == 401

    for body, says in (
        ({"kind": "widget", "name": "x"}, "kind must be one of route, account, source"),
        ({"kind": "route"}, "the body must be"),
        ({"kind": "route", "name": " "}, "name must be 1 to 200 characters"),
        ({"kind": "route", "name": "x", "reason": 5}, "reason and by must be strings"),
    ):
        refused = await client.post("/admin/pause", json=body, headers=auth)
        assert refused.status == 400
        assert says in (await refused.json())["message"]
    assert pause.list_paused(redis) == []

    body = {"kind": "account", "name": DEFAULT_ACCOUNT, "reason": "quota", "by": "bob"}
    paused = await client.post("/admin/pause", json=body, headers=auth)
    assert paused.status == 200 and (await paused.json())["was_paused"] is False
    listed = (await (await client.get("/admin/paused", headers=auth)).json())["paused"]
    assert [(p["kind"], p["name"], p["reason"], p["by"]) for p in listed] == [
        ("account", DEFAULT_ACCOUNT, "quota", "bob")
    ]
    resumed = await client.post("/admin/resume", json=body, headers=auth)
    assert (await resumed.json()) == {
        "kind": "account", "name": DEFAULT_ACCOUNT, "resumed": True, "released": 0,
    }  # fmt: skip
    not_paused = await client.post("/admin/resume", json=body, headers=auth)
    assert not_paused.status == 404 and (await not_paused.json())["error"] == "not_paused"


async def test_a_run_parked_as_its_route_is_resumed_goes_to_the_queue_not_a_forgotten_set(
    aiohttp_client: Any, settings: Settings, config: RelayConfig, sandbox: Sandbox, redis: Redis
) -> None:
    """The park checks the pause in the same script: a resume between the check and the park loses nothing."""
    client, event_ids = await post_events(aiohttp_client, settings, config, 1)
    queue = relay_queue(redis, settings)
    job = queue.fetch_job(queue.get_job_ids()[0])
    assert job is not None
    redis.delete(queue.key)  # as a worker that took it
    with redis.pipeline() as pipe:
        pause.park(pipe, queue, job, pause.Scope("route", "callback"))  # not paused (any more)
        pipe.execute()
    assert queue.get_job_ids() == [job.id]
    assert redis.exists(keys.held_key("route", "callback")) == 0
    with worker_process(settings):
        await until_all(client, event_ids, "succeeded")
    assert len(sandbox.runs()) == 1
