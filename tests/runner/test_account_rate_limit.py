"""AccountRateLimit: a sliding-window limit in a real Redis, shared by threads and processes."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import cast

import pytest
from redis import Redis

from relay import keys
from relay.dev.redis_server import EmbeddedRedis
from relay.runner.ratelimit import AccountRateLimit, Reservation
from tests.conftest import poll

LIMIT, WINDOW_S, MARGIN_S = 5, 0.5, 0.1
SPAN_US = round((WINDOW_S + MARGIN_S) * 1_000_000)
ROOT = Path(__file__).resolve().parents[2]

CHILD = """
import sys, threading, time
from redis import Redis
from relay.runner.ratelimit import AccountRateLimit

url, threads, count = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
redis = Redis.from_url(url)
limiter = AccountRateLimit(redis, "shared", limit=5, window_s=0.5, margin_s=0.1)
redis.incr("test:ready")
deadline = time.monotonic() + 30
while not redis.exists("test:go"):
    assert time.monotonic() < deadline, "never told to go"
    time.sleep(0.001)
slots = []
def hammer():
    for _ in range(count):
        slots.append(limiter.reserve(max_wait_s=60))
workers = [threading.Thread(target=hammer) for _ in range(threads)]
for worker in workers: worker.start()
for worker in workers: worker.join()
for slot in slots:
    print(round(slot.slot_at * 1_000_000))
"""


def limiter(redis: Redis, account: str = "acct", **overrides: float) -> AccountRateLimit:
    options: dict[str, float] = {"limit": LIMIT, "window_s": WINDOW_S, "margin_s": MARGIN_S, **overrides}
    return AccountRateLimit(redis, account, int(options.pop("limit")), **options)


def micros(reservation: Reservation) -> int:
    return round(reservation.slot_at * 1_000_000)


def assert_windows_hold(slots_us: list[int], limit: int = LIMIT, span_us: int = SPAN_US) -> None:
    """No half-open span of ``span_us`` holds more than ``limit`` of the slots."""
    ordered = sorted(slots_us)
    for first, last in zip(ordered, ordered[limit:], strict=False):
        assert last - first >= span_us, f"{limit + 1} slots within {(last - first) / 1e6:.6f}s"


def scores(redis: Redis, account: str = "acct") -> dict[bytes, int]:
    """The account's log: slot id -> slot time in µs."""
    entries = cast(list[tuple[bytes, float]], redis.zrange(keys.rate_key(account), 0, -1, withscores=True))
    return {member: int(score) for member, score in entries}


def log(redis: Redis, account: str = "acct") -> list[int]:
    return list(scores(redis, account).values())


def test_first_limit_go_now_then_one_window_later(redis: Redis) -> None:
    rate = limiter(redis)
    first = [rate.reserve(max_wait_s=10) for _ in range(LIMIT)]
    assert all(r is not None and r.wait_s == 0 for r in first)
    nxt = rate.reserve(max_wait_s=10)
    assert nxt is not None and first[0] is not None
    assert micros(nxt) - micros(first[0]) == SPAN_US
    assert WINDOW_S < nxt.wait_s <= WINDOW_S + MARGIN_S
    assert nxt.due - time.monotonic() == pytest.approx(nxt.wait_s, abs=0.05)
    assert len({r.slot_id for r in [*first, nxt] if r}) == LIMIT + 1


def test_burst_from_threads_never_overfills_a_window(redis: Redis) -> None:
    rate = limiter(redis)
    start = threading.Barrier(8)

    def hammer() -> list[Reservation | None]:
        start.wait(timeout=10)
        return [rate.reserve(max_wait_s=60) for _ in range(10)]

    with ThreadPoolExecutor(8) as pool:
        results = [r for batch in pool.map(lambda _: hammer(), range(8)) for r in batch]
    reservations = [r for r in results if r is not None]
    assert len(reservations) == 80
    assert_windows_hold([micros(r) for r in reservations])
    assert sorted(log(redis)) == sorted(micros(r) for r in reservations)


