"""Store a request's events: records, one RQ job per run, a dead letter per unmappable route, atomically.

Everything goes through one MULTI/EXEC transaction, so the ingress answers 2xx only when all of it is in
Redis, and a failure leaves nothing half-stored. The same transaction claims each event's duplicate key.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from typing import Any

from redis import Redis
from redis.client import Pipeline
from redis.exceptions import RedisError, WatchError
from rq import Callback, Queue, Retry
from rq.job import Job, JobStatus
from rq.queue import EnqueueData
from rq.registry import FailedJobRegistry
from rq.results import Result
from rq.serializers import JSONSerializer

from relay import keys, outcome
from relay.errors import RedisUnavailable
from relay.events import IncomingEvent
from relay.mapping import MappedEvent, PlannedRun, UnmappedRun
from relay.outcome import EventRecord, EventStatus, RunOutcome, RunStatus
from relay.retry import RetryPolicy
from relay.settings import Settings

DELIVER_FUNC = "relay.delivery.deliver"
UNMAPPABLE_FUNC = "relay.delivery.unmappable"
ON_FAILURE_FUNC = "relay.delivery.on_failure"
WATCH_ATTEMPTS = 5


def new_event_id() -> str:
    """A relay event id: unique across sources, whatever the sender's own ids are."""
    return f"evt_{uuid.uuid4().hex}"


def job_id_for(event_id: str, route: str) -> str:
    """The RQ job id of one route's run of an event: readable, and stable across replays."""
    return f"{event_id}-{route}"


def relay_queue(redis: Redis, settings: Settings) -> Queue:
    """The RQ queue of PHLO runs, with RQ's JSON serializer so any dashboard or tool can read jobs."""
    return Queue(settings.queue_name, connection=redis, serializer=JSONSerializer)


def describe(source: str, route: str, phlo_id: str, event_id: str) -> str:
    """The job description a queue dashboard shows."""
    return f"{source} -> {route} -> PHLO {phlo_id} (event {event_id})"


@dataclass(frozen=True)
class StoredEvent:
    """What ``store_events`` did with one event. A duplicate stored nothing; its id is the first one's."""

    record: EventRecord
    runs: list[RunOutcome]
    dead_letters: list[RunOutcome]


def _meta(record: EventRecord, run: PlannedRun | UnmappedRun) -> dict[str, str]:
    """What dashboards and ``relay dlq`` filter on, in every job of the relay."""
    return {"source": record.source, "route": run.route, "phlo_id": run.phlo_id, "event_id": record.event_id}


def run_job_data(
    settings: Settings, record: EventRecord, run: PlannedRun, policy: RetryPolicy
) -> EnqueueData:
    """The RQ job of one run: its kwargs carry the payload and the retry policy, so workers need no config."""
    return Queue.prepare_data(
        DELIVER_FUNC,
        kwargs={
            "event_id": record.event_id,
            "route": run.route,
            "phlo_id": run.phlo_id,
            "account": run.account,
            "payload": run.payload,
            "policy": policy.as_job_kwarg(),
        },
        job_id=job_id_for(record.event_id, run.route),
        description=describe(record.source, run.route, run.phlo_id, record.event_id),
        timeout=settings.job_timeout_s,
        result_ttl=settings.finished_job_ttl_s,
        failure_ttl=settings.dead_letter_ttl_s,
        # Delivery decides each retry itself (backoff, Retry-After, age); this budget only serves RQ's
        # own retry of a run whose worker died mid-job.
        retry=Retry(max=policy.attempts - 1) if policy.attempts > 1 else None,
        on_failure=Callback(ON_FAILURE_FUNC),
        meta=_meta(record, run),
    )


def dead_letter_unmapped(
    queue: Queue, settings: Settings, record: EventRecord, failure: UnmappedRun, pipe: Pipeline
) -> None:
    """Dead-letter a matching route whose payload cannot be built, so that the event is never lost silently.

    It shows in RQ's failed registry with its reason; ``relay dlq replay`` maps it again after a fix.
    """
    job = Job.create(
        UNMAPPABLE_FUNC,
        kwargs={"event_id": record.event_id, "route": failure.route, "reason": failure.reason},
        connection=queue.connection,
        id=job_id_for(record.event_id, failure.route),
        description=describe(record.source, failure.route, failure.phlo_id, record.event_id),
        origin=queue.name,
        serializer=JSONSerializer,
        failure_ttl=settings.dead_letter_ttl_s,
        status=JobStatus.FAILED,
        meta=_meta(record, failure),
    )
    reason = f"MappingError: route {failure.route!r}: {failure.reason}"
    registry = FailedJobRegistry(queue.name, connection=queue.connection, serializer=JSONSerializer)
    job.save(pipeline=pipe)  # registry.add saves the job without its meta
    registry.add(job, ttl=settings.dead_letter_ttl_s, exc_string=reason, pipeline=pipe)
    Result.create_failure(job, settings.dead_letter_ttl_s, reason, pipeline=pipe)


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


