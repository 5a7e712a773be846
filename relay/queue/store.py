"""Store events in Redis: records, one RQ job per run, a dead letter per unmappable route, atomically.

One Lua script stores a whole batch of events. For each event it checks the duplicate claim, and if the
event is new, writes its jobs, dead letters and records, then claims its id. A script runs atomically, so
the ingress answers 2xx only when all of an event is in Redis, two ingress processes receiving the same event
at once make one set of runs, and a claim never exists without its runs (a sender's retry after a failed
store is not taken for a duplicate).

Batches form by group commit: events of requests that arrive while a batch is being written go together in
the next one. Under load one Redis round trip serves many webhooks; an idle ingress waits for nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections import deque
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import msgpack
import redis.asyncio
from redis import Redis
from redis.client import Pipeline
from redis.exceptions import RedisError
from rq import Queue

from relay import keys
from relay.errors import RedisUnavailable
from relay.mapping.routes import MappedEvent, PlannedRun, UnmappedRun
from relay.mapping.split import IncomingEvent
from relay.queue import records
from relay.queue.jobs import dead_letter_unmapped, job_id_for, queue_run, relay_queue, run_job_fields
from relay.queue.records import EventRecord, EventStatus, RunOutcome, RunStatus
from relay.queue.retry import RetryPolicy
from relay.settings import Settings

# ARGV[1]: the batch in MessagePack (Redis's Lua has cmsgpack; one argument costs the client far less to
# send than thousands): a list of events, each {duplicate key or '', its window in seconds, the event id,
# its write commands}. Returns per event '' when it was stored, else the event id that first claimed the key.
# The claim is set after the writes: if a write fails (a Redis out of memory fails at the first one), no
# claim is left without its runs. ARGV[2..5]: the index of all events, the prefix of event hashes, the index
# of events repeated, the field counting the repeats: a repeat of an event still stored and indexed counts
# on its record and puts it in that index (relay.queue.index), so that repeated events can be found.
_STORE_SCRIPT = """
local result = {}
for index, event in ipairs(cmsgpack.unpack(ARGV[1])) do
    local seen = event[1]
    local first = false
    if seen ~= '' then
        first = redis.call('GET', seen)
    end
    if first then
        result[index] = first
        -- (a retry of this very batch finds the event's own claim: not a repeat)
        local score = first ~= event[3] and redis.call('ZSCORE', ARGV[2], first)
        if score and redis.call('EXISTS', ARGV[3] .. first) == 1 then
            redis.call('HINCRBY', ARGV[3] .. first, ARGV[5], 1)
            redis.call('ZADD', ARGV[4], score, first)
        end
    else
        for _, command in ipairs(event[4]) do
            redis.call(unpack(command))
        end
        if seen ~= '' then
            redis.call('SET', seen, event[3], 'EX', event[2])
        end
        result[index] = ''
    end
end
return result
"""
MAX_BATCH_EVENTS = 200


def new_event_id() -> str:
    """A relay event id: unique across sources, whatever the sender's own ids are."""
    return f"evt_{os.urandom(16).hex()}"  # as random as uuid4().hex, at a quarter of the cost


@dataclass(frozen=True)
class StoredEvent:
    """What the store did with one event. A duplicate stored nothing; its id is the first one's."""

    record: EventRecord
    runs: list[RunOutcome]
    dead_letters: list[RunOutcome]


def _first_outcome(
    record: EventRecord, run: PlannedRun | UnmappedRun, status: RunStatus, last_error: str | None = None
) -> RunOutcome:
    return RunOutcome(
        job_id=job_id_for(record.event_id, run.route),
        route=run.route,
        phlo_id=run.phlo_id,
        account=run.account,
        status=status,
        last_error=last_error,
    )


def _plan(
    source: str,
    incoming: IncomingEvent,
    mapped: MappedEvent,
    now: float,
    config_version: str | None,
    request_id: str | None = None,
) -> StoredEvent:
    routes = [run.route for run in mapped.runs] + [failure.route for failure in mapped.failures]
    record = EventRecord(
        event_id=new_event_id(),
        source=source,
        source_event_id=incoming.source_event_id,
        event_type=incoming.event_type,
        received_at=now,
        status=EventStatus.IGNORED if mapped.ignored else EventStatus.ACCEPTED,
        routes=routes,
        config_version=config_version,
        request_id=request_id,
    )
    runs = [_first_outcome(record, run, RunStatus.QUEUED) for run in mapped.runs]
    dead_letters = [
        _first_outcome(record, failure, RunStatus.DEAD_LETTERED, failure.reason)
        for failure in mapped.failures
    ]
    return StoredEvent(record=record, runs=runs, dead_letters=dead_letters)


def _duplicate(planned: StoredEvent, first_event_id: str) -> StoredEvent:
    record = planned.record.model_copy(
        update={"event_id": first_event_id, "status": EventStatus.DUPLICATE, "routes": []}
    )
    return StoredEvent(record=record, runs=[], dead_letters=[])


def _rq_time(epoch_s: float) -> str:
    """A time as RQ writes it in a job (``rq.utils.utcformat``), without strftime's cost."""
    return datetime.fromtimestamp(epoch_s, UTC).replace(tzinfo=None).isoformat(timespec="microseconds") + "Z"


def _writes(
    pipe: Pipeline,
    queue: Queue,
    settings: Settings,
    planned: StoredEvent,
    mapped: MappedEvent,
    doc: Any,
    stamp: str,
) -> None:
    """Queue an event's writes on ``pipe``: its jobs, its dead letters, its records."""
    record = planned.record
    for run in mapped.runs:
        policy = RetryPolicy.resolve(settings, run.retry, record.received_at)
        job_id = job_id_for(record.event_id, run.route)
        queue_run(pipe, queue, run_job_fields(settings, record, run, policy, stamp), job_id)
    for failure in mapped.failures:
        dead_letter_unmapped(queue, settings, record, failure, pipe)
    # The document is kept so that a replay can map the event again after the config is fixed.
    document = None if mapped.ignored else doc
    records.write_event(pipe, record, planned.runs + planned.dead_letters, settings.outcome_ttl_s, document)


@dataclass
class _Request:
    """One request's events waiting for their batch: their plans and the script arguments they add."""

    planned: list[StoredEvent]
    encoded: list[bytes]  # per event, its entry of the batch, in MessagePack
    answer: asyncio.Future[list[StoredEvent]]


class EventStore:
    """Stores the ingress's events in Redis, in batches of whatever requests are waiting (group commit)."""

    def __init__(self, redis: redis.asyncio.Redis, recorder: Redis, settings: Settings) -> None:
        """``recorder`` is a synchronous client whose pipelines only record commands: RQ and the outcome
        records write through redis-py pipelines, and the batch script then runs what they recorded."""
        self._redis = redis
        self._recorder = recorder
        self._queue = relay_queue(recorder, settings)
        self._settings = settings
        self._script = redis.register_script(_STORE_SCRIPT)
        self._index_args = (
            keys.index_all_key(),
            keys.event_key(""),
            keys.index_status_key(EventStatus.DUPLICATE.value),
            keys.DUPLICATES_FIELD,
        )
        self._waiting: deque[_Request] = deque()
        self._wakeup = asyncio.Event()
        self._writer: asyncio.Task[None] | None = None

    async def store(
        self,
        source: str,
        events: list[tuple[IncomingEvent, MappedEvent]],
        dedupe_window_s: int,
        config_version: str | None = None,
        request_id: str | None = None,
    ) -> list[StoredEvent]:
        """Store one request's events, mapped with config ``config_version``, received in the request
        ``request_id``; answer once they are in Redis (duplicates: the first event's id).

        Raises RedisUnavailable when Redis did not answer for the batch: nothing of the request was stored,
        unless the connection broke after Redis ran the script (a retry of the sender is then a duplicate).
        """
        now = time.time()
        stamp = _rq_time(now)
        planned = [
            _plan(source, incoming, mapped, now, config_version, request_id) for incoming, mapped in events
        ]
        encoded = []
        pipe = self._recorder.pipeline(transaction=False)
        for (incoming, mapped), plan in zip(events, planned, strict=True):
            _writes(pipe, self._queue, self._settings, plan, mapped, incoming.document, stamp)
            seen = keys.seen_key(source, incoming.dedupe_id) if dedupe_window_s else ""
            # Lua turns numbers back into text with 17 digits: floats keep their value, and the commands
            # hold no integers beyond 2^53.
            commands = [args for args, _options in pipe.command_stack]
            entry = [seen, dedupe_window_s, plan.record.event_id, commands]
            encoded.append(msgpack.packb(entry, use_bin_type=False))  # cmsgpack reads no bin types
            pipe.command_stack.clear()
        request = _Request(planned, encoded, asyncio.get_running_loop().create_future())
        self._waiting.append(request)
        self._wakeup.set()
        if self._writer is None or self._writer.done():
            self._writer = asyncio.create_task(self._write_batches())
        return await asyncio.shield(request.answer)

    async def _write_batches(self) -> None:
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            while self._waiting:
                batch: list[_Request] = []
                count = 0
                while self._waiting and (
                    not batch or count + len(self._waiting[0].planned) <= MAX_BATCH_EVENTS
                ):
                    request = self._waiting.popleft()
                    batch.append(request)
                    count += len(request.planned)
                await self._write(batch)

    async def _write(self, batch: list[_Request]) -> None:
        events = [entry for request in batch for entry in request.encoded]
        # A MessagePack array of n entries is its header and the entries one after the other.
        header = msgpack.packb([None] * len(events))[: -len(events)]
        try:
            firsts = await self._script(args=[header + b"".join(events), *self._index_args])
        except Exception as exc:  # every waiting request must get an answer, whatever went wrong
            failure: Exception = exc
            if isinstance(exc, RedisError):
                failure = RedisUnavailable(f"Redis did not store the event: {type(exc).__name__}")
            for request in batch:
                if not request.answer.done():
                    request.answer.set_exception(failure)
            return
        position = 0
        for request in batch:
            stored = []
            for plan in request.planned:
                first = firsts[position]
                position += 1
                first = first.decode() if isinstance(first, bytes) else str(first)
                # redis-py retries a script whose connection broke; if the first call had run, the retry
                # finds this event's own claim: it was stored.
                if first in ("", plan.record.event_id):
                    stored.append(plan)
                else:
                    stored.append(_duplicate(plan, first))
            if not request.answer.done():
                request.answer.set_result(stored)

    async def ping(self) -> None:
        """Raise RedisError unless Redis answers."""
        await self._redis.ping()

    async def close(self) -> None:
        """Stop the batch writer (call once no request is waiting)."""
        if self._writer is not None:
            self._writer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._writer
