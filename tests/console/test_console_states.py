"""The Overview and Routes pages when things go wrong: a failed attempt, an open breaker, a pause that
holds runs (real Redis, real `relay worker --burst`, real sandbox)."""

from __future__ import annotations

from typing import Any

import pytest
from redis import Redis

from relay.ingress.app import create_app
from relay.mapping.config import RelayConfig
from relay.queue import pause
from relay.queue.gauges import read_queue_counts
from relay.queue.jobs import relay_queue
from relay.runner.breaker import CircuitBreaker
from relay.settings import Settings
from tests.conftest import Sandbox, drain_queue
from tests.console.support import Client, apoll, figure, get, log_in, page_csrf, post, row, with_token
from tests.console.test_console_pages import CALLBACK


@pytest.fixture
async def client(aiohttp_client: Any, settings: Settings, config: RelayConfig) -> Client:
    made: Client = await aiohttp_client(create_app(with_token(settings), config))
    assert (await log_in(made)).status == 303
    return made


async def test_a_failed_attempt_and_its_error_are_counted_for_its_route(
    client: Client, settings: Settings, sandbox: Sandbox
) -> None:
    sandbox.fail(503, 1)  # the first attempt gets 503; the retry (at once, in tests) succeeds
    assert (await client.post("/hooks/website-form", json=CALLBACK)).status == 202
    drain_queue(settings)

    async def counted() -> str | None:
        page = await get(client, "/console/")
        callback = row(page, "data-route", "callback")
        return callback if figure(callback, "succeeded") == 1 else None

    callback = await apoll(counted)
    assert figure(callback, "failed") == 1 and figure(callback, "dead-lettered") == 0
    assert "503" in callback


async def test_an_open_breaker_shows_with_when_it_lets_a_probe_through(
    client: Client, redis: Redis, settings: Settings
) -> None:
    assert 'data-breaker="closed"' in row(await get(client, "/console/"), "data-account", "default")
    breaker = CircuitBreaker(redis, "default", failure_threshold=1, open_s=60)
    assert breaker.record_failure().state == "open"
    account = row(await get(client, "/console/"), "data-account", "default")
    assert 'data-breaker="open"' in account and "a probe in" in account


async def test_a_pause_holds_runs_shown_on_both_pages_until_resumed_from_the_routes_page(
    client: Client, redis: Redis, settings: Settings, sandbox: Sandbox
) -> None:
    token = await page_csrf(client, "/console/routes")
    fields = {"csrf_token": token, "kind": "route", "name": "callback"}
    await post(client, "/console/pause", {**fields, "reason": "wrong SMS text"})
    assert (await client.post("/hooks/website-form", json=CALLBACK)).status == 202
    drain_queue(settings)  # the worker takes the run and parks it, unattempted
    assert sandbox.runs() == []
    assert read_queue_counts(redis, settings).held == 1
    assert figure(await get(client, "/console/"), "held") == 1
    route = row(await get(client, "/console/routes"), "data-route", "callback")
    assert "holds 1 run(s)" in route and "wrong SMS text" in route and "by console" in route
    resumed = await post(client, "/console/resume", fields)
    assert "route callback resumed: 1 held run(s) queued." in resumed
    assert pause.list_paused(redis) == []
    assert redis.llen(relay_queue(redis, settings).key) == 1
    drain_queue(settings)
    assert [run["status"] for run in sandbox.runs()] == [201]