@dataclass(frozen=True)
class _Pending:
    """An event about to be stored: its record and outcomes, its runs, its duplicate key and document."""

    planned: StoredEvent
    mapped: MappedEvent
    seen_key: str | None
    document: Any


def _plan(source: str, incoming: IncomingEvent, mapped: MappedEvent) -> StoredEvent:
    routes = [run.route for run in mapped.runs] + [failure.route for failure in mapped.failures]
    record = EventRecord(
        event_id=new_event_id(),
        source=source,
        source_event_id=incoming.source_event_id,
        event_type=incoming.event_type,
        received_at=time.time(),
        status=EventStatus.IGNORED if mapped.ignored else EventStatus.ACCEPTED,
        routes=routes,
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


def _write(pipe: Pipeline, queue: Queue, settings: Settings, pending: _Pending) -> None:
    record, mapped = pending.planned.record, pending.mapped
    if mapped.runs:
        jobs = [
            run_job_data(settings, record, run, RetryPolicy.resolve(settings, run.retry, record.received_at))
            for run in mapped.runs
        ]
        queue.enqueue_many(jobs, pipeline=pipe)
    for failure in mapped.failures:
        dead_letter_unmapped(queue, settings, record, failure, pipe)
    runs = pending.planned.runs + pending.planned.dead_letters
    # The document is kept so that a replay can map the event again after the config is fixed.
    document = None if mapped.ignored else pending.document
    outcome.write_event(pipe, record, runs, settings.outcome_ttl_s, document)


def _store_once(
    pipe: Pipeline, queue: Queue, settings: Settings, pendings: list[_Pending], dedupe_window_s: int
) -> list[StoredEvent]:
    seen_keys = [pending.seen_key for pending in pendings if pending.seen_key is not None]
    if seen_keys:
        # Optimistic lock: if another ingress claims one of these events before EXEC, the transaction
        # fails with WatchError and the next attempt sees the claim; a claim is never stored without its
        # runs, so a sender's retry after a failed store is not mistaken for a duplicate.
        pipe.watch(*seen_keys)  # type: ignore[no-untyped-call]
    firsts = dict(zip(seen_keys, pipe.mget(seen_keys) if seen_keys else [], strict=True))
    pipe.multi()
    stored = []
    for pending in pendings:
        planned, seen_key = pending.planned, pending.seen_key
        first = firsts.get(seen_key) if seen_key is not None else None
        if first is not None:
            stored.append(_duplicate(planned, first.decode() if isinstance(first, bytes) else str(first)))
            continue
        if seen_key is not None:
            pipe.set(seen_key, planned.record.event_id, ex=dedupe_window_s)
            firsts[seen_key] = planned.record.event_id  # a repeat within the same request
        _write(pipe, queue, settings, pending)
        stored.append(planned)
    pipe.execute()
    return stored


def store_events(
    redis: Redis,
    settings: Settings,
    *,
    source: str,
    events: list[tuple[IncomingEvent, MappedEvent]],
    dedupe_window_s: int,
) -> list[StoredEvent]:
    """Store a request's events (records, jobs, dead letters) in one transaction, skipping duplicates.

    An event whose id was stored within ``dedupe_window_s`` (0: no deduplication) is a duplicate: nothing
    is written for it. Raises RedisUnavailable when Redis does not take the transaction: nothing was stored.
    """
    pendings = [
        _Pending(
            _plan(source, incoming, mapped),
            mapped,
            keys.seen_key(source, incoming.dedupe_id) if dedupe_window_s else None,
            incoming.document,
        )
        for incoming, mapped in events
    ]
    queue = relay_queue(redis, settings)
    try:
        with redis.pipeline(transaction=True) as pipe:
            for _ in range(WATCH_ATTEMPTS):
                try:
                    return _store_once(pipe, queue, settings, pendings, dedupe_window_s)
                except WatchError:
                    continue
    except RedisError as exc:
        raise RedisUnavailable(f"Redis did not store the event: {type(exc).__name__}") from exc
    raise RedisUnavailable("Redis did not store the event: the duplicate check kept conflicting")
