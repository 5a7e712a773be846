"""The relay's RQ jobs: their ids, descriptions and contents, for the queue and for the failed registry.

``run_job_data`` describes a run's job through RQ's own API (replays enqueue it with ``Queue.enqueue_many``).
The ingress writes the same job without RQ's per-job object work: ``run_job_fields`` takes the hash
RQ's ``Job.to_dict()`` gives a prototype once per job shape, and fills in what differs per run (ids, times,
kwargs). RQ spends ~80 µs building a job object, more than the rest of an event's handling. The call data
is left uncompressed (RQ reads both; zlib costs ~15 µs a run on this path). A test keeps both hashes equal
field for field, so an RQ upgrade that changes its format fails the suite, not production.
"""

from __future__ import annotations

import json
from functools import lru_cache
from typing import Any

import orjson
from redis import Redis
from redis.client import Pipeline
from rq import Callback, Queue, Retry
from rq.job import Job, JobStatus
from rq.queue import EnqueueData
from rq.registry import FailedJobRegistry
from rq.results import Result
from rq.serializers import JSONSerializer
from rq.utils import now, utcformat

from relay.errors import MappingError, RelayError
from relay.mapping.routes import PlannedRun, UnmappedRun
from relay.queue.records import EventRecord
from relay.queue.retry import RetryPolicy
from relay.settings import Settings

DELIVER_FUNC = "relay.worker.job.deliver"
UNMAPPABLE_FUNC = "relay.worker.job.unmappable"
ON_FAILURE_FUNC = "relay.worker.job.on_failure"
# Fields of a job's hash that RQ sets per job; every other field is the same for all runs of one shape.
PER_JOB_FIELDS = ("created_at", "enqueued_at", "data", "description", "meta")
_RELAY_ERRORS = f"{RelayError.__module__}."  # how a traceback's last line names the relay's exceptions


def job_id_for(event_id: str, route: str) -> str:
    """The RQ job id of one route's run of an event: readable, and stable across replays."""
    return f"{event_id}-{route}"


def failure_reason(error: RelayError) -> str:
    """The reason a dead letter shows for a relay error: ``MappingError: route 'callback': ...``.

    The same line ``failure_reason_of`` cuts from a worker's traceback, so that a run dead-lettered by the
    ingress or a replay reads like one a worker dead-lettered.
    """
    return f"{type(error).__name__}: {error}"


def failure_reason_of(exc_string: str) -> str:
    """What RQ records for a job that raised: a relay error's last line alone, any other traceback whole.

    A relay error is an outcome with a reason of its own (the runner's answer, the attempts spent):
    rq-dashboard and ``relay dlq`` show that line, not a traceback with a worker's paths in it.
    """
    last_line = exc_string.rstrip().rpartition("\n")[2]
    return last_line.removeprefix(_RELAY_ERRORS) if last_line.startswith(_RELAY_ERRORS) else exc_string


def relay_queue(redis: Redis, settings: Settings) -> Queue:
    """The RQ queue of PHLO runs, with RQ's JSON serializer so any dashboard or tool can read jobs."""
    return Queue(settings.queue_name, connection=redis, serializer=JSONSerializer)


def describe(source: str, route: str, phlo_id: str, event_id: str) -> str:
    """The job description a queue dashboard shows."""
    return f"{source} -> {route} -> PHLO {phlo_id} (event {event_id})"


def _meta(record: EventRecord, run: PlannedRun | UnmappedRun) -> dict[str, str]:
    """What dashboards and ``relay dlq`` filter on, in every job of the relay."""
    return {"source": record.source, "route": run.route, "phlo_id": run.phlo_id, "event_id": record.event_id}


def _run_kwargs(record: EventRecord, run: PlannedRun, policy: RetryPolicy) -> dict[str, Any]:
    """The job's kwargs: the payload and the retry policy travel with it, so workers need no config."""
    kwargs = {
        "event_id": record.event_id,
        "route": run.route,
        "phlo_id": run.phlo_id,
        "account": run.account,
        "payload": run.payload,
        "policy": policy.as_job_kwarg(),
    }
    if run.window is not None:  # only then: a route without quiet hours keeps the job it always had
        kwargs["window"] = run.window
    if run.cap is not None:  # only then: the jobs of routes without a cap stay as they were
        kwargs["cap"] = run.cap
    return kwargs


