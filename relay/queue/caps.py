"""Frequency caps in Redis: one Lua script decides, atomically for every worker on every host, whether a run
to a recipient fits under its caps, and counts it if so.

Each cap scope (a route's or an account's cap for one recipient hash, ``keys.cap_key``) is a sliding window:
a sorted set of the runs it counted, scored with the time they were admitted. A run fits when each of its
scopes holds fewer than ``max`` runs within the last ``per_s`` seconds, or holds this run already (a retry,
or RQ running the job again): it is then added to every scope at once. It does not fit when any scope is
full: nothing is added, and the answer names the oldest run in that window, the one whose leaving would
have let it in. An override (a replay that says so) is counted without the check. Time is Redis's own
clock, so that hosts with skewed clocks agree; tests pass ``now_ms``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from redis import Redis

from relay import keys

# KEYS: one per scope. ARGV: member, override 0/1, now ms ('' for Redis's clock), then max and per ms of
# each scope. Returns {1} when counted, {0, scope index (1-based), the oldest member} when over a cap.
_ADMIT = """
local now
if ARGV[3] ~= '' then
    now = tonumber(ARGV[3])
else
    local t = redis.call('TIME')
    now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local member = ARGV[1]
for i, key in ipairs(KEYS) do
    local per = tonumber(ARGV[3 + 2 * i])
    redis.call('ZREMRANGEBYSCORE', key, '-inf', now - per)
    if ARGV[2] ~= '1' and not redis.call('ZSCORE', key, member) then
        if redis.call('ZCARD', key) >= tonumber(ARGV[2 + 2 * i]) then
            return {0, i, redis.call('ZRANGE', key, 0, 0)[1]}
        end
    end
end
for i, key in ipairs(KEYS) do
    local per = tonumber(ARGV[3 + 2 * i])
    redis.call('ZADD', key, 'NX', now, member)
    local newest = redis.call('ZREVRANGE', key, 0, 0, 'WITHSCORES')
    redis.call('PEXPIRE', key, math.max(per, tonumber(newest[2]) - now + per))
end
return {1}
"""


@dataclass(frozen=True)
class Scope:
    """One cap a run is under: a route's or an account's, for one recipient (by hash)."""

    kind: str
    name: str
    recipient: str
    max: int
    per_s: int

    @property
    def key(self) -> str:
        return keys.cap_key(self.kind, self.name, self.recipient)


@dataclass(frozen=True)
class OverCap:
    """The answer for a run that does not fit: the scope it is over, and the earlier run it collided with."""

    scope: Scope
    event_id: str
    job_id: str


def scopes_of(cap: dict[str, Any]) -> list[Scope]:
    """The scopes of a job's ``cap`` kwarg (``relay.mapping.caps.resolve_cap``)."""
    return [Scope(**scope) for scope in cap.get("scopes", [])]


def member_of(event_id: str, job_id: str) -> str:
    """A run as a window's member: its event id (to find its record), its job id (stable across retries)."""
    return f"{event_id} {job_id}"


def admit(
    redis: Redis,
    scopes: list[Scope],
    event_id: str,
    job_id: str,
    *,
    override: bool = False,
    now_ms: int | None = None,
) -> OverCap | None:
    """Count the run under every scope and answer None, or answer why it is over a cap (nothing counted)."""
    if not scopes:
        return None
    args: list[Any] = [member_of(event_id, job_id), int(override), "" if now_ms is None else now_ms]
    for scope in scopes:
        args += [scope.max, scope.per_s * 1000]
    script = redis.register_script(_ADMIT)
    reply = script(keys=[scope.key for scope in scopes], args=args)
    if int(reply[0]) == 1:
        return None
    raw = reply[2].decode() if isinstance(reply[2], bytes) else str(reply[2])
    earlier_event, _, earlier_job = raw.partition(" ")
    return OverCap(scopes[int(reply[1]) - 1], earlier_event, earlier_job)
