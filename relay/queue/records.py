"""Outcome records: what happened to each event and to each of its runs.

One Redis hash per event (``keys.event_key``): field ``event`` holds the event's record, and one field per
run holds that run's outcome, so workers updating different runs of one event never overwrite each other.
This module is the records' one writer: every write keeps the event for ``outcome_ttl_s`` from then, and a
history step is appended the same way whoever appends it (worker, purge, replay).
"""

from __future__ import annotations

import json
import time
import zlib
from collections.abc import Callable, Sequence
from enum import StrEnum
from typing import Any, TypeVar

from pydantic import BaseModel
from redis import Redis
from redis.client import Pipeline
from redis.exceptions import WatchError

from relay import keys
from relay.queue import index

MAX_HISTORY = 50
WATCH_ATTEMPTS = 5  # a WATCHed transaction that keeps conflicting is given up after this many tries
T = TypeVar("T")


class EventStatus(StrEnum):
    ACCEPTED = "accepted"  # at least one run queued or dead-lettered
    IGNORED = "ignored"  # no route matched
    DUPLICATE = "duplicate"  # a repeat of an earlier event: an answer; the first one counts its repeats


class RunStatus(StrEnum):
    QUEUED = "queued"
    WAITING = "waiting"  # held back (circuit breaker open, rate limit, worker stopping): not an attempt
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"  # the last attempt failed; a retry is scheduled
    DEAD_LETTERED = "dead_lettered"  # no further attempt: in RQ's failed registry
    PAUSED = "paused"  # held by a pause of its route, account or source (relay.queue.pause): not an attempt
    HELD = "held"  # outside its route's delivery window (quiet hours) until next_attempt_at: not an attempt
    EXPIRED = "expired"  # its window opens only after its maximum age (past_max_age: expire): never sent
    SUPPRESSED = "suppressed"  # over a frequency cap (relay.queue.caps): never sent, retried or dead-lettered


class Step(BaseModel):
    """One entry of a run's history: an attempt's end, a wait, a crash, a replay."""

    at: float
    status: RunStatus
    attempt: int | None = None
    http_status: int | None = None
    error: str | None = None
    retry_in_s: float | None = None
    note: str | None = None


class Collision(BaseModel):
    """The earlier run a suppressed run collided with, under which cap (the recipient is never named)."""

    job_id: str
    event_id: str
    kind: str  # route or account
    name: str
    max: int
    per_s: int


class EventRecord(BaseModel):
    """An accepted or ignored webhook event."""

    event_id: str
    source: str
    source_event_id: str | None
    event_type: str | None
    received_at: float
    status: EventStatus
    routes: list[str]
    config_version: str | None = None  # the hash of the config that mapped it (absent in older records)
    request_id: str | None = None  # the request that brought it (X-Request-Id; absent in older records)


class RunOutcome(BaseModel):
    """Where one PHLO run stands."""

    job_id: str
    route: str
    phlo_id: str
    account: str
    status: RunStatus
    attempts: int = 0
    phlo_run_id: str | None = None
    message: str | None = None
    http_status: int | None = None
    elapsed_ms: float | None = None
    last_error: str | None = None
    ambiguous: bool = False
    next_attempt_at: float | None = None
    held_s: float = 0.0  # time held by pauses, added to its maximum age
    collided_with: Collision | None = None  # a suppressed run: the earlier run over whose cap it went
    updated_at: float = 0.0
    history: list[Step] = []

    def with_step(self, step: Step) -> list[Step]:
        """The history with ``step`` appended (the oldest dropped past MAX_HISTORY)."""
        return [*self.history, step][-MAX_HISTORY:]


class EventView(BaseModel):
    """An event with all of its runs, as ``GET /events/{id}`` and ``relay events show`` present it."""

    event: EventRecord
    runs: list[RunOutcome]
    duplicates: int = 0  # repeats of the event received (answered as duplicates, not stored)


def write_event(
    pipe: Pipeline, record: EventRecord, runs: list[RunOutcome], ttl_s: int, document: Any = None
) -> None:
    """Queue the writes of a new event's record, its document (for re-mapping) and its runs."""
    key = keys.event_key(record.event_id)
    now = time.time()
    fields: dict[str, str | bytes] = {keys.EVENT_FIELD: record.model_dump_json()}
    if document is not None:
        fields[keys.DOCUMENT_FIELD] = pack_document(document)
    for run in runs:
        run.updated_at = now  # a new event's runs: nobody else holds them yet
        fields[keys.run_field(run.job_id)] = run.model_dump_json()
    pipe.hset(key, mapping=fields)  # type: ignore[arg-type]
    pipe.expire(key, ttl_s)
    index.queue_event(
        pipe,
        record.event_id,
        record.received_at,
        record.source,
        record.routes,
        record.status.value,
        [(run.job_id, run.status.value, run.ambiguous) for run in runs],
        record.source_event_id,
        ttl_s,
    )


# Documents of at least this many bytes of JSON are kept zlib-compressed (docs/operations.md, "Redis memory":
# below it the saving is a few bytes). A stored JSON document begins with one of `{["tfn-0123456789`, a
# compressed one with this marker, so records written before either way stay readable.
COMPRESS_FROM_BYTES = 200
_COMPRESSED = b"z:"


