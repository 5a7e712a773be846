"""An account's rate limit at the PHLO runner, shared by every worker process on every host.

The runner allows an account ``limit`` requests in any ``window_s`` seconds (Plivo: 300 per 5 s). Each
account has a log of reservations in Redis (a sorted set, ``keys.rate_key``: one member per request, scored
with its send time in microseconds). A Lua script reserves atomically, on Redis's own clock so that hosts
with skewed clocks agree::

    slot = max(now, the limit-th latest reservation + window_s + margin_s)

so no span of ``window_s + margin_s`` seconds ever holds more than ``limit`` reservations, whatever the
order in which they were made or released. Reservations may lie in the future: the log holds them.

``wait_turn`` keeps the caller's side of the bargain: it reserves, sleeps until the slot, and when it wakes
more than ``margin_s / 2`` late it gives the slot back and reserves again.

A late sender can break the window: the next reservations were placed assuming this request leaves at
its slot, ``window_s + margin_s`` before theirs. Sent ``d`` seconds late, it is only
``window_s + margin_s - d`` from them; once ``d`` exceeds the margin, the runner sees ``limit + 1``
requests in one window. Tolerating up to half the margin of lateness leaves the other half for what the
margin is for: network jitter between worker and runner, and the Redis round trip.
"""

from __future__ import annotations

import math
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass

from redis import Redis

from relay import keys

_US = 1_000_000

# KEYS[1]: the log. ARGV: limit, span (window + margin) µs, max wait µs, member.
# Returns {reserved 0/1, slot µs, now µs}. Times stay integral microseconds: Lua numbers are doubles
# (exact below 2^53), Redis truncates them to integers in replies, and tostring() would round them.
_RESERVE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local limit = tonumber(ARGV[1])
local span = tonumber(ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - span)
local slot = now
local kth = redis.call('ZREVRANGE', KEYS[1], limit - 1, limit - 1, 'WITHSCORES')
if kth[2] then
    slot = math.max(now, tonumber(kth[2]) + span)
end
if slot - now > tonumber(ARGV[3]) then
    return {0, slot, now}
end
redis.call('ZADD', KEYS[1], slot, ARGV[4])
local last = redis.call('ZREVRANGE', KEYS[1], 0, 0, 'WITHSCORES')
redis.call('PEXPIRE', KEYS[1], math.ceil((tonumber(last[2]) - now + span) / 1000) + 1)
return {1, slot, now}
"""


@dataclass(frozen=True)
class Reservation:
    """One reserved request slot: send after sleeping ``wait_s`` (0: now)."""

    slot_id: str
    wait_s: float
    slot_at: float
    """The slot's time, epoch seconds on Redis's clock."""
    due: float
    """The slot's time on this process's ``time.monotonic()`` clock; never before the true slot time."""

    def late_by(self) -> float:
        """Seconds past the slot now (negative: still early)."""
        return time.monotonic() - self.due


class AccountRateLimit:
    """No more than ``limit`` runner requests of one account in any ``window_s`` seconds, across hosts."""

    def __init__(
        self, redis: Redis, account: str, limit: int, window_s: float, margin_s: float = 0.2
    ) -> None:
        if limit < 1:
            raise ValueError("limit must be at least 1")
        if window_s <= 0 or margin_s < 0:
            raise ValueError("window_s must be positive and margin_s not negative")
        self.redis = redis
        self.account = account
        self.limit = limit
        self.window_s = window_s
        self.margin_s = margin_s
        self.key = keys.rate_key(account)
        self._span_us = round((window_s + margin_s) * _US)
        self._reserve = redis.register_script(_RESERVE)

    def reserve(self, max_wait_s: float) -> Reservation | None:
        """Reserve the earliest free slot; None, reserving nothing, if it is more than ``max_wait_s`` away."""
        slot_id = uuid.uuid4().hex
        max_wait_us = max(0, math.floor(max_wait_s * _US))
        reserved, slot_us, now_us = self._reserve(
            keys=[self.key], args=[self.limit, self._span_us, max_wait_us, slot_id]
        )
        # Counting from the reply's arrival errs late, never early: Redis read its clock before replying.
        received = time.monotonic()
        if not reserved:
            return None
        wait_s = (int(slot_us) - int(now_us)) / _US
        return Reservation(slot_id=slot_id, wait_s=wait_s, slot_at=int(slot_us) / _US, due=received + wait_s)

    def too_late(self, reservation: Reservation) -> bool:
        """Whether it is too late to send on this reservation: release it and reserve again."""
        return reservation.late_by() > self.margin_s / 2

    def release(self, reservation: Reservation) -> None:
        """Give a slot back: its request was not sent after all."""
        self.redis.zrem(self.key, reservation.slot_id)

    def wait_turn(self, max_wait_s: float, on_reserved: Callable[[], None] | None = None) -> float | None:
        """Sleep until one request may go: the seconds slept, or None, reserving nothing, if that is over
        ``max_wait_s`` away.

        ``on_reserved`` is called once, as soon as a slot is reserved and before the sleep: the caller's own
        work before sending (a Redis write) is then done while it waits, not after its slot, where it
        would make the request late (with several runs in flight, late enough to break the window).
        """
        waited_s = 0.0
        while True:
            reservation = self.reserve(max_wait_s)
            if reservation is None:
                return None
            if on_reserved is not None:
                on_reserved()
                on_reserved = None
            if reservation.wait_s > 0:
                time.sleep(reservation.wait_s)
                waited_s += reservation.wait_s
            if not self.too_late(reservation):
                return waited_s
            self.release(reservation)  # woke too late to keep the window: take a new turn