def test_burst_from_processes_never_overfills_a_window(redis: Redis, redis_server: EmbeddedRedis) -> None:
    processes, threads, count = 4, 3, 8
    children = [
        subprocess.Popen(
            [sys.executable, "-c", CHILD, redis_server.url, str(threads), str(count)],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(processes)
    ]
    try:
        poll(lambda: True if int(redis.get("test:ready") or 0) == processes else None, timeout_s=30)
        redis.set("test:go", 1)
        outputs = [child.communicate(timeout=60)[0] for child in children]
    finally:
        for child in children:
            if child.poll() is None:
                child.kill()
                child.wait()
    assert all(child.returncode == 0 for child in children)
    slots = [int(line) for output in outputs for line in output.split()]
    assert len(slots) == processes * threads * count
    assert_windows_hold(slots)
    assert sorted(log(redis, "shared")) == sorted(slots)


def test_senders_that_sleep_their_wait_keep_the_runners_window(redis: Redis) -> None:
    rate = limiter(redis, limit=3, window_s=0.3, margin_s=0.1)
    sent: list[int] = []

    def send_three() -> None:
        for _ in range(3):
            assert rate.wait_turn(max_wait_s=30) is not None
            sent.append(_redis_us(redis))

    workers = [threading.Thread(target=send_three) for _ in range(4)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=30)
    assert len(sent) == 12
    # What the runner sees: send times, with the window alone (the margin absorbed the lateness).
    assert_windows_hold(sent, limit=3, span_us=300_000)


def test_max_wait_is_honoured_and_nothing_reserved_beyond_it(redis: Redis) -> None:
    rate = limiter(redis)
    for _ in range(LIMIT):
        assert rate.reserve(max_wait_s=0) is not None
    assert rate.reserve(max_wait_s=0) is None
    assert rate.reserve(max_wait_s=WINDOW_S) is None
    assert len(log(redis)) == LIMIT
    later = rate.reserve(max_wait_s=WINDOW_S + MARGIN_S)
    assert later is not None and later.wait_s > WINDOW_S
    assert len(log(redis)) == LIMIT + 1


def test_release_frees_the_slot(redis: Redis) -> None:
    rate = limiter(redis)
    taken = [rate.reserve(max_wait_s=0) for _ in range(LIMIT)]
    assert rate.reserve(max_wait_s=0) is None
    assert taken[2] is not None
    rate.release(taken[2])
    again = rate.reserve(max_wait_s=0)
    assert again is not None and again.wait_s == 0
    assert rate.reserve(max_wait_s=0) is None


def test_release_of_a_future_slot_lets_a_later_caller_have_it(redis: Redis) -> None:
    rate = limiter(redis, limit=1)
    assert rate.reserve(max_wait_s=0) is not None
    future = rate.reserve(max_wait_s=5)
    assert future is not None and future.wait_s > 0
    rate.release(future)
    replacement = rate.reserve(max_wait_s=5)
    assert replacement is not None
    assert micros(replacement) == micros(future)


def test_accounts_are_independent(redis: Redis) -> None:
    first, second = limiter(redis, "one"), limiter(redis, "two")
    for _ in range(LIMIT):
        assert first.reserve(max_wait_s=0) is not None
    assert first.reserve(max_wait_s=0) is None
    assert all(second.reserve(max_wait_s=0) is not None for _ in range(LIMIT))
    assert len(log(redis, "one")) == len(log(redis, "two")) == LIMIT


def test_too_late_after_half_the_margin(redis: Redis) -> None:
    rate = limiter(redis, margin_s=0.1)
    reservation = rate.reserve(max_wait_s=0)
    assert reservation is not None
    assert not rate.too_late(reservation)
    poll(lambda: True if rate.too_late(reservation) else None, timeout_s=5)
    assert reservation.late_by() > 0.05


def test_old_entries_are_dropped_and_idle_keys_expire(redis: Redis) -> None:
    rate = limiter(redis)
    reservations = [rate.reserve(max_wait_s=10) for _ in range(LIMIT + 2)]
    key = keys.rate_key("acct")
    last = max(micros(r) for r in reservations if r is not None)
    before = _redis_us(redis)
    # The last slot's span and no more (a few ms of slack: Redis rounds the expiry to whole milliseconds,
    # and on a loaded machine the clock read and the PTTL are not the same instant).
    assert 0 < redis.pttl(key) <= (last - before + SPAN_US) / 1000 + 5

    # Once a span has passed the first slots, a new reservation prunes them.
    first_us = min(micros(r) for r in reservations if r is not None)
    poll(lambda: True if _redis_us(redis) > first_us + SPAN_US else None, timeout_s=5)
    assert rate.reserve(max_wait_s=10) is not None
    assert min(log(redis)) > first_us

    poll(lambda: True if not redis.exists(key) else None, timeout_s=10)


def test_invalid_arguments_are_refused(redis: Redis) -> None:
    with pytest.raises(ValueError, match="limit"):
        AccountRateLimit(redis, "acct", limit=0, window_s=1)
    with pytest.raises(ValueError, match="window_s"):
        AccountRateLimit(redis, "acct", limit=1, window_s=0)
    with pytest.raises(ValueError, match="margin_s"):
        AccountRateLimit(redis, "acct", limit=1, window_s=1, margin_s=-1)


def _redis_us(redis: Redis) -> int:
    seconds, micro = redis.time()
    return int(seconds) * 1_000_000 + int(micro)
