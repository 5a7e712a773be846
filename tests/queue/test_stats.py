"""The console's counts in Redis (relay.queue.stats): written by the ingress and the workers, read back."""

from __future__ import annotations

import time

from redis import Redis

from relay import keys
from relay.dev.redis_server import EmbeddedRedis
from relay.infra.redis_client import connect_async
from relay.queue import stats
from relay.settings import Settings


async def test_event_counts_are_held_in_memory_and_written_together(
    redis: Redis, redis_server: EmbeddedRedis, settings: Settings
) -> None:
    async_redis = connect_async(settings)
    counter = stats.EventCounter(async_redis, interval_s=3600)  # written by flush() only, here
    try:
        for _ in range(3):
            counter.count("website-form", "accepted")
        counter.count("website-form", "duplicate")
        counter.count("_unknown", "refused:unknown_source")
        counter.count("typeform", "refused:invalid_signature")
        counter.count_dead_letter("callback", "required value missing: phone")
        assert redis.keys(keys.stats_key(stats.EVENTS, "*")) == []  # nothing written yet
        await counter.flush()
        [key] = redis.keys(keys.stats_key(stats.EVENTS, "*"))
        assert 0 < redis.ttl(key) <= stats.MINUTE_TTL_S
        assert stats.read_runs_by_day(redis)["callback"] == {"dead_lettered": 1}
        assert stats.read_recent(redis, stats.RUNS).by_name["callback"] == {"dead_lettered": 1}
        assert stats.read_last_errors(redis)["callback"][1] == "required value missing: phone"
        tally = stats.read_recent(redis, stats.EVENTS)
        assert tally.by_name["website-form"] == {"accepted": 3, "duplicate": 1}
        assert tally.by_name["_unknown"] == {"refused:unknown_source": 1}
        assert tally.by_name["typeform"] == {"refused:invalid_signature": 1}
        assert len(tally.per_minute) == 60 and tally.per_minute[-1] == 6 and sum(tally.per_minute) == 6
        counter.count("website-form", "accepted")
        await counter.close()  # a last write
        assert stats.read_recent(redis, stats.EVENTS).by_name["website-form"]["accepted"] == 4
    finally:
        await async_redis.aclose()


async def test_counts_kept_when_redis_does_not_answer_are_written_later(
    redis: Redis, redis_server: EmbeddedRedis, settings: Settings
) -> None:
    unreachable = settings.model_copy(update={"redis_url": "redis://127.0.0.1:1/0"})
    dead = connect_async(unreachable, socket_connect_timeout=0.5)
    counter = stats.EventCounter(dead, interval_s=3600)
    counter.count("website-form", "accepted")
    await counter.flush()  # logged, kept
    await dead.aclose()
    alive = connect_async(settings)
    try:
        counter.redis = alive
        await counter.flush()
        assert stats.read_recent(redis, stats.EVENTS).by_name["website-form"] == {"accepted": 1}
    finally:
        await alive.aclose()


def test_run_outcomes_count_per_minute_and_per_hour_with_the_last_error(redis: Redis) -> None:
    now = time.time()
    with redis.pipeline(transaction=True) as pipe:
        stats.count_run(pipe, "callback", "succeeded", now)
        stats.count_run(pipe, "callback", "succeeded", now - 3 * 3600)  # in the day, not the hour
        stats.count_run(pipe, "callback", "failed", now - 60, "HTTP 503 from the runner")
        stats.count_run(pipe, "alert", "dead_lettered", now, "HTTP 404 " + "x" * 1000)
        stats.count_run(pipe, "old", "succeeded", now - 25 * 3600)  # outside the day
        pipe.execute()
    recent = stats.read_recent(redis, stats.RUNS, now_s=now)
    assert recent.by_name["callback"] == {"succeeded": 1, "failed": 1}
    assert recent.per_minute[-1] == 2 and recent.per_minute[-2] == 1
    day = stats.read_runs_by_day(redis, now_s=now)
    assert day["callback"] == {"succeeded": 2, "failed": 1}
    assert day["alert"] == {"dead_lettered": 1}
    assert "old" not in day
    errors = stats.read_last_errors(redis)
    assert errors["callback"][1] == "HTTP 503 from the runner"
    assert errors["alert"][1].startswith("HTTP 404") and len(errors["alert"][1]) == stats.ERROR_CHARS
    for key in redis.keys(keys.stats_key(stats.RUNS_HOURLY, "*")):
        assert 0 < redis.ttl(key) <= stats.HOUR_TTL_S