def pack_document(document: Any) -> str | bytes:
    """A document as the event hash keeps it: JSON, zlib-compressed from COMPRESS_FROM_BYTES."""
    text = json.dumps(document, separators=(",", ":"))
    if len(text) < COMPRESS_FROM_BYTES:
        return text
    return _COMPRESSED + zlib.compress(text.encode(), 6)


def unpack_document(raw: bytes | str) -> Any:
    """The document ``pack_document`` stored (or JSON text, as older records hold it)."""
    data = raw.encode() if isinstance(raw, str) else raw
    if data.startswith(_COMPRESSED):
        data = zlib.decompress(data[len(_COMPRESSED) :])
    return json.loads(data)


def read_run(redis: Redis, event_id: str, job_id: str) -> RunOutcome | None:
    """One run's outcome, or None if the event has expired (``redis`` may be a WATCHing pipeline)."""
    return parse_run(redis.hget(keys.event_key(event_id), keys.run_field(job_id)))


def queue_read_run(pipe: Pipeline, event_id: str, job_id: str) -> None:
    """Queue the read of one run's outcome on ``pipe``; ``parse_run`` reads its reply."""
    pipe.hget(keys.event_key(event_id), keys.run_field(job_id))


def parse_run(raw: bytes | str | None) -> RunOutcome | None:
    """A run's outcome from its field's value (None: the event has expired)."""
    return RunOutcome.model_validate_json(raw) if raw else None


def read_records(redis: Redis, event_id: str, job_id: str) -> tuple[EventRecord | None, RunOutcome | None]:
    """The event's record and one of its runs' outcome, in one read (None where expired)."""
    raw_event, raw_run = redis.hmget(keys.event_key(event_id), [keys.EVENT_FIELD, keys.run_field(job_id)])
    return (EventRecord.model_validate_json(raw_event) if raw_event else None, parse_run(raw_run))


def save_run(
    redis: Redis | Pipeline, event_id: str, run: RunOutcome, ttl_s: int, **changes: Any
) -> RunOutcome:
    """Store a run's outcome with ``changes`` applied, and keep the event for ``ttl_s`` from now.

    Given a pipeline, the writes are queued on it, for its caller to execute with others.
    """
    updated = run.model_copy(update={**changes, "updated_at": time.time()})
    # One script: the run saved and its index entry moved together (relay.queue.index).
    index.save_run(
        redis,
        event_id,
        keys.run_field(run.job_id),
        updated.model_dump_json(),
        updated.status.value,
        updated.ambiguous,
        ttl_s,
    )
    return updated


def append_step(
    redis: Redis | Pipeline, event_id: str, run: RunOutcome, step: Step, ttl_s: int, **changes: Any
) -> RunOutcome:
    """Store a run's outcome with ``step`` appended to its history and ``changes`` applied (``save_run``)."""
    return save_run(redis, event_id, run, ttl_s, history=run.with_step(step), **changes)


def watched_transaction(redis: Redis, watched: Sequence[str], body: Callable[[Pipeline], T]) -> T | None:
    """Run ``body`` in a transaction WATCHing ``watched``, again on a conflict; None if every try conflicted.

    ``body`` reads through the pipeline (its commands answer at once until ``pipe.multi()``), then calls
    ``pipe.multi()`` and queues its writes: they are applied together, or not at all if a watched key
    changed meanwhile, and ``body`` runs again on fresh reads. A ``body`` returning before ``multi()``
    writes nothing. Up to WATCH_ATTEMPTS tries.
    """
    with redis.pipeline(transaction=True) as pipe:
        for _ in range(WATCH_ATTEMPTS):
            try:
                pipe.watch(*watched)  # type: ignore[no-untyped-call]
                result = body(pipe)
                if pipe.explicit_transaction:
                    pipe.execute()
                return result
            except WatchError:
                continue
    return None


def read_document(redis: Redis, event_id: str) -> Any:
    """The event's document as the ingress parsed it, or None when unknown or expired."""
    raw: bytes | None = redis.hget(keys.event_key(event_id), keys.DOCUMENT_FIELD)  # type: ignore[assignment]
    return unpack_document(raw) if raw else None


def read_event(redis: Redis, event_id: str) -> EventView | None:
    """The event and all its runs, or None when unknown or expired."""
    fields: dict[bytes, bytes] = redis.hgetall(keys.event_key(event_id))  # type: ignore[assignment]
    return view_of(fields)


def view_of(fields: dict[bytes, bytes]) -> EventView | None:
    """An event and its runs from the fields of its hash (the document left out), None without its record."""
    raw_event = fields.get(keys.EVENT_FIELD.encode())
    if raw_event is None:
        return None
    run_prefix = keys.run_field("").encode()
    runs = [
        RunOutcome.model_validate_json(value) for name, value in fields.items() if name.startswith(run_prefix)
    ]
    runs.sort(key=lambda run: run.route)
    duplicates = int(fields.get(keys.DUPLICATES_FIELD.encode()) or 0)
    return EventView(event=EventRecord.model_validate_json(raw_event), runs=runs, duplicates=duplicates)


INDEXED_STATUSES = (
    *(status.value for status in EventStatus),
    *(status.value for status in RunStatus),
    index.AMBIGUOUS,
)


def trim_index(redis: Redis, ttl_s: int) -> int:
    """Remove the index entries of events received more than ``ttl_s`` ago (a bounded pass); how many."""
    return index.trim(redis, ttl_s, time.time(), INDEXED_STATUSES)
