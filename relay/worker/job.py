"""The RQ jobs of the relay: ``deliver`` runs one PHLO; ``unmappable`` holds a run that could not be mapped.

Before each attempt a run passes its account's circuit breaker and rate limit (both in Redis, shared by every
worker); a run held back there is rescheduled without using an attempt. After a failure the run decides its
own retry (``relay.queue.retry``), which a worker queues when it is due (``relay.queue.due``); a run out of
attempts or age ends in RQ's failed registry: the dead letters dashboards show. Every step is appended to
the run's history (``relay.worker.runs``). Each function takes the worker's context first (``ctx``):
``RelayJob`` passes it, as arq hands its jobs ``ctx``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from types import TracebackType
from typing import Any

from redis import Redis
from redis.exceptions import RedisError
from rq import get_current_job
from rq.exceptions import AbandonedJobError
from rq.job import Job

from relay.errors import (
    DeadLetterError,
    DeliveryPaused,
    MappingError,
    RunHeld,
    RunnerError,
    RunnerRejected,
    RunnerUnreachable,
    SettingsError,
)
from relay.infra.logs import bind
from relay.infra.metrics import DeadLetterReason
from relay.queue import pause, records
from relay.queue.jobs import job_id_for
from relay.queue.records import RunOutcome, RunStatus
from relay.queue.retry import RetryPolicy
from relay.runner.breaker import BreakerState
from relay.settings import PlivoAccount
from relay.worker import caps, quiet_hours
from relay.worker.context import WorkerContext
from relay.worker.runs import RunKeeper
from relay.worker.slots import abandoned_flag

log = logging.getLogger(__name__)


def _admit(
    ctx: WorkerContext,
    account: str,
    credentials: PlivoAccount,
    state: BreakerState,
    on_reserved: Callable[[], None],
) -> bool:
    """Wait for the account's turn, or raise DeliveryPaused when the breaker is open or the wait too long.

    ``state`` is what the breaker's ``allow()`` answered; ``on_reserved`` runs once the turn is reserved,
    during the wait. True when this run is the breaker's probe.
    """
    if state.state == "open":
        delay_s = max((state.retry_at or time.time()) - time.time(), 0.0)
        raise DeliveryPaused(f"circuit breaker of account {account!r} is open", delay_s + 1)
    if state.state == "half_open":
        ctx.metrics.breaker_transitions.labels(account, "half_open").inc()
    settings = ctx.settings
    # The wait must leave the request its whole connect and read time within the job's timeout.
    max_wait_s = (
        settings.job_timeout_s - settings.runner_connect_timeout_s - settings.runner_read_timeout_s - 2
    )
    waited_s = ctx.rate_limit(account, credentials).wait_turn(max(max_wait_s, 0.0), on_reserved)
    if waited_s is None:
        ctx.metrics.rate_limit_waits.labels(account, "rescheduled").inc()
        raise DeliveryPaused(f"rate limit of account {account!r} is taken for the next {max_wait_s:.0f} s", 1)
    if waited_s > 0:
        ctx.metrics.rate_limit_waits.labels(account, "waited").inc()
        ctx.metrics.rate_limit_wait.labels(account).observe(waited_s)
    return state.state == "half_open"


def deliver(
    ctx: WorkerContext,
    event_id: str,
    route: str,
    phlo_id: str,
    account: str,
    payload: dict[str, Any],
    policy: dict[str, Any] | None = None,
    window: dict[str, Any] | None = None,
    cap: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """RQ job: run one PHLO and record the outcome. Raises (so RQ retries or dead-letters) on failure.

    ``ctx`` is the worker's (``RelayJob`` passes it); the rest are the job's kwargs as stored in Redis.
    """
    settings = ctx.settings
    job = get_current_job()
    job_id = job.id if job is not None else job_id_for(event_id, route)
    source = (job.meta or {}).get("source") if job is not None else None
    breaker = ctx.breaker(account)
    # One round trip for the run's record, the pauses and the breaker's answer; the breaker's probe, if it
    # was taken for a run that then does not go, comes back when its token expires.
    with ctx.redis.pipeline(transaction=False) as pipe:
        records.queue_read_run(pipe, event_id, job_id)
        pause.queue_read_scopes(pipe, route, account, source)
        breaker.queue_allow(pipe)
        raw_run, *paused, allow_reply = pipe.execute()
    run = records.parse_run(raw_run) or RunOutcome(
        job_id=job_id, route=route, phlo_id=phlo_id, account=account, status=RunStatus.QUEUED
    )
    if run.status is RunStatus.SUCCEEDED:
        # RQ runs a job again when its worker died after the success was recorded but before RQ marked
        # the job finished: sending it would run the PHLO twice.
        log.warning("run %s already succeeded (PHLO run %s); not sent again", job_id, run.phlo_run_id)
        return {"phlo_run_id": run.phlo_run_id, "message": run.message, "status": run.http_status}
    if run.status is RunStatus.DEAD_LETTERED:
        # The same for a run that was given up: it stays a dead letter (a replay queues it as queued).
        if job is not None:
            job.retries_left = 0
        raise DeadLetterError(f"run {job_id} was dead-lettered already: {run.last_error}")
    if run.status is RunStatus.EXPIRED:  # the same for a run that expired unsent (quiet hours)
        return {"expired": True, "reason": run.history[-1].note if run.history else None}
    if run.next_attempt_at is not None:  # a retry or a held run: how late after its due time it starts
        ctx.metrics.scheduled_start_delay.observe(max(0.0, time.time() - run.next_attempt_at))
    run = _released(run)
    abandoned = abandoned_flag.get()
    run_policy = RetryPolicy.of_job(policy, settings).held_for(run.held_s)
    keeper = RunKeeper(ctx.redis, settings, ctx.metrics, event_id, job, run_policy, run, abandoned)
    scope = pause.holding_scope(paused, route, account, source)
    if scope is not None:  # before the credentials: pausing an account is how its credentials get fixed
        keeper.hold(scope)
        raise RunHeld(f"{scope.kind} {scope.name!r} is paused: held until it is resumed")
    if window is not None and (expired := quiet_hours.check_window(ctx, keeper, window)) is not None:
        return expired
    if (over_cap := caps.suppressed(ctx, keeper, cap)) is not None:  # over a frequency cap: not sent
        return over_cap
    credentials = settings.account(account)
    if credentials is None:
        keeper.give_up(f"no credentials for Plivo account {account!r}", DeadLetterReason.CREDENTIALS)
        raise SettingsError(f"no credentials for Plivo account {account!r}")
    try:
        # The attempt is recorded as begun (running) once its turn is reserved, while it waits for it.
        probe = _admit(ctx, account, credentials, breaker.allowed(allow_reply), keeper.start)
    except DeliveryPaused as held_back:
        keeper.pause(held_back)
        raise
    if abandoned is not None and abandoned.is_set():
        # Its worker gave up on it while it waited (a shutdown) and requeued it. Checked after start() is
        # recorded: a worker abandoning it from now on finds it running and marks it ambiguous.
        log.warning("run %s was abandoned before it was sent; not sent", job_id)
        return {"abandoned": True}
    started = time.perf_counter()
    try:
        result = ctx.runner.run(credentials, phlo_id, payload)
    except RunnerError as exc:
        ctx.metrics.runner_latency.labels(account, _answer_class(exc)).observe(time.perf_counter() - started)
        _record_failure(ctx, keeper, account, exc)
        raise
    except BaseException as exc:
        # A cold shutdown (SystemExit) or RQ's job timeout while the request was out: the PHLO may have run.
        keeper.interrupted(f"interrupted mid-run ({type(exc).__name__})")
        raise
    ctx.metrics.runner_latency.labels(account, "2xx").observe(time.perf_counter() - started)
    if probe:
        ctx.metrics.breaker_transitions.labels(account, "closed").inc()
    try:
        with ctx.redis.pipeline(transaction=True) as pipe:  # the breaker's news and the run's, at once
            breaker.record_success(pipe)
            keeper.succeeded(result, pipe)
            pipe.execute()
    except RedisError:
        # The PHLO has run: raising would make RQ retry it and run it twice. RQ keeps the job's result.
        log.exception(
            "run %s succeeded (PHLO run %s) but its outcome was not recorded", job_id, result.phlo_run_id
        )
    return {"phlo_run_id": result.phlo_run_id, "message": result.message, "status": result.status}


def _released(run: RunOutcome) -> RunOutcome:
    """The run with the time it was last held by a pause added to ``held_s`` (its age does not count it)."""
    if run.status is not RunStatus.PAUSED:
        return run
    return run.model_copy(update={"held_s": run.held_s + max(0.0, time.time() - run.updated_at)})


def _answer_class(exc: RunnerError) -> str:
    """The runner latency histogram's label for a failed request."""
    if isinstance(exc, RunnerRejected):
        return f"{exc.status // 100}xx"
    return "timeout" if isinstance(exc, RunnerUnreachable) and exc.ambiguous else "unreachable"


