"""The event index: sorted sets that find events by time, source, route, status and the sender's event id.

Every set is scored by the event's ``received_at``, so that any of them walks newest first within a time
range, and one cursor (an event id and its score) serves all of them. Members are event ids, except in the
sets of run statuses (queued, running, succeeded, ..., and ``ambiguous``), whose members are job ids
(``<event id>-<route>``): a run has one status at a time, so a status change moves its one member without
reading the event's other runs.

The writes go with the records' (``relay.queue.records``): a new event's in the store's atomic batch, a run's
status change in the same script that saves the run. Searches verify what they find against the records,
so an entry that outlived its event (expired, or a race) is skipped, never shown; ``trim`` removes entries
older than the retention, and searches remove the ones whose event is gone.
"""

from __future__ import annotations

from collections.abc import Iterable

from redis import Redis
from redis.client import Pipeline

from relay import keys

AMBIGUOUS = "ambiguous"
TRIM_MAX_ENTRIES = 10_000  # per set and pass: a pass never blocks Redis for long, whatever piled up

# KEYS[1]: the event hash, KEYS[2]: the index of all events. ARGV: the run's field, its JSON, the TTL in
# seconds, the event id, the job id, its status, '1' when ambiguous, the prefix of the status sets.
# Saves the run (as records.save_run did with HSET and EXPIRE) and moves its job id from the set of the
# status it had (read from the record, so no caller's stale copy matters) to the set of the new one.
SAVE_RUN_SCRIPT = """
local old = redis.call('HGET', KEYS[1], ARGV[1])
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('EXPIRE', KEYS[1], ARGV[3])
if old then
    local was = cjson.decode(old)
    if was.status ~= ARGV[6] then
        redis.call('ZREM', ARGV[8] .. was.status, ARGV[5])
    end
    if was.ambiguous == true and ARGV[7] ~= '1' then
        redis.call('ZREM', ARGV[8] .. 'ambiguous', ARGV[5])
    end
end
local score = redis.call('ZSCORE', KEYS[2], ARGV[4])
if not score then  -- the event is no longer indexed (trimmed): nothing to find it by
    return 0
end
redis.call('ZADD', ARGV[8] .. ARGV[6], score, ARGV[5])
if ARGV[7] == '1' then
    redis.call('ZADD', ARGV[8] .. 'ambiguous', score, ARGV[5])
end
return 1
"""


def status_prefix() -> str:
    """What the key of every status set begins with (the save script appends the status)."""
    return keys.index_status_key("")


def queue_event(
    pipe: Pipeline,
    event_id: str,
    received_at: float,
    source: str,
    routes: Iterable[str],
    status: str,
    runs: Iterable[tuple[str, str, bool]],
    source_event_id: str | None,
    ttl_s: int,
) -> None:
    """Queue a new event's index entries; ``runs``: (job id, status, ambiguous) of each of its runs."""
    entry = {event_id: received_at}
    pipe.zadd(keys.index_all_key(), entry)
    sets = [keys.index_source_key(source), keys.index_status_key(status)]
    sets += [keys.index_route_key(route) for route in dict.fromkeys(routes)]
    for name in sets:
        pipe.zadd(name, entry)
    for job_id, run_status, ambiguous in runs:
        pipe.zadd(keys.index_status_key(run_status), {job_id: received_at})
        if ambiguous:
            pipe.zadd(keys.index_status_key(AMBIGUOUS), {job_id: received_at})
    pipe.sadd(keys.index_sets_key(), *sets)  # what trim walks; the status sets are known beforehand
    if source_event_id:
        sender = keys.index_sender_key(source_event_id)
        pipe.zadd(sender, entry)
        pipe.expire(sender, ttl_s)  # the set lasts as long as its newest event's record


def save_run(
    where: Redis | Pipeline,
    event_id: str,
    field: str,
    run_json: str,
    status: str,
    ambiguous: bool,
    ttl_s: int,
) -> None:
    """Save a run's JSON in its event's hash and move it to the index set of its status (queued on a
    pipeline, or at once)."""
    where.eval(
        SAVE_RUN_SCRIPT,
        2,
        keys.event_key(event_id),
        keys.index_all_key(),
        field,
        run_json,
        ttl_s,
        event_id,
        field.removeprefix(keys.run_field("")),
        status,
        "1" if ambiguous else "0",
        status_prefix(),
    )


def event_of(member: str) -> str:
    """The event id of an index member: an event id, or a job id (``<event id>-<route>``; event ids have no
    ``-``)."""
    return member.partition("-")[0]


def trim(redis: Redis, ttl_s: int, now_s: float, statuses: Iterable[str]) -> int:
    """Remove the entries of events received more than ``ttl_s`` before ``now_s`` from every set, at most
    TRIM_MAX_ENTRIES a set; the number removed. Sender sets expire by themselves."""
    members: set[bytes] = redis.smembers(keys.index_sets_key())  # type: ignore[assignment]
    names = [keys.index_all_key(), *(keys.index_status_key(status) for status in statuses)]
    names += sorted(name.decode() for name in members)
    cutoff = f"({now_s - ttl_s!r}"
    with redis.pipeline(transaction=False) as pipe:
        for name in names:
            pipe.zcount(name, "-inf", cutoff)
        counts = pipe.execute()
        for name, count in zip(names, counts, strict=True):
            if count:
                # Ranks below the count all score under the cutoff: new entries score later.
                pipe.zremrangebyrank(name, 0, min(count, TRIM_MAX_ENTRIES) - 1)
        removed = sum(pipe.execute())
        # A source or route set left empty goes (Redis deletes an empty set); forget it.
        for name in names[1:]:
            pipe.exists(name)
        gone = [name for name, exists in zip(names[1:], pipe.execute(), strict=True) if not exists]
        if gone:
            pipe.srem(keys.index_sets_key(), *gone)
            pipe.execute()
    return int(removed)


def forget(redis: Redis, name: str, members: list[str]) -> None:
    """Remove the entries of events whose records are gone (expired) from the set a search walked."""
    if members:
        redis.zrem(name, *members)
