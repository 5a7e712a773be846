"""Quiet hours as operators see them: real worker processes, the ingress, Redis (with AOF) and the sandbox.

The workers' clock is moved through the settings (``RELAY_CLOCK_OFFSET_S``): a worker started with an
offset judges windows and promotes due runs as if it were that much later. Nothing sleeps to let time pass.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from redis import Redis
from rq.job import Job, JobStatus
from rq.registry import FailedJobRegistry
from rq.serializers import JSONSerializer

from relay.dev.redis_server import EmbeddedRedis, free_port
from relay.ingress.app import create_app
from relay.mapping.config import RelayConfig, parse_config
from relay.mapping.windows import Window, parse_hhmm, zone_named
from relay.queue.jobs import relay_queue
from relay.settings import Settings
from tests.conftest import (
    TEST_CONFIG,
    Sandbox,
    assert_attempts_are_its_attempt_steps,
    clean_environment,
    poll,
    with_admin_token,
)
from tests.infra.test_metric_counts import scrape, value
from tests.worker.test_worker_processes import (
    busiest_window,
    post_events,
    until_all,
    wait_for_runs,
    worker_process,
)

ZONE = "America/New_York"
PAYLOAD_END = "      name: {path: name, default: there}\n"
SPREAD_S = 120


def quiet_config(past_max_age: str = "deliver", max_age_s: int | None = None) -> str:
    """The test config with quiet hours 08:00-21:00 New York time on the callback route."""
    assert TEST_CONFIG.count(PAYLOAD_END) == 1
    extra = (
        f"    deliver_between: {{start: '08:00', end: '21:00', timezone: {ZONE}, "
        f"past_max_age: {past_max_age}, spread_s: {SPREAD_S}}}\n"
    )
    if max_age_s is not None:
        extra += f"    retry: {{max_age_s: {max_age_s}}}\n"
    return TEST_CONFIG.replace(PAYLOAD_END, PAYLOAD_END + extra)


def night_and_opening() -> tuple[float, float]:
    """Tomorrow 03:00 in New York (a night), and when the window opens after it (epoch seconds)."""
    zone = zone_named(ZONE)
    assert zone is not None
    tomorrow = datetime.now(zone).date() + timedelta(days=1)
    night = datetime(tomorrow.year, tomorrow.month, tomorrow.day, 3, 0, tzinfo=zone)
    opens, _ = Window(parse_hhmm("08:00"), parse_hhmm("21:00"), zone).next_interval(night.astimezone(UTC))
    return night.timestamp(), opens.timestamp()


def at_clock(settings: Settings, clock_s: float, **changes: Any) -> Settings:
    """The settings of a worker whose clock reads ``clock_s`` now."""
    return settings.model_copy(update={"clock_offset_s": clock_s - time.time(), **changes})


def events_show(settings: Settings, event_id: str) -> dict[str, Any]:
    shown = subprocess.run(
        [sys.executable, "-m", "relay", "events", "show", event_id],
        env=clean_environment(**settings.as_environment()),
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    view: dict[str, Any] = json.loads(shown.stdout)
    return view


def metrics_of(port: int) -> dict[Any, float]:
    return poll(lambda: _scrape_or_none(port), 30)


def _scrape_or_none(port: int) -> dict[Any, float] | None:
    try:
        return scrape(f"http://127.0.0.1:{port}/metrics")
    except OSError:
        return None


def _with_config(settings: Settings, text: str) -> RelayConfig:
    settings.config_path.write_text(text, encoding="utf-8")  # the workers read it
    return parse_config(text, str(settings.config_path))


async def test_runs_held_at_night_survive_a_restart_of_everything_and_go_at_the_opening_within_the_limit(
    aiohttp_client: Any, settings: Settings, sandbox: Sandbox, tmp_path: Path
) -> None:
    night_s, opens_s = night_and_opening()
    with EmbeddedRedis(tmp_path / "redis", port=free_port(), appendonly=True) as own_redis:
        base = with_admin_token(settings).model_copy(  # the worker's /metrics takes the admin token
            update={"redis_url": own_redis.url, "rate_limit": 5, "rate_window_s": 1.0,
                    "worker_metrics_port": free_port()}
        )  # fmt: skip
        config = _with_config(base, quiet_config())
        night = at_clock(base, night_s)
        client, event_ids = await post_events(aiohttp_client, night, config, 20)
        with worker_process(night):
            held = await until_all(client, event_ids, "held")
            samples = await asyncio.to_thread(metrics_of, night.worker_metrics_port or 0)
        assert value(samples, "relay_runs_window_held_total", route="callback", reason="quiet_hours") == 20
        assert sandbox.runs() == []
        releases = sorted(run["next_attempt_at"] for run in held)
        assert opens_s <= releases[0] and releases[-1] < opens_s + SPREAD_S  # spread over its first minutes
        assert len(set(releases)) == 20
        for run in held:
            assert run["attempts"] == 0
            [step] = run["history"]
            assert step["status"] == "held"
            assert step["note"].startswith(f"quiet hours: {datetime.fromtimestamp(night_s, UTC):%Y-%m-%d}")
            assert f"({ZONE}, from fixed) is outside 08:00-21:00; held until " in step["note"]
        shown = events_show(night, event_ids[0])["runs"][0]
        assert shown["status"] == "held" and opens_s <= shown["next_attempt_at"] < opens_s + SPREAD_S
        redis = Redis.from_url(own_redis.url)
        queue = relay_queue(redis, base)
        assert queue.scheduled_job_registry.count == 20  # waiting where retries wait
        assert FailedJobRegistry(queue=queue).count == 0

        # Everything stops: the worker (above), the ingress and Redis, which comes back from its AOF.
        await client.close()
        redis.close()
        own_redis.stop()
        own_redis.start()
        restarted = await aiohttp_client(create_app(base, config))
        opening = at_clock(base, opens_s + SPREAD_S)  # the clock moved past the opening and its spread
        with worker_process(opening):
            received = await asyncio.to_thread(wait_for_runs, sandbox, 20)
            delivered = await until_all(restarted, event_ids, "succeeded")
            samples = await asyncio.to_thread(metrics_of, opening.worker_metrics_port or 0)
    assert value(samples, "relay_runs_window_released_total", route="callback", reason="quiet_hours") == 20
    assert busiest_window([run["received_at"] for run in received], 1.0) <= 5
    assert len(sandbox.runs()) == 20  # each once
    for run in delivered:
        assert run["attempts"] == 1
        assert_attempts_are_its_attempt_steps(run)
        assert (run["history"][0]["status"], run["history"][-1]["status"]) == ("held", "succeeded")


@pytest.mark.parametrize("past_max_age", ["expire", "deliver"])
async def test_a_run_whose_window_opens_after_its_max_age_expires_or_waits_as_its_route_says(
    aiohttp_client: Any, settings: Settings, sandbox: Sandbox, redis: Redis, past_max_age: str
) -> None:
    night_s, opens_s = night_and_opening()  # 5 hours to the opening; its maximum age is 1 hour
    base = with_admin_token(settings).model_copy(update={"worker_metrics_port": free_port()})
    config = _with_config(base, quiet_config(past_max_age, max_age_s=3600))
    night = at_clock(base, night_s)
    client, event_ids = await post_events(aiohttp_client, night, config, 1)
    with worker_process(night):
        [run] = await until_all(client, event_ids, "expired" if past_max_age == "expire" else "held")
        samples = await asyncio.to_thread(metrics_of, night.worker_metrics_port or 0)
    queue = relay_queue(redis, base)
    assert run["attempts"] == 0
    assert FailedJobRegistry(queue=queue).count == 0  # never a dead letter
    expired = value(samples, "relay_runs_expired_total", route="callback", reason="quiet_hours")
    if past_max_age == "expire":
        assert expired == 1
        assert run["history"][-1]["note"].endswith("after its maximum age, so it expires unsent")
        job = Job.fetch(run["job_id"], connection=redis, serializer=JSONSerializer)
        assert job.get_status() == JobStatus.FINISHED
        assert queue.scheduled_job_registry.count == 0
        assert sandbox.runs() == []
        return
    assert expired == 0
    assert run["held_s"] >= opens_s - night_s - 60  # the hold does not count against its age
    with worker_process(at_clock(base, opens_s + SPREAD_S)):
        [run] = await until_all(client, event_ids, "succeeded")
    assert run["attempts"] == 1
    assert len(sandbox.runs()) == 1


async def test_a_run_inside_its_window_goes_at_once_and_the_zone_can_come_from_the_event(
    aiohttp_client: Any, settings: Settings, sandbox: Sandbox
) -> None:
    night_s, _ = night_and_opening()  # 03:00 in New York is 08:00 in London (or 07:00 around DST changes)
    text = quiet_config().replace(f"timezone: {ZONE}", "timezone: {path: tz, default: America/New_York}")
    settings = with_admin_token(settings)  # the test reads /events/{id}
    config = _with_config(settings, text)
    day = at_clock(settings, night_s + 3600)  # 04:00 in New York: 08:00 or 09:00 in London
    client = await aiohttp_client(create_app(day, config))
    london = await client.post("/hooks/website-form", json={
        "submission_id": "sub-london", "form": "callback-request", "phone": "+442079460958",
        "tz": "Europe/London"})  # fmt: skip
    new_york = await client.post("/hooks/website-form", json={
        "submission_id": "sub-ny", "form": "callback-request", "phone": "+12125550123"})  # fmt: skip
    ids = [(await london.json())["event_id"], (await new_york.json())["event_id"]]
    with worker_process(day):
        [sent] = await until_all(client, ids[:1], "succeeded")
        [held] = await until_all(client, ids[1:], "held")
    assert sent["attempts"] == 1 and [step["status"] for step in sent["history"]] == ["succeeded"]
    assert "(America/New_York, from default)" in held["history"][-1]["note"]
    assert [json.loads(run["raw_body"])["to"] for run in sandbox.runs()] == ["+442079460958"]
