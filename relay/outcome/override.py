"""Replay a suppressed run past its frequency cap: ``relay runs replay JOB_ID --override-cap``.

Only on request, run by run: the event is mapped again from its stored document with the current config (as
a dead letter's replay is), and queued under the same job id with its cap marked overridden, so the worker
sends it and counts it in the cap's window (later runs to the recipient see it) without checking the cap.
One transaction WATCHing the event: two replays of one suppressed run queue it once.
"""

from __future__ import annotations

import time
from dataclasses import replace

from redis import Redis
from redis.client import Pipeline
from rq.exceptions import NoSuchJobError
from rq.job import Job
from rq.serializers import JSONSerializer

from relay import keys
from relay.errors import MappingError
from relay.mapping.config import RelayConfig
from relay.mapping.routes import PlannedRun, plan_run
from relay.outcome.replay import ReplayResult
from relay.queue import records
from relay.queue.jobs import relay_queue, run_job_data
from relay.queue.records import EventRecord, RunStatus, Step
from relay.queue.retry import RetryPolicy
from relay.settings import Settings


def _event_id_of(job_id: str) -> str:
    """The event id in a run's job id (``relay.queue.jobs.job_id_for``): relay event ids hold no ``-``."""
    return job_id.partition("-")[0]


def replay_suppressed(redis: Redis, settings: Settings, config: RelayConfig, job_id: str) -> ReplayResult:
    """Queue the suppressed run ``job_id`` again, its cap overridden; the result says why not if not."""
    event_id = _event_id_of(job_id)
    record, run = records.read_records(redis, event_id, job_id)
    if record is None or run is None:
        return ReplayResult(job_id=job_id, replayed=False, reason="no such run (never queued, or expired)")
    if run.status is not RunStatus.SUPPRESSED:
        return ReplayResult(job_id=job_id, replayed=False, reason=f"not suppressed: it is {run.status}")
    route = next((route for route in config.routes if route.name == run.route), None)
    document = records.read_document(redis, event_id)
    if route is None or document is None:
        why = f"route {run.route!r} is no longer in the config" if route is None else "its event has expired"
        return ReplayResult(job_id=job_id, replayed=False, reason=why)
    if route.source != record.source:
        why = f"route {route.name!r} now takes events of source {route.source!r}, not {record.source!r}"
        return ReplayResult(job_id=job_id, replayed=False, reason=why)
    try:
        planned = plan_run(config, route, document)
    except MappingError as exc:
        return ReplayResult(job_id=job_id, replayed=False, reason=f"cannot be mapped: {exc.message}")
    if planned.cap is not None:
        planned = replace(planned, cap={**planned.cap, "override": True})
    return _requeue(redis, settings, record, planned, job_id)


def _requeue(
    redis: Redis, settings: Settings, record: EventRecord, planned: PlannedRun, job_id: str
) -> ReplayResult:
    queue = relay_queue(redis, settings)
    try:
        old_job: Job | None = Job.fetch(job_id, connection=redis, serializer=JSONSerializer)
    except NoSuchJobError:  # its finished job has expired (RELAY_FINISHED_JOB_TTL_S): the record is enough
        old_job = None

    def requeue_in(pipe: Pipeline) -> ReplayResult:
        run = records.read_run(pipe, record.event_id, job_id)
        if run is None or run.status is not RunStatus.SUPPRESSED:
            return ReplayResult(job_id=job_id, replayed=False, reason="already replayed")
        now = time.time()
        policy = replace(RetryPolicy.resolve(settings, planned.retry, now), attempts_before=run.attempts)
        collided = run.collided_with.job_id if run.collided_with is not None else "?"
        pipe.multi()
        if old_job is not None:
            old_job.delete(pipeline=pipe)  # its hash, its result, its place in the finished registry
        queue.enqueue_many([run_job_data(settings, record, planned, policy)], pipeline=pipe)
        step = Step(at=now, status=RunStatus.QUEUED, note=f"replayed, frequency cap overridden (was over "
                    f"the cap with {collided})")  # fmt: skip
        records.append_step(
            pipe, record.event_id, run, step, settings.outcome_ttl_s, phlo_id=planned.phlo_id,
            account=planned.account, status=RunStatus.QUEUED, next_attempt_at=None, collided_with=None,
        )  # fmt: skip
        return ReplayResult(job_id=job_id, replayed=True, new_phlo_id=planned.phlo_id)

    result = records.watched_transaction(redis, [keys.event_key(record.event_id)], requeue_in)
    if result is None:
        return ReplayResult(job_id=job_id, replayed=False, reason="the run kept changing; try again")
    return result


def replay_many_suppressed(
    redis: Redis, settings: Settings, config: RelayConfig, job_ids: list[str]
) -> list[ReplayResult]:
    """``replay_suppressed`` for each job id, in order."""
    return [replay_suppressed(redis, settings, config, job_id) for job_id in job_ids]