def _record_failure(ctx: WorkerContext, keeper: RunKeeper, account: str, exc: RunnerError) -> None:
    breaker = ctx.breaker(account)
    if exc.permanent:
        breaker.record_success()  # the runner answered: it is up, the request was wrong
    elif breaker.record_failure().state == "open":
        ctx.metrics.breaker_transitions.labels(account, "open").inc()
    rejected = exc if isinstance(exc, RunnerRejected) else None
    keeper.failed(
        str(exc),
        permanent=exc.permanent,
        http_status=rejected.status if rejected else None,
        retry_after_s=rejected.retry_after_s if rejected else None,
        # Once an attempt may have run the PHLO, the run stays marked: a retry may have run it twice.
        ambiguous=keeper.run.ambiguous or (isinstance(exc, RunnerUnreachable) and exc.ambiguous),
    )


def on_failure(
    ctx: WorkerContext,
    job: Job,
    connection: Redis,
    exc_type: type[BaseException],
    exc: BaseException,
    tb: TracebackType | None,
) -> None:
    """RQ failure callback: records a run whose worker died mid-job (``requeue_abandoned``).

    ``ctx`` is the ctx of the worker that found the dead one's run (``RelayJob`` passes it).
    """
    if issubclass(exc_type, AbandonedJobError):  # deliver() recorded everything else itself
        requeue_abandoned(ctx, job, str(exc) or "the worker died mid-run", connection)


