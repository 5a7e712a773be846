"""An event's whole story, for the console's event page: its record, and per run a timeline of every step
and the exact payload its job sends.

A run's history (``RunOutcome.history``) records each attempt's end, each wait, hold, replay and purge; the
run's first step, queued (or dead-lettered by the ingress when it could not be mapped), is the event's
receipt, which the history does not repeat. The payload is the RQ job's ``kwargs['payload']``: what the
worker posts to the runner, as long as RQ keeps the job (``finished_job_ttl_s`` after a success,
``dead_letter_ttl_s`` as a dead letter).
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any

from pydantic import BaseModel
from redis import Redis
from rq.job import Job
from rq.serializers import JSONSerializer

from relay.outcome.deadletters import failed_registry
from relay.queue import records
from relay.queue.records import EventRecord, RunOutcome, RunStatus, Step
from relay.settings import Settings


class StepKind(StrEnum):
    QUEUED = "queued"
    ATTEMPT_FAILED = "attempt_failed"  # a retry is scheduled
    AMBIGUOUS = "ambiguous"  # no answer: the request may have reached the runner
    WAITING = "waiting"
    PAUSED = "paused"
    REPLAYED = "replayed"
    SUCCEEDED = "succeeded"
    DEAD_LETTERED = "dead_lettered"
    PURGED = "purged"
    RUNNING = "running"
    HELD = "held"  # outside its route's quiet hours, until its release
    EXPIRED = "expired"  # its quiet hours opened only after its maximum age: never sent
    SUPPRESSED = "suppressed"  # over a frequency cap: never sent


class TimelineStep(BaseModel):
    """One line of a run's timeline."""

    at: float
    kind: StepKind
    attempt: int | None = None
    http_status: int | None = None
    detail: str | None = None  # the error, the wait's reason, the runner's message
    retry_in_s: float | None = None


class PayloadState(StrEnum):
    STORED = "stored"
    EXPIRED = "expired"  # RQ no longer keeps the job (finished or dead letter past its TTL)
    NOT_BUILT = "not_built"  # the route could not be mapped: no payload exists


class RunStory(BaseModel):
    run: RunOutcome
    timeline: list[TimelineStep]
    payload: Any = None
    payload_state: PayloadState
    dead_letter: bool  # the run's job is in the failed registry now (replayable)


class EventStory(BaseModel):
    event: EventRecord
    runs: list[RunStory]


def _step(step: Step, run: RunOutcome) -> TimelineStep:
    kind = {
        RunStatus.WAITING: StepKind.WAITING,
        RunStatus.PAUSED: StepKind.PAUSED,
        RunStatus.SUCCEEDED: StepKind.SUCCEEDED,
        RunStatus.DEAD_LETTERED: StepKind.DEAD_LETTERED,
        RunStatus.RUNNING: StepKind.RUNNING,
        RunStatus.QUEUED: StepKind.QUEUED,
        RunStatus.FAILED: StepKind.ATTEMPT_FAILED,
        RunStatus.HELD: StepKind.HELD,
        RunStatus.EXPIRED: StepKind.EXPIRED,
        RunStatus.SUPPRESSED: StepKind.SUPPRESSED,
    }[step.status]
    if step.note == "replayed":
        kind = StepKind.REPLAYED
    elif step.note == "purged":
        kind = StepKind.PURGED
    elif kind is StepKind.ATTEMPT_FAILED and step.http_status is None and run.ambiguous:
        kind = StepKind.AMBIGUOUS
    detail = step.error or step.note
    if step.note and step.error and step.error in step.note:  # a replay that still cannot map says so
        detail = step.note
    if kind is StepKind.SUCCEEDED:
        detail = run.message
    return TimelineStep(
        at=step.at,
        kind=kind,
        attempt=step.attempt,
        http_status=step.http_status,
        detail=detail,
        retry_in_s=step.retry_in_s,
    )


def timeline(event: EventRecord, run: RunOutcome) -> list[TimelineStep]:
    """Every step of a run, oldest first, starting with its receipt by the ingress."""
    # Dead-lettered by the ingress (unmappable): no history yet, or its first step is that dead letter's
    # replay or purge, which record no attempt (a worker's dead letter records its attempt count).
    first = run.history[0] if run.history else None
    unmapped = (first is None and run.status is RunStatus.DEAD_LETTERED) or (
        first is not None and first.status is RunStatus.DEAD_LETTERED and first.attempt is None
    )
    first_step = (
        TimelineStep(at=event.received_at, kind=StepKind.DEAD_LETTERED, detail=run.last_error)
        if unmapped
        else TimelineStep(at=event.received_at, kind=StepKind.QUEUED)
    )
    return [first_step, *(_step(step, run) for step in run.history)]


def _payload(job: Job | None) -> tuple[Any, PayloadState]:
    if job is None:
        return None, PayloadState.EXPIRED
    kwargs = job.kwargs or {}
    if "payload" not in kwargs:  # an unmappable route's dead letter carries its reason instead
        return None, PayloadState.NOT_BUILT
    return kwargs["payload"], PayloadState.STORED


def read_story(redis: Redis, settings: Settings, event_id: str) -> EventStory | None:
    """The event, its runs' timelines and payloads; None when unknown or expired."""
    view = records.read_event(redis, event_id)
    if view is None:
        return None
    job_ids = [run.job_id for run in view.runs]
    jobs = Job.fetch_many(job_ids, connection=redis, serializer=JSONSerializer) if job_ids else []
    registry_key = failed_registry(redis, settings).key
    with redis.pipeline(transaction=False) as pipe:
        for job_id in job_ids:
            pipe.zscore(registry_key, job_id)
        dead = [score is not None for score in pipe.execute()]
    stories = []
    for run, job, is_dead in zip(view.runs, jobs, dead, strict=True):
        payload, state = _payload(job)
        stories.append(
            RunStory(
                run=run,
                timeline=timeline(view.event, run),
                payload=payload,
                payload_state=state,
                dead_letter=is_dead,
            )
        )
    return EventStory(event=view.event, runs=stories)
