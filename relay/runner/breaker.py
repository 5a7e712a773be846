"""A circuit breaker per Plivo account, shared by every worker through Redis.

Closed, transient runner failures (5xx, 429, timeouts, connection errors) are logged with their times
(``keys.breaker_failures_key``); ``failure_threshold`` of them within ``window_s`` open the breaker for
``open_s`` (``keys.breaker_key``: a hash that exists only while open). Once that time has passed,
``allow()`` hands exactly one caller across all processes a probe (``half_open``); everyone else is told
to come back when the probe's token expires. The probe's success closes the breaker; its failure opens
it again for twice as long, up to ``max_open_s``. A probe whose worker died never reports: its token
expires after ``probe_timeout_s`` (default ``open_s``) and the next caller becomes the probe.

Every transition is one Lua script on Redis's clock, so processes and hosts agree on what time it is.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Literal

from redis import Redis
from redis.client import Pipeline

from relay import keys

_US = 1_000_000

# Shared head of the scripts: KEYS[1] the breaker hash, KEYS[2] the failure log; times in integral µs
# (Lua numbers are doubles, exact below 2^53; Redis truncates them to integers in replies).
_HEAD = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local retry_at = tonumber(redis.call('HGET', KEYS[1], 'retry_at'))
local probe_until = tonumber(redis.call('HGET', KEYS[1], 'probe_until'))
"""

# ARGV: probe timeout µs, max open µs, read only (0/1). Returns {state, retry_at µs or -1}.
_ALLOW = (
    _HEAD
    + """
if not retry_at then
    return {'closed', -1}
end
if now < retry_at then
    return {'open', retry_at}
end
if ARGV[3] == '1' then
    return {'half_open', -1}
end
if probe_until and now < probe_until then
    return {'open', probe_until}
end
probe_until = now + tonumber(ARGV[1])
redis.call('HSET', KEYS[1], 'probe_until', probe_until)
redis.call('PEXPIRE', KEYS[1], math.ceil((probe_until - now + tonumber(ARGV[2])) / 1000))
return {'half_open', -1}
"""
)

# ARGV: threshold, window µs, open µs, max open µs, member. Returns {state, retry_at µs or -1}.
_FAILURE = (
    _HEAD
    + """
local max_open = tonumber(ARGV[4])
local open_for
if retry_at then
    if not probe_until then
        -- a request sent before the breaker opened: it is open already
        return {'open', retry_at}
    end
    open_for = math.min(tonumber(redis.call('HGET', KEYS[1], 'open_for')) * 2, max_open)
else
    redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now - tonumber(ARGV[2]))
    redis.call('ZADD', KEYS[2], now, ARGV[5])
    if redis.call('ZCARD', KEYS[2]) < tonumber(ARGV[1]) then
        redis.call('PEXPIRE', KEYS[2], math.ceil(tonumber(ARGV[2]) / 1000))
        return {'closed', -1}
    end
    redis.call('DEL', KEYS[2])
    open_for = math.min(tonumber(ARGV[3]), max_open)
end
retry_at = now + open_for
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], 'retry_at', retry_at, 'open_for', open_for)
-- outlives the open time: idle, the breaker is forgotten (closed) max_open_s after it would probe
redis.call('PEXPIRE', KEYS[1], math.ceil((open_for + max_open) / 1000))
return {'open', retry_at}
"""
)

State = Literal["closed", "open", "half_open"]


@dataclass(frozen=True)
class BreakerState:
    """Where an account's breaker stands."""

    state: State
    retry_at: float | None
    """Open: epoch seconds (Redis's clock) when to ask again, for a probe. None otherwise."""


class CircuitBreaker:
    """Stops sending an account's runs while its runner calls keep failing; resumes on its own."""

    def __init__(
        self,
        redis: Redis,
        account: str,
        *,
        failure_threshold: int = 5,
        window_s: float = 30.0,
        open_s: float = 15.0,
        max_open_s: float = 300.0,
        probe_timeout_s: float | None = None,
    ) -> None:
        if failure_threshold < 1:
            raise ValueError("failure_threshold must be at least 1")
        if min(window_s, open_s, max_open_s) <= 0 or (probe_timeout_s is not None and probe_timeout_s <= 0):
            raise ValueError("times must be positive")
        self.redis = redis
        self.account = account
        self.failure_threshold = failure_threshold
        self.window_s = window_s
        self.open_s = open_s
        self.max_open_s = max_open_s
        self.probe_timeout_s = open_s if probe_timeout_s is None else probe_timeout_s
        self._keys = [keys.breaker_key(account), keys.breaker_failures_key(account)]
        self._allow = redis.register_script(_ALLOW)
        self._failure = redis.register_script(_FAILURE)

    def allow(self) -> BreakerState:
        """May a run be sent? ``closed``: yes. ``half_open``: yes, as the one probe. ``open``: not before
        ``retry_at``."""
        return self._call_allow(read_only=False)

    def queue_allow(self, pipe: Pipeline) -> None:
        """``allow()`` queued on a pipeline, to save a round trip; read its reply with ``allowed()``."""
        self._allow(keys=self._keys, args=self._allow_args(read_only=False), client=pipe)

    @staticmethod
    def allowed(reply: list[bytes | int]) -> BreakerState:
        """The state a queued ``allow()`` answered."""
        return _state(reply)

    def state(self) -> BreakerState:
        """The state without taking the probe (``half_open``: the open time is over, a probe is out or may
        go), for metrics."""
        return self._call_allow(read_only=True)

    def record_success(self, pipe: Pipeline | None = None) -> None:
        """A run reached the runner: close the breaker and forget past failures (queued on ``pipe``)."""
        (pipe if pipe is not None else self.redis).delete(*self._keys)

    def record_failure(self) -> BreakerState:
        """Count a transient runner failure; a failure while a probe is out is the probe's. Returns the
        state after it."""
        result = self._failure(
            keys=self._keys,
            args=[
                self.failure_threshold,
                _micros(self.window_s),
                _micros(self.open_s),
                _micros(self.max_open_s),
                uuid.uuid4().hex,
            ],
        )
        return _state(result)

    def _allow_args(self, *, read_only: bool) -> list[int]:
        return [_micros(self.probe_timeout_s), _micros(self.max_open_s), int(read_only)]

    def _call_allow(self, *, read_only: bool) -> BreakerState:
        return _state(self._allow(keys=self._keys, args=self._allow_args(read_only=read_only)))


def _micros(seconds: float) -> int:
    return round(seconds * _US)


def _state(result: list[bytes | int]) -> BreakerState:
    name, retry_at = result
    state: State = "open" if name == b"open" else "half_open" if name == b"half_open" else "closed"
    return BreakerState(state=state, retry_at=int(retry_at) / _US if int(retry_at) >= 0 else None)
