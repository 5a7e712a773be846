"""Store an event: its record, one RQ job per run, and a dead letter per unmappable route, atomically.

Everything goes through one MULTI/EXEC transaction, so the ingress answers 2xx only when all of it is in
Redis, and a failure leaves nothing half-stored.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass

from redis import Redis
from redis.client import Pipeline
from redis.exceptions import RedisError
from rq import Queue, Retry
from rq.job import Job, JobStatus
from rq.queue import EnqueueData
from rq.registry import FailedJobRegistry
from rq.results import Result
from rq.serializers import JSONSerializer

from relay import outcome
from relay.errors import RedisUnavailable
from relay.mapping import MappedEvent, PlannedRun, UnmappedRun
from relay.outcome import EventRecord, EventStatus, RunOutcome, RunStatus
from relay.settings import Settings

DELIVER_FUNC = "relay.worker.deliver"
UNMAPPABLE_FUNC = "relay.worker.unmappable"


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
    """What ``store_event`` wrote."""

    record: EventRecord
    runs: list[RunOutcome]
    dead_letters: list[RunOutcome]


def _run_job_data(settings: Settings, record: EventRecord, run: PlannedRun) -> EnqueueData:
    retries = settings.run_attempts - 1
    return Queue.prepare_data(
        DELIVER_FUNC,
        kwargs={
            "event_id": record.event_id,
            "route": run.route,
            "phlo_id": run.phlo_id,
            "account": run.account,
            "payload": run.payload,
        },
        job_id=job_id_for(record.event_id, run.route),
        description=describe(record.source, run.route, run.phlo_id, record.event_id),
        timeout=settings.job_timeout_s,
        result_ttl=settings.finished_job_ttl_s,
        failure_ttl=settings.dead_letter_ttl_s,
        retry=Retry(max=retries, interval=settings.run_retry_delay_s) if retries else None,
        meta={"source": record.source, "route": run.route, "phlo_id": run.phlo_id},
    )


def _dead_letter(
    queue: Queue, settings: Settings, record: EventRecord, failure: UnmappedRun, pipe: Pipeline
) -> None:
    # A matching route whose payload cannot be built is dead-lettered at once, so that the event is never
    # lost silently: it shows in RQ's failed registry with its reason; requeueing it only fails again.
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
    )
    reason = f"MappingError: route {failure.route!r}: {failure.reason}"
    registry = FailedJobRegistry(queue.name, connection=queue.connection, serializer=JSONSerializer)
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


def store_event(
    redis: Redis,
    settings: Settings,
    *,
    source: str,
    source_event_id: str | None,
    event_type: str | None,
    mapped: MappedEvent,
) -> StoredEvent:
    """Write the event's record, its jobs and its dead letters in one transaction.

    Raises RedisUnavailable when Redis does not take the transaction: then nothing was stored.
    """
    routes = [run.route for run in mapped.runs] + [failure.route for failure in mapped.failures]
    record = EventRecord(
        event_id=new_event_id(),
        source=source,
        source_event_id=source_event_id,
        event_type=event_type,
        received_at=time.time(),
        status=EventStatus.IGNORED if mapped.ignored else EventStatus.ACCEPTED,
        routes=routes,
    )
    runs = [_first_outcome(record, run, RunStatus.QUEUED) for run in mapped.runs]
    dead_letters = [
        _first_outcome(record, failure, RunStatus.DEAD_LETTERED, failure.reason)
        for failure in mapped.failures
    ]
    queue = relay_queue(redis, settings)
    try:
        with redis.pipeline(transaction=True) as pipe:
            if mapped.runs:
                queue.enqueue_many(
                    [_run_job_data(settings, record, run) for run in mapped.runs], pipeline=pipe
                )
            for failure in mapped.failures:
                _dead_letter(queue, settings, record, failure, pipe)
            outcome.write_event(pipe, record, runs + dead_letters, settings.outcome_ttl_s)
            pipe.execute()
    except RedisError as exc:
        raise RedisUnavailable(f"Redis did not store the event: {type(exc).__name__}") from exc
    return StoredEvent(record=record, runs=runs, dead_letters=dead_letters)
