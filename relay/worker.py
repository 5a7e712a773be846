"""The RQ job that delivers one PHLO run, and the worker processes that run those jobs.

Workers are RQ ``SimpleWorker``s (no fork per job), so each process keeps one runner client and its
connection pool from job to job. RQ retries a failed attempt as the job's ``Retry`` says; an error that
retrying cannot fix (the runner's 4xx) ends the retries at once, and the last failure lands in RQ's failed
registry: the dead-letter store dashboards show.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from redis import Redis
from redis.exceptions import RedisError
from rq import SimpleWorker, get_current_job
from rq.serializers import JSONSerializer
from rq.worker_pool import WorkerPool

from relay import outcome
from relay.enqueue import job_id_for, relay_queue
from relay.errors import MappingError, RunnerError, RunnerRejected, RunnerUnreachable, SettingsError
from relay.outcome import RunOutcome, RunStatus
from relay.runner import RunnerClient
from relay.settings import Settings, load_settings

log = logging.getLogger(__name__)


@dataclass
class WorkerContext:
    """What every job of a worker process shares: built once per process."""

    settings: Settings
    redis: Redis
    runner: RunnerClient

    @classmethod
    def build(cls, settings: Settings) -> WorkerContext:
        runner = RunnerClient(
            settings.runner_url,
            connect_timeout_s=settings.runner_connect_timeout_s,
            read_timeout_s=settings.runner_read_timeout_s,
        )
        return cls(settings=settings, redis=Redis.from_url(settings.redis_url), runner=runner)

    def close(self) -> None:
        self.runner.close()
        self.redis.close()


_context: WorkerContext | None = None


def use_context(context: WorkerContext | None) -> None:
    """Set the context the jobs of this process use (None: build from the environment on first use)."""
    global _context
    _context = context


def current_context() -> WorkerContext:
    """This process's context; a worker started by other means (``rq worker``) builds it from settings."""
    global _context
    if _context is None:
        _context = WorkerContext.build(load_settings())
    return _context


def deliver(event_id: str, route: str, phlo_id: str, account: str, payload: dict[str, Any]) -> dict[str, Any]:
    """RQ job: run one PHLO and record the outcome. Raises (so RQ retries or dead-letters) on failure."""
    context = current_context()
    settings = context.settings
    job = get_current_job()
    job_id = job.id if job is not None else job_id_for(event_id, route)
    run = outcome.read_run(context.redis, event_id, job_id) or RunOutcome(
        job_id=job_id, route=route, phlo_id=phlo_id, account=account, status=RunStatus.QUEUED
    )

    def record(**changes: Any) -> RunOutcome:
        return outcome.save_run(context.redis, event_id, run, settings.outcome_ttl_s, **changes)

    run = record(status=RunStatus.RUNNING, attempts=run.attempts + 1)
    try:
        credentials = settings.account(account)
        if credentials is None:
            raise SettingsError(f"no credentials for Plivo account {account!r}")
        result = context.runner.run(credentials, phlo_id, payload)
    except Exception as exc:
        permanent = isinstance(exc, SettingsError) or (isinstance(exc, RunnerError) and exc.permanent)
        if permanent and job is not None:
            job.retries_left = 0  # RQ then fails the job instead of retrying it
        final = job is None or not job.should_retry
        record(
            status=RunStatus.DEAD_LETTERED if final else RunStatus.FAILED,
            last_error=str(exc) if isinstance(exc, RunnerError | SettingsError) else repr(exc),
            http_status=exc.status if isinstance(exc, RunnerRejected) else None,
            # Once an attempt may have run the PHLO, the run stays marked: a retry may have run it twice.
            ambiguous=run.ambiguous or (isinstance(exc, RunnerUnreachable) and exc.ambiguous),
        )
        log.warning(
            "run %s attempt %d failed%s: %s", job_id, run.attempts, "" if final else ", will retry", exc
        )
        raise
    try:
        record(
            status=RunStatus.SUCCEEDED,
            phlo_run_id=result.phlo_run_id,
            message=result.message,
            http_status=result.status,
            elapsed_ms=round(result.elapsed_ms, 1),
            last_error=None,
        )
    except RedisError:
        # The PHLO has run: raising would make RQ retry it and run it twice. RQ keeps the job's result.
        log.exception(
            "run %s succeeded (PHLO run %s) but its outcome was not recorded", job_id, result.phlo_run_id
        )
    log.info("run %s succeeded: PHLO run %s", job_id, result.phlo_run_id)
    return {"phlo_run_id": result.phlo_run_id, "message": result.message, "status": result.status}


def unmappable(event_id: str, route: str, reason: str) -> None:
    """RQ job of a route that could not be mapped: it stays dead-lettered, even when requeued."""
    raise MappingError(route, f"{reason} (event {event_id}; fix the config, then replay)")


def run_workers(settings: Settings, *, processes: int = 1, burst: bool = False) -> None:
    """Run RQ worker processes for the relay's queue until stopped (or, with ``burst``, until it is empty)."""
    redis = Redis.from_url(settings.redis_url)
    queue = relay_queue(redis, settings)
    if processes > 1:
        # Each forked worker builds its own context (and connection pool) on its first job.
        pool = WorkerPool(
            [queue.name],
            connection=redis,
            num_workers=processes,
            worker_class=SimpleWorker,
            serializer=JSONSerializer,
        )
        pool.start(burst=burst, logging_level=settings.log_level)
        return
    context = WorkerContext.build(settings)
    use_context(context)
    try:
        worker = SimpleWorker([queue], connection=redis, serializer=JSONSerializer)
        worker.work(burst=burst, with_scheduler=True, logging_level=settings.log_level)
    finally:
        use_context(None)
        context.close()