def _job_options(timeout_s: int, result_ttl_s: int, failure_ttl_s: int, attempts: int) -> dict[str, Any]:
    return {
        "timeout": timeout_s,
        "result_ttl": result_ttl_s,
        "failure_ttl": failure_ttl_s,
        # Delivery decides each retry itself (backoff, Retry-After, age); this budget only serves RQ's
        # own retry of a run whose worker died mid-job.
        "retry": Retry(max=attempts - 1) if attempts > 1 else None,
        "on_failure": Callback(ON_FAILURE_FUNC),
    }


def run_job_data(
    settings: Settings, record: EventRecord, run: PlannedRun, policy: RetryPolicy
) -> EnqueueData:
    """The RQ job of one run, for ``Queue.enqueue_many``."""
    return Queue.prepare_data(
        DELIVER_FUNC,
        kwargs=_run_kwargs(record, run, policy),
        job_id=job_id_for(record.event_id, run.route),
        description=describe(record.source, run.route, run.phlo_id, record.event_id),
        meta=_meta(record, run),
        **_job_options(*_shape(settings), policy.attempts),
    )


def _shape(settings: Settings) -> tuple[int, int, int]:
    return settings.job_timeout_s, settings.finished_job_ttl_s, settings.dead_letter_ttl_s


@lru_cache(maxsize=64)
def _template(queue_name: str, shape: tuple[int, int, int], attempts: int) -> dict[str, Any]:
    """The fields RQ writes for every queued run of this shape, taken from a prototype RQ builds itself."""
    job = Job.create(
        DELIVER_FUNC,
        kwargs={},
        connection=Redis(),  # never used: nothing here talks to Redis
        serializer=JSONSerializer,
        status=JobStatus.QUEUED,
        origin=queue_name,
        **_job_options(*shape, attempts),
    )
    fields = job.to_dict()
    for name in PER_JOB_FIELDS:
        fields.pop(name, None)
    return fields


def run_job_fields(
    settings: Settings, record: EventRecord, run: PlannedRun, policy: RetryPolicy, stamp: str | None = None
) -> dict[str, Any]:
    """The hash of one run's queued job, exactly as ``Queue.enqueue_many`` of ``run_job_data`` writes it.

    ``stamp`` is its creation time as RQ formats it (default: now).
    """
    stamp = stamp or utcformat(now())
    fields = _template(settings.queue_name, _shape(settings), policy.attempts).copy()
    fields["created_at"] = stamp
    fields["enqueued_at"] = stamp
    fields["data"] = _json((DELIVER_FUNC, None, (), _run_kwargs(record, run, policy)))
    fields["description"] = describe(record.source, run.route, run.phlo_id, record.event_id)
    fields["meta"] = _json(_meta(record, run))
    return fields


def _json(value: Any) -> bytes:
    """JSON as RQ's JSONSerializer reads it; orjson is ~4 times faster than the json module."""
    try:
        return orjson.dumps(value)
    except orjson.JSONEncodeError:  # an integer beyond 64 bits in a payload: the json module takes it
        return json.dumps(value).encode()


def queue_run(pipe: Pipeline, queue: Queue, fields: dict[str, Any], job_id: str) -> None:
    """Queue the writes that put a run's job in the queue, as RQ's enqueue does."""
    pipe.sadd(queue.redis_queues_keys, queue.key)
    pipe.hset(Job.key_for(job_id), mapping=fields)  # type: ignore[arg-type]
    pipe.rpush(queue.key, job_id)


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
    reason = failure_reason(MappingError(failure.route, failure.reason))
    registry = FailedJobRegistry(queue.name, connection=queue.connection, serializer=JSONSerializer)
    job.save(pipeline=pipe)  # registry.add saves the job without its meta
    registry.add(job, ttl=settings.dead_letter_ttl_s, exc_string=reason, pipeline=pipe)
    Result.create_failure(job, settings.dead_letter_ttl_s, reason, pipeline=pipe)