def requeue_abandoned(ctx: WorkerContext, job: Job, reason: str, connection: Redis | None = None) -> None:
    """Record a run whose attempt was cut short (its worker died, or gave up on it) and set its job's retry.

    A run that may have reached the runner is recorded interrupted and ambiguous, and retried at once. One
    that had not yet been sent, or whose end was recorded but not yet told to RQ, goes back to the queue
    when it is due, without using an attempt: a success then finishes at once, unsent. A dead letter stays
    one. The caller then lets RQ retry (or fail) the job as it says.
    """
    # By the function, not its path: jobs stored before the packages name relay.delivery.deliver.
    if job.func is not deliver:
        return
    redis = connection if connection is not None else ctx.redis
    event_id = str(job.kwargs["event_id"])
    run = records.read_run(redis, event_id, job.id)
    if run is None:
        return  # the event expired: RQ's retry budget decides
    policy = RetryPolicy.of_job(job.kwargs.get("policy"), ctx.settings).held_for(run.held_s)
    keeper = RunKeeper(redis, ctx.settings, ctx.metrics, event_id, job, policy, run)
    with bind(job_id=job.id, event_id=event_id, route=run.route, source=job.meta.get("source")):
        if run.status is RunStatus.RUNNING:  # the request may have been out
            keeper.interrupted(reason)
        elif run.status is RunStatus.DEAD_LETTERED:
            job.retries_left = 0
        else:
            keeper.requeue(max(0.0, (run.next_attempt_at or 0.0) - time.time()))


def unmappable(ctx: WorkerContext, event_id: str, route: str, reason: str) -> None:
    """RQ job of a route that could not be mapped: it stays dead-lettered until replayed after a fix.

    It is created failed; a worker runs it only when someone requeues it (a dashboard's button).
    """
    raise MappingError(route, f"{reason} (event {event_id}; fix the config, then replay)")
