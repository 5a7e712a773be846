"""CircuitBreaker: per-account state in a real Redis, shared by every caller."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
from redis import Redis

from relay import keys
from relay.runner.breaker import BreakerState, CircuitBreaker
from tests.conftest import poll


def breaker(redis: Redis, account: str = "acct", **options: float) -> CircuitBreaker:
    settings: dict[str, float] = {"failure_threshold": 3, "window_s": 5.0, "open_s": 0.2, **options}
    threshold = int(settings.pop("failure_threshold"))
    return CircuitBreaker(redis, account, failure_threshold=threshold, **settings)


def redis_now(redis: Redis) -> float:
    seconds, micros = redis.time()
    return int(seconds) + int(micros) / 1_000_000


def trip(cb: CircuitBreaker) -> BreakerState:
    """Record failures until the breaker opens."""
    for _ in range(cb.failure_threshold):
        state = cb.record_failure()
    return state


def wait_for_probe(cb: CircuitBreaker) -> None:
    """Poll until the open time is over (without taking the probe)."""
    poll(lambda: True if cb.state().state == "half_open" else None, timeout_s=10)


def test_closed_at_first(redis: Redis) -> None:
    cb = breaker(redis)
    assert cb.allow() == BreakerState("closed", None)
    assert cb.state() == BreakerState("closed", None)
    assert redis.keys("*") == []


def test_opens_at_the_threshold_not_before(redis: Redis) -> None:
    cb = breaker(redis, open_s=10)
    assert cb.record_failure().state == "closed"
    assert cb.record_failure().state == "closed"
    assert cb.allow().state == "closed"
    before = redis_now(redis)
    opened = cb.record_failure()
    assert opened.state == "open"
    assert opened.retry_at is not None
    assert before + 10 - 1e-6 <= opened.retry_at <= redis_now(redis) + 10

    refused = cb.allow()
    assert refused == BreakerState("open", opened.retry_at)
    assert cb.state() == refused
    assert not redis.exists(keys.breaker_failures_key("acct"))


def test_failures_spread_beyond_the_window_do_not_open_it(redis: Redis) -> None:
    cb = breaker(redis, window_s=0.3)
    cb.record_failure()
    first = redis_now(redis)
    poll(lambda: True if redis_now(redis) > first + 0.3 else None, timeout_s=5)
    assert cb.record_failure().state == "closed"
    assert cb.record_failure().state == "closed"  # the first one no longer counts
    assert cb.record_failure().state == "open"  # three within the window do


def test_success_resets_the_failure_count(redis: Redis) -> None:
    cb = breaker(redis)
    cb.record_failure()
    cb.record_failure()
    cb.record_success()
    assert cb.record_failure().state == "closed"
    assert cb.record_failure().state == "closed"
    assert cb.record_failure().state == "open"


def test_exactly_one_of_many_concurrent_callers_gets_the_probe(redis: Redis) -> None:
    cb = breaker(redis, open_s=0.2, probe_timeout_s=10)
    trip(cb)
    wait_for_probe(cb)
    callers = 16
    start = threading.Barrier(callers)

    def ask(_: int) -> BreakerState:
        start.wait(timeout=10)
        return breaker(redis, open_s=0.2, probe_timeout_s=10).allow()

    with ThreadPoolExecutor(callers) as pool:
        answers = list(pool.map(ask, range(callers)))
    assert [a.state for a in answers].count("half_open") == 1
    others = [a for a in answers if a.state != "half_open"]
    assert {a.state for a in others} == {"open"}
    now = redis_now(redis)
    assert all(a.retry_at is not None and now < a.retry_at <= now + 10 for a in others)


def test_probe_success_closes(redis: Redis) -> None:
    cb = breaker(redis)
    trip(cb)
    wait_for_probe(cb)
    assert cb.allow().state == "half_open"
    cb.record_success()
    assert cb.allow() == BreakerState("closed", None)
    assert redis.keys("*") == []


def test_failed_probe_reopens_for_twice_as_long_up_to_the_cap(redis: Redis) -> None:
    cb = breaker(redis, open_s=0.1, max_open_s=0.3)
    assert trip(cb).state == "open"
    for expected in (0.2, 0.3, 0.3):
        wait_for_probe(cb)
        assert cb.allow().state == "half_open"
        before = redis_now(redis)
        reopened = cb.record_failure()
        assert reopened.state == "open" and reopened.retry_at is not None
        assert before + expected - 1e-6 <= reopened.retry_at <= redis_now(redis) + expected
        assert cb.allow() == BreakerState("open", reopened.retry_at)
    wait_for_probe(cb)
    assert cb.allow().state == "half_open"
    cb.record_success()
    assert trip(cb).retry_at == pytest.approx(redis_now(redis) + 0.1, abs=0.05)  # back to open_s


def test_failures_of_earlier_requests_do_not_extend_an_open_breaker(redis: Redis) -> None:
    cb = breaker(redis, open_s=10)
    opened = trip(cb)
    assert cb.record_failure() == opened
    assert cb.allow() == opened


def test_an_expired_probe_lets_another_through(redis: Redis) -> None:
    cb = breaker(redis, probe_timeout_s=0.2)
    trip(cb)
    wait_for_probe(cb)
    assert cb.allow().state == "half_open"  # ... and its worker dies
    waiting = cb.allow()
    assert waiting.state == "open" and waiting.retry_at is not None
    assert waiting.retry_at <= redis_now(redis) + 0.2
    assert cb.state().state == "half_open"  # for metrics: the open time is over
    poll(lambda: True if cb.allow().state == "half_open" else None, timeout_s=5)
    assert redis_now(redis) >= waiting.retry_at


def test_state_does_not_take_the_probe(redis: Redis) -> None:
    cb = breaker(redis)
    trip(cb)
    wait_for_probe(cb)
    assert cb.state() == BreakerState("half_open", None)
    assert cb.state() == BreakerState("half_open", None)
    assert cb.allow().state == "half_open"


def test_accounts_are_independent(redis: Redis) -> None:
    first, second = breaker(redis, "one", open_s=10), breaker(redis, "two", open_s=10)
    trip(first)
    second.record_failure()
    assert first.allow().state == "open"
    assert second.allow().state == "closed"
    second.record_success()
    assert first.allow().state == "open"


def test_keys_expire(redis: Redis) -> None:
    cb = breaker(redis, window_s=0.2, open_s=0.1, max_open_s=0.2)
    cb.record_failure()
    assert 0 < redis.pttl(keys.breaker_failures_key("acct")) <= 200
    poll(lambda: True if not redis.keys("*") else None, timeout_s=5)
    trip(cb)
    assert 0 < redis.pttl(keys.breaker_key("acct")) <= 300
    poll(lambda: True if not redis.keys("*") else None, timeout_s=5)
    assert cb.allow().state == "closed"


def test_invalid_arguments_are_refused(redis: Redis) -> None:
    with pytest.raises(ValueError, match="failure_threshold"):
        CircuitBreaker(redis, "acct", failure_threshold=0)
    with pytest.raises(ValueError, match="positive"):
        CircuitBreaker(redis, "acct", open_s=0)
    with pytest.raises(ValueError, match="positive"):
        CircuitBreaker(redis, "acct", probe_timeout_s=0)
