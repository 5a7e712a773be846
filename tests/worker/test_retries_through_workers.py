"""What each runner answer leads to, end to end: succeeded, retried, dead-lettered, and the run's history."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from redis import Redis
from rq.registry import FailedJobRegistry
from rq.serializers import JSONSerializer

from relay.dev.redis_server import free_port
from relay.ingress.app import create_app
from relay.mapping.config import RelayConfig, RetryOverride
from relay.settings import Settings
from tests.conftest import ADMIN_HEADERS, Sandbox, drain_queue, poll, running_worker, with_admin_token
from tests.worker.test_delivery_to_runner import FORM


async def deliver_one(aiohttp_client: Any, settings: Settings, config: RelayConfig) -> tuple[Any, str]:
    """Post the website form (one run) and return the client and the event id."""
    client = await aiohttp_client(create_app(with_admin_token(settings), config))
    response = await client.post("/hooks/website-form", json=FORM)
    assert response.status == 202
    return client, (await response.json())["event_id"]


async def the_run(client: Any, event_id: str) -> dict[str, Any]:
    [run] = (await (await client.get(f"/events/{event_id}", headers=ADMIN_HEADERS)).json())["runs"]
    return dict(run)


def dead_letter_ids(redis: Redis, settings: Settings) -> list[str]:
    return FailedJobRegistry(settings.queue_name, connection=redis, serializer=JSONSerializer).get_job_ids()


@pytest.mark.parametrize("status", [400, 401, 403, 404, 405, 422])
async def test_permanent_answers_are_dead_lettered_at_once(
    aiohttp_client: Any, settings: Settings, config: RelayConfig, sandbox: Sandbox, redis: Redis, status: int
) -> None:
    sandbox.fail(status, None)
    client, event_id = await deliver_one(aiohttp_client, settings, config)
    drain_queue(settings)
    assert [run["status"] for run in sandbox.runs()] == [status]  # no retry
    run = await the_run(client, event_id)
    assert (run["status"], run["attempts"], run["http_status"]) == ("dead_lettered", 1, status)
    assert "retrying cannot help" in run["last_error"]
    assert [step["status"] for step in run["history"]] == ["dead_lettered"]
    assert dead_letter_ids(redis, settings) == [run["job_id"]]


@pytest.mark.parametrize("status", [408, 425, 429, 500, 502, 503, 504])
async def test_transient_answers_are_retried_until_they_pass(
    aiohttp_client: Any, settings: Settings, config: RelayConfig, sandbox: Sandbox, status: int
) -> None:
    sandbox.fail(status, 2)
    client, event_id = await deliver_one(aiohttp_client, settings, config)
    drain_queue(settings)
    assert [run["status"] for run in sandbox.runs()] == [status, status, 201]
    run = await the_run(client, event_id)
    assert (run["status"], run["attempts"], run["ambiguous"]) == ("succeeded", 3, False)
    history = [(step["status"], step["attempt"], step["http_status"]) for step in run["history"]]
    assert history == [("failed", 1, status), ("failed", 2, status), ("succeeded", 3, 201)]


async def test_out_of_attempts_is_dead_lettered_with_every_attempt_in_its_history(
    aiohttp_client: Any, settings: Settings, config: RelayConfig, sandbox: Sandbox, redis: Redis
) -> None:
    three = settings.model_copy(update={"run_attempts": 3})
    sandbox.fail(503, None, error="upstream down")
    client, event_id = await deliver_one(aiohttp_client, three, config)
    drain_queue(three)
    assert [run["status"] for run in sandbox.runs()] == [503, 503, 503]
    run = await the_run(client, event_id)
    assert (run["status"], run["attempts"]) == ("dead_lettered", 3)
    assert "no attempts left (3 made)" in run["last_error"]
    steps = run["history"]
    assert [(step["status"], step["attempt"]) for step in steps] == [
        ("failed", 1),
        ("failed", 2),
        ("dead_lettered", 3),
    ]
    assert all("upstream down" in step["error"] for step in steps)
    assert dead_letter_ids(redis, three) == [run["job_id"]]


async def test_connection_refused_is_retried_and_not_ambiguous(
    aiohttp_client: Any, settings: Settings, config: RelayConfig
) -> None:
    nowhere = settings.model_copy(update={"runner_url": f"http://127.0.0.1:{free_port()}", "run_attempts": 2})
    client, event_id = await deliver_one(aiohttp_client, nowhere, config)
    drain_queue(nowhere)
    run = await the_run(client, event_id)
    assert (run["status"], run["attempts"], run["ambiguous"]) == ("dead_lettered", 2, False)
    assert "ConnectError" in run["last_error"]


async def test_a_timeout_after_the_request_was_sent_is_marked_ambiguous(
    aiohttp_client: Any, settings: Settings, config: RelayConfig, sandbox: Sandbox
) -> None:
    impatient = settings.model_copy(update={"runner_read_timeout_s": 0.3})
    sandbox.fail(None, 1, latency_ms=1500)  # the run is recorded, then answered too late
    client, event_id = await deliver_one(aiohttp_client, impatient, config)
    drain_queue(impatient)
    run = await the_run(client, event_id)
    assert run["status"] == "succeeded"
    assert run["ambiguous"] is True  # the first attempt may have run the PHLO: an operator can tell
    assert run["history"][0]["status"] == "failed"
    assert "ReadTimeout" in run["history"][0]["error"]
    assert len(sandbox.runs()) == 2


async def test_retry_after_is_honoured_by_a_scheduled_retry(
    aiohttp_client: Any, settings: Settings, config: RelayConfig, sandbox: Sandbox
) -> None:
    sandbox.fail(429, 1, retry_after=2)
    client, event_id = await deliver_one(aiohttp_client, settings, config)

    def both() -> list[dict[str, Any]] | None:
        runs = sandbox.runs()
        return runs if len(runs) == 2 else None

    with running_worker(settings):
        runs = await asyncio.to_thread(poll, both, 30.0)
    assert [run["status"] for run in runs] == [429, 201]
    assert runs[1]["received_at"] - runs[0]["received_at"] >= 2.0
    run = await the_run(client, event_id)
    assert run["history"][0]["retry_in_s"] == 2.0


async def test_a_retry_that_would_pass_the_maximum_age_is_dead_lettered_instead(
    aiohttp_client: Any, settings: Settings, config: RelayConfig, sandbox: Sandbox
) -> None:
    short_lived = settings.model_copy(update={"run_max_age_s": 5})
    sandbox.fail(503, 1, retry_after=60)
    client, event_id = await deliver_one(aiohttp_client, short_lived, config)
    drain_queue(short_lived)
    assert len(sandbox.runs()) == 1
    run = await the_run(client, event_id)
    assert run["status"] == "dead_lettered"
    assert "maximum age" in run["last_error"]


async def test_a_routes_own_retry_limits_override_the_settings(
    aiohttp_client: Any, settings: Settings, sandbox: Sandbox, config: RelayConfig
) -> None:
    route = config.routes[0].model_copy(update={"retry": RetryOverride(attempts=2)})
    strict = config.model_copy(update={"routes": [route, *config.routes[1:]]})
    sandbox.fail(500, None)
    client, event_id = await deliver_one(aiohttp_client, settings, strict)
    drain_queue(settings)
    assert len(sandbox.runs()) == 2
    assert (await the_run(client, event_id))["attempts"] == 2
