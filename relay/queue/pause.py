"""Pauses: a paused route, account or source holds its runs, unattempted, until it is resumed.

The state is in Redis, shared by every process and host: one hash per kind (``keys.paused_key``), field the
name, value JSON {reason, by, at}. A worker that takes a run of a paused scope parks its job id in that
scope's held set (``keys.held_key``) instead of any registry; ``resume`` deletes the pause and moves the
held jobs back to the queue in one script, where each passes the account's rate limit like any run.

Parking runs in one script with RQ's bookkeeping of the job (``RelayJob.retry``) and checks that the pause
still stands: a run parked as its scope is resumed goes to the queue instead of a set nobody empties.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel
from redis import Redis
from redis.client import Pipeline
from rq import Queue
from rq.job import Job, JobStatus
from rq.utils import now, utcformat

from relay import keys

KINDS = keys.PAUSE_KINDS
MAX_NAME_CHARS = 200

# KEYS: the kind's paused hash, the scope's held set, the queue, the job's hash.
# ARGV: the name, now (epoch s), the job id, enqueued_at as RQ writes it. Returns 1 when held, 0 when queued.
_PARK = """
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 1 then
    redis.call('ZADD', KEYS[2], ARGV[2], ARGV[3])
    return 1
end
redis.call('HSET', KEYS[4], 'status', 'queued', 'enqueued_at', ARGV[4])
redis.call('RPUSH', KEYS[3], ARGV[3])
return 0
"""
# KEYS: the kind's paused hash, the scope's held set, the queue, RQ's set of queues.
# ARGV: the name, enqueued_at as RQ writes it, the job key prefix, the queue key. Returns the jobs queued,
# or -1 when the scope was not paused.
_RESUME = """
local was_paused = redis.call('HDEL', KEYS[1], ARGV[1])
local moved = 0
for _, id in ipairs(redis.call('ZRANGE', KEYS[2], 0, -1)) do
    local job_key = ARGV[3] .. id
    if redis.call('EXISTS', job_key) == 1 then
        redis.call('HSET', job_key, 'status', 'queued', 'enqueued_at', ARGV[2])
        redis.call('RPUSH', KEYS[3], id)
        moved = moved + 1
    end
end
redis.call('DEL', KEYS[2])
if moved > 0 then
    redis.call('SADD', KEYS[4], ARGV[4])
end
if was_paused == 0 and moved == 0 then
    return -1
end
return moved
"""


class Pause(BaseModel):
    """One paused route, account or source: who paused it, when and why, and how many runs it holds."""

    kind: str
    name: str
    reason: str
    by: str
    at: float
    held: int = 0


@dataclass(frozen=True)
class Scope:
    """What holds a run: its paused route, account or source."""

    kind: str
    name: str


def check_scope(kind: str, name: str) -> str | None:
    """What is wrong with a pause's kind or name, or None."""
    if kind not in KINDS:
        return f"kind must be one of {', '.join(KINDS)}, not {kind!r}"
    if not name.strip() or len(name) > MAX_NAME_CHARS:
        return f"name must be 1 to {MAX_NAME_CHARS} characters"
    return None


def pause(redis: Redis, kind: str, name: str, reason: str, by: str) -> bool:
    """Pause a scope (again: its reason, author and time are replaced). True when it was not paused."""
    state = {"reason": reason, "by": by, "at": time.time()}
    return bool(redis.hset(keys.paused_key(kind), name, json.dumps(state)))


def resume(redis: Redis, queue: Queue, kind: str, name: str) -> int | None:
    """Lift a pause and queue every run it held, at once; how many were queued (None: it was not paused)."""
    moved = redis.eval(
        _RESUME,
        4,
        keys.paused_key(kind),
        keys.held_key(kind, name),
        queue.key,
        queue.redis_queues_keys,
        name,
        utcformat(now()),
        Job.redis_job_namespace_prefix,
        queue.key,
    )
    return None if int(moved) < 0 else int(moved)


def list_paused(redis: Redis) -> list[Pause]:
    """Every pause, by kind then name, each with the number of runs it holds."""
    with redis.pipeline(transaction=False) as pipe:
        for kind in KINDS:
            pipe.hgetall(keys.paused_key(kind))
        by_kind: list[dict[bytes, bytes]] = pipe.execute()
    pauses = [
        Pause(kind=kind, name=name.decode(), **json.loads(raw))
        for kind, fields in zip(KINDS, by_kind, strict=True)
        for name, raw in sorted(fields.items())
    ]
    with redis.pipeline(transaction=False) as pipe:
        for each in pauses:
            pipe.zcard(keys.held_key(each.kind, each.name))
        for each, held in zip(pauses, pipe.execute(), strict=True):
            each.held = held
    return pauses


def queue_read_scopes(pipe: Pipeline, route: str, account: str, source: str | None) -> None:
    """Queue the reads of whether a run's route, account or source is paused; ``holding_scope`` reads them."""
    pipe.hexists(keys.paused_key("route"), route)
    pipe.hexists(keys.paused_key("account"), account)
    pipe.hexists(keys.paused_key("source"), source or "")


def holding_scope(replies: list[Any], route: str, account: str, source: str | None) -> Scope | None:
    """The paused scope that holds a run (route first, then account, then source), or None."""
    for kind, name, paused in zip(KINDS, (route, account, source), replies, strict=True):
        if paused and name:
            return Scope(kind, name)
    return None


def park(pipe: Pipeline, queue: Queue, job: Job, scope: Scope) -> None:
    """Queue on ``pipe`` the park of a held job: into its scope's held set, or the queue if just resumed."""
    job.set_status(JobStatus.DEFERRED, pipeline=pipe)  # neither queued nor scheduled: rq-dashboard agrees
    pipe.eval(
        _PARK,
        4,
        keys.paused_key(scope.kind),
        keys.held_key(scope.kind, scope.name),
        queue.key,
        job.key,
        scope.name,
        time.time(),
        job.id,
        utcformat(now()),
    )
