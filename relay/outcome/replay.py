"""Replay dead letters: map each event again from its stored document with the current config.

A fixed route (a default added, a PHLO deployed) so applies. A replay keeps the event id and the job id and
appends to the run's history; it is one Redis transaction, so two replays of one dead letter queue it once.
"""

from __future__ import annotations

import time
from dataclasses import replace

from pydantic import BaseModel
from redis import Redis
from redis.client import Pipeline
from rq.job import Job
from rq.results import Result

from relay.errors import DeadLetterError, MappingError
from relay.mapping.config import RelayConfig
from relay.mapping.routes import PlannedRun, plan_run
from relay.outcome.deadletters import Target, dead_job, failed_registry, letter_of, target_ids
from relay.queue import records
from relay.queue.jobs import failure_reason, relay_queue, run_job_data
from relay.queue.records import EventRecord, RunOutcome, RunStatus, Step
from relay.queue.retry import RetryPolicy
from relay.settings import Settings


class ReplayResult(BaseModel):
    """What a replay did with one dead letter."""

    job_id: str
    replayed: bool
    reason: str | None = None  # why it was not replayed
    new_phlo_id: str | None = None  # the PHLO the queued run will call (the route's current one)


def replay(redis: Redis, settings: Settings, config: RelayConfig, job_id: str) -> ReplayResult:
    """Map the dead letter's event again with ``config`` and queue the run under the same job id.

    Raises DeadLetterError when it is not a dead letter, its route is gone or its event has expired. A
    route that still cannot be mapped stays dead-lettered: the result says why, the history records it.
    """
    job = dead_job(redis, settings, job_id)
    head = letter_of(job)
    route = next((route for route in config.routes if route.name == head.route), None)
    if route is None:
        raise DeadLetterError(f"route {head.route!r} is no longer in the config")
    record, _ = records.read_records(redis, head.event_id, job_id)
    document = records.read_document(redis, head.event_id)
    if record is None or document is None:
        raise DeadLetterError(f"event {head.event_id} has expired: it cannot be mapped again")
    if route.source != record.source:
        raise DeadLetterError(
            f"route {route.name!r} now takes events of source {route.source!r}, not {record.source!r}"
        )
    try:
        planned = plan_run(config, route, document)
    except MappingError as exc:
        run = records.read_run(redis, record.event_id, job_id)
        if run is not None:
            step = Step(
                at=time.time(),
                status=RunStatus.DEAD_LETTERED,
                error=exc.message,
                note=f"replay: still cannot be mapped: {exc.message}",
            )
            records.append_step(
                redis, record.event_id, run, step, settings.outcome_ttl_s, last_error=exc.message
            )
        # What dashboards and listings show as the reason becomes the current one.
        Result.create_failure(job, settings.dead_letter_ttl_s, f"{failure_reason(exc)} (on replay)")
        return ReplayResult(job_id=job_id, replayed=False, reason=f"still cannot be mapped: {exc.message}")
    return _requeue(redis, settings, job, record, planned)


def _requeue(
    redis: Redis, settings: Settings, job: Job, record: EventRecord, planned: PlannedRun
) -> ReplayResult:
    """In one transaction: drop the dead letter, queue the new run under its job id, record the replay."""
    queue, registry_key = relay_queue(redis, settings), failed_registry(redis, settings).key

    def requeue_in(pipe: Pipeline) -> ReplayResult:
        # Another replay (or a purge) changes the job's hash: this transaction then fails and runs again.
        if pipe.zscore(registry_key, job.id) is None or not pipe.exists(job.key):
            return ReplayResult(job_id=job.id, replayed=False, reason="already replayed (or purged)")
        now = time.time()
        run = records.read_run(pipe, record.event_id, job.id) or RunOutcome(
            job_id=job.id, route=planned.route, phlo_id=planned.phlo_id, account=planned.account,
            status=RunStatus.DEAD_LETTERED,
        )  # fmt: skip
        # The attempts made so far do not count against the replayed run's budget.
        policy = replace(RetryPolicy.resolve(settings, planned.retry, now), attempts_before=run.attempts)
        pipe.multi()
        job.delete(pipeline=pipe)  # its hash, its results, its place in the failed registry
        queue.enqueue_many([run_job_data(settings, record, planned, policy)], pipeline=pipe)
        # Queued for the route's current PHLO, its history and last error kept.
        step = Step(at=now, status=RunStatus.QUEUED, note="replayed")
        records.append_step(
            pipe, record.event_id, run, step, settings.outcome_ttl_s,
            phlo_id=planned.phlo_id, account=planned.account, status=RunStatus.QUEUED, next_attempt_at=None,
        )  # fmt: skip
        return ReplayResult(job_id=job.id, replayed=True, new_phlo_id=planned.phlo_id)

    result = records.watched_transaction(redis, [job.key], requeue_in)
    if result is None:
        return ReplayResult(job_id=job.id, replayed=False, reason="the job kept changing; try again")
    return result


def replay_many(redis: Redis, settings: Settings, config: RelayConfig, target: Target) -> list[ReplayResult]:
    """Replay the given job ids, or every dead letter a filter matches (``DeadLetterFilter()``: all)."""
    results = []
    for job_id in target_ids(redis, settings, target):
        try:
            results.append(replay(redis, settings, config, job_id))
        except DeadLetterError as exc:
            results.append(ReplayResult(job_id=job_id, replayed=False, reason=str(exc)))
    return results
