"""The RQ jobs of the relay: ``deliver`` runs one PHLO; ``unmappable`` holds a run that could not be mapped.

Before each attempt a run passes its account's circuit breaker and rate limit (both in Redis, shared by every
worker); a run held back there is rescheduled without using an attempt. After a failure the run decides its
own retry (``relay.queue.retry``) and RQ's scheduler carries it out; a run out of attempts or age ends in RQ's
failed registry: the dead letters dashboards show. Every step is appended to the run's history.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from types import TracebackType
from typing import Any

from redis import Redis
from redis.client import Pipeline
from redis.exceptions import RedisError
from rq import get_current_job
from rq.exceptions import AbandonedJobError
from rq.job import Job

from relay import keys
from relay.errors import (
    DeadLetterError,
    DeliveryPaused,
    MappingError,
    RunnerError,
    RunnerRejected,
    RunnerUnreachable,
    SettingsError,
)
from relay.infra.logs import bind
from relay.infra.metrics import DeadLetterReason, RelayMetrics
from relay.queue import records as outcome
from relay.queue.jobs import DELIVER_FUNC, job_id_for
from relay.queue.records import RunOutcome, RunStatus, Step
from relay.queue.retry import GiveUp, RetryPolicy, next_attempt
from relay.runner.breaker import BreakerState
from relay.runner.client import RunResult
from relay.settings import PlivoAccount, Settings
from relay.worker.loop import WorkerContext, current_context

log = logging.getLogger(__name__)


def _admit(context: WorkerContext, account: str, credentials: PlivoAccount, state: BreakerState) -> bool:
    """Wait for the account's turn, or raise DeliveryPaused when the breaker is open or the wait too long.

    ``state`` is what the breaker's ``allow()`` answered. True when this run is the breaker's probe.
    """
    if state.state == "open":
        delay_s = max((state.retry_at or time.time()) - time.time(), 0.0)
        raise DeliveryPaused(f"circuit breaker of account {account!r} is open", delay_s + 1)
    if state.state == "half_open":
        context.metrics.breaker_transitions.labels(account, "half_open").inc()
    settings = context.settings
    # The wait must leave the request its whole connect and read time within the job's timeout.
    max_wait_s = (
        settings.job_timeout_s - settings.runner_connect_timeout_s - settings.runner_read_timeout_s - 2
    )
    waited_s = context.rate_limit(account, credentials).wait_turn(max_wait_s=max(max_wait_s, 0.0))
    if waited_s is None:
        context.metrics.rate_limit_waits.labels(account, "rescheduled").inc()
        raise DeliveryPaused(f"rate limit of account {account!r} is taken for the next {max_wait_s:.0f} s", 1)
    if waited_s > 0:
        context.metrics.rate_limit_waits.labels(account, "waited").inc()
        context.metrics.rate_limit_wait.labels(account).observe(waited_s)
    return state.state == "half_open"


@dataclass
class _Delivery:
    """One run's outcome record and RQ job while a worker delivers it."""

    redis: Redis
    settings: Settings
    metrics: RelayMetrics
    event_id: str
    job: Job | None
    policy: RetryPolicy
    run: RunOutcome

    def save(self, step: Step | None = None, pipe: Pipeline | None = None, **changes: Any) -> None:
        """Record the run with ``changes`` (and ``step`` in its history), now or queued on ``pipe``."""
        if step is not None:
            changes["history"] = self.run.with_step(step)
        self.run = outcome.save_run(
            pipe if pipe is not None else self.redis,
            self.event_id,
            self.run,
            self.settings.outcome_ttl_s,
            **changes,
        )

    def _schedule(self, delay_s: float | None) -> None:
        """Tell RQ what to do once the job raises: retry in ``delay_s``, or (None) fail it for good."""
        if self.job is None:
            return
        if delay_s is None:
            self.job.retries_left = 0
        else:
            self.job.retries_left = max(
                self.policy.attempts - self.run.attempts + self.policy.attempts_before, 1
            )
            # RQ schedules in whole seconds, rounding the due time down: one more second keeps a retry
            # from ever coming sooner than asked (Retry-After is a floor).
            self.job.retry_intervals = [math.ceil(delay_s) + 1 if delay_s > 0 else 0]

    def pause(self, pause: DeliveryPaused) -> None:
        now = time.time()
        if now + pause.delay_s > self.policy.deadline_at:
            self.give_up(f"{pause.reason}, and its maximum age would pass first", DeadLetterReason.MAX_AGE)
            return
        self._schedule(pause.delay_s)
        self.metrics.runs.labels(self.run.route, "waiting").inc()
        step = Step(at=now, status=RunStatus.WAITING, note=pause.reason, retry_in_s=round(pause.delay_s, 1))
        self.save(step, status=RunStatus.WAITING, next_attempt_at=now + pause.delay_s)
        log.info(
            "run %s waiting %.1f s: %s",
            self.run.job_id,
            pause.delay_s,
            pause.reason,
            extra={"outcome": RunStatus.WAITING.value, "retry_in_s": round(pause.delay_s, 1)},
        )

    def give_up(self, reason: str, why: DeadLetterReason, **changes: Any) -> None:
        """Dead-letter the run: ``reason`` is its error, ``why`` the metrics' label."""
        self._schedule(None)
        self.metrics.runs.labels(self.run.route, "dead_lettered").inc()
        self.metrics.dead_letters.labels(self.run.route, why).inc()
        step = Step(at=time.time(), status=RunStatus.DEAD_LETTERED, attempt=self.run.attempts, error=reason)
        self.save(step, status=RunStatus.DEAD_LETTERED, last_error=reason, next_attempt_at=None, **changes)
        log.warning(
            "run %s dead-lettered: %s",
            self.run.job_id,
            reason,
            extra={"outcome": RunStatus.DEAD_LETTERED.value, "attempt": self.run.attempts},
        )

    def start(self) -> None:
        self.save(status=RunStatus.RUNNING, attempts=self.run.attempts + 1, next_attempt_at=None)

    def failed(
        self,
        error: str,
        *,
        permanent: bool,
        http_status: int | None,
        retry_after_s: float | None,
        ambiguous: bool,
    ) -> None:
        """Record a failed attempt; schedule the retry, or dead-letter the run."""
        now = time.time()
        decision = next_attempt(self.policy, self.run.attempts, now, retry_after_s, permanent=permanent)
        if isinstance(decision, GiveUp):
            reason = f"{error} ({decision.why})"
            self.give_up(reason, decision.reason, http_status=http_status, ambiguous=ambiguous)
            return
        delay_s = decision.delay_s
        self._schedule(delay_s)
        self.metrics.runs.labels(self.run.route, "retried").inc()
        retry_reason = f"http_{http_status}" if http_status else "timeout" if ambiguous else "unreachable"
        self.metrics.retries.labels(self.run.route, retry_reason).inc()
        step = Step(
            at=now,
            status=RunStatus.FAILED,
            attempt=self.run.attempts,
            http_status=http_status,
            error=error,
            retry_in_s=round(delay_s, 1),
        )
        self.save(step, status=RunStatus.FAILED, last_error=error, http_status=http_status,
                  next_attempt_at=now + delay_s, ambiguous=ambiguous)  # fmt: skip
        log.info(
            "run %s attempt %d failed, retry in %.1f s: %s",
            self.run.job_id,
            self.run.attempts,
            delay_s,
            error,
            extra={
                "outcome": RunStatus.FAILED.value,
                "attempt": self.run.attempts,
                "retry_in_s": round(delay_s, 1),
            },
        )

    def interrupted(self, reason: str) -> None:
        """The attempt was cut short (shutdown, crash, timeout) while its request may have been out.

        It is tried again at once, even after its last attempt: once, so that a run which keeps killing
        its worker still ends as a dead letter.
        """
        now = time.time()
        made = self.run.attempts - self.policy.attempts_before
        if made > self.policy.attempts or now > self.policy.deadline_at:
            self.give_up(f"{reason}; no attempts left", DeadLetterReason.INTERRUPTED, ambiguous=True)
            return
        self._schedule(0)
        self.metrics.runs.labels(self.run.route, "retried").inc()
        self.metrics.retries.labels(self.run.route, "interrupted").inc()
        step = Step(at=now, status=RunStatus.FAILED, attempt=self.run.attempts, error=reason, retry_in_s=0)
        self.save(step, status=RunStatus.FAILED, last_error=reason, ambiguous=True, next_attempt_at=now)
        log.warning(
            "run %s attempt %d %s; retried at once",
            self.run.job_id,
            self.run.attempts,
            reason,
            extra={"outcome": RunStatus.FAILED.value, "attempt": self.run.attempts, "retry_in_s": 0},
        )

    def succeeded(self, result: RunResult, pipe: Pipeline) -> None:
        """Queue the run's success on ``pipe``."""
        self.metrics.runs.labels(self.run.route, "succeeded").inc()
        if self.job is not None and self.job.created_at is not None:  # the ingress made the job
            self.metrics.end_to_end.labels(self.run.route).observe(
                max(0.0, time.time() - self.job.created_at.timestamp())
            )
        step = Step(
            at=time.time(), status=RunStatus.SUCCEEDED, attempt=self.run.attempts, http_status=result.status
        )
        self.save(
            step,
            pipe,
            status=RunStatus.SUCCEEDED,
            phlo_run_id=result.phlo_run_id,
            message=result.message,
            http_status=result.status,
            elapsed_ms=round(result.elapsed_ms, 1),
            last_error=None,
        )


def deliver(
    event_id: str,
    route: str,
    phlo_id: str,
    account: str,
    payload: dict[str, Any],
    policy: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """RQ job: run one PHLO and record the outcome. Raises (so RQ retries or dead-letters) on failure."""
    context = current_context()
    settings = context.settings
    job = get_current_job()
    job_id = job.id if job is not None else job_id_for(event_id, route)
    breaker = context.breaker(account)
    # One round trip for the run's record and the breaker's answer; the breaker's probe, if it was taken
    # for a run that then does not go, comes back when its token expires.
    with context.redis.pipeline(transaction=False) as pipe:
        pipe.hget(keys.event_key(event_id), keys.run_field(job_id))
        breaker.queue_allow(pipe)
        raw_run, allow_reply = pipe.execute()
    run = (
        RunOutcome.model_validate_json(raw_run)
        if raw_run
        else RunOutcome(job_id=job_id, route=route, phlo_id=phlo_id, account=account, status=RunStatus.QUEUED)
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
    delivery = _Delivery(
        context.redis, settings, context.metrics, event_id, job, RetryPolicy.of_job(policy, settings), run
    )
    credentials = settings.account(account)
    if credentials is None:
        delivery.give_up(f"no credentials for Plivo account {account!r}", DeadLetterReason.CREDENTIALS)
        raise SettingsError(f"no credentials for Plivo account {account!r}")
    try:
        probe = _admit(context, account, credentials, breaker.allowed(allow_reply))
    except DeliveryPaused as pause:
        delivery.pause(pause)
        raise
    delivery.start()
    started = time.perf_counter()
    try:
        result = context.runner.run(credentials, phlo_id, payload)
    except RunnerError as exc:
        context.metrics.runner_latency.labels(account, _answer_class(exc)).observe(
            time.perf_counter() - started
        )
        _record_failure(context, delivery, account, exc)
        raise
    except BaseException as exc:
        # A cold shutdown (SystemExit) or RQ's job timeout while the request was out: the PHLO may have run.
        delivery.interrupted(f"interrupted mid-run ({type(exc).__name__})")
        raise
    context.metrics.runner_latency.labels(account, "2xx").observe(time.perf_counter() - started)
    if probe:
        context.metrics.breaker_transitions.labels(account, "closed").inc()
    try:
        with context.redis.pipeline(transaction=True) as pipe:  # the breaker's news and the run's, at once
            breaker.record_success(pipe)
            delivery.succeeded(result, pipe)
            pipe.execute()
    except RedisError:
        # The PHLO has run: raising would make RQ retry it and run it twice. RQ keeps the job's result.
        log.exception(
            "run %s succeeded (PHLO run %s) but its outcome was not recorded", job_id, result.phlo_run_id
        )
    log.info(
        "run %s succeeded: PHLO run %s",
        job_id,
        result.phlo_run_id,
        extra={
            "outcome": RunStatus.SUCCEEDED.value,
            "attempt": delivery.run.attempts,
            "phlo_run_id": result.phlo_run_id,
        },
    )
    return {"phlo_run_id": result.phlo_run_id, "message": result.message, "status": result.status}


def _answer_class(exc: RunnerError) -> str:
    """The runner latency histogram's label for a failed request."""
    if isinstance(exc, RunnerRejected):
        return f"{exc.status // 100}xx"
    return "timeout" if isinstance(exc, RunnerUnreachable) and exc.ambiguous else "unreachable"


def _record_failure(context: WorkerContext, delivery: _Delivery, account: str, exc: RunnerError) -> None:
    breaker = context.breaker(account)
    if exc.permanent:
        breaker.record_success()  # the runner answered: it is up, the request was wrong
    elif breaker.record_failure().state == "open":
        context.metrics.breaker_transitions.labels(account, "open").inc()
    rejected = exc if isinstance(exc, RunnerRejected) else None
    delivery.failed(
        str(exc),
        permanent=exc.permanent,
        http_status=rejected.status if rejected else None,
        retry_after_s=rejected.retry_after_s if rejected else None,
        # Once an attempt may have run the PHLO, the run stays marked: a retry may have run it twice.
        ambiguous=delivery.run.ambiguous or (isinstance(exc, RunnerUnreachable) and exc.ambiguous),
    )


def on_failure(
    job: Job, connection: Redis, exc_type: type[BaseException], exc: BaseException, tb: TracebackType | None
) -> None:
    """RQ failure callback: records a run whose worker died mid-job; RQ then retries it at once."""
    if not issubclass(exc_type, AbandonedJobError) or job.func_name != DELIVER_FUNC:
        return  # deliver() recorded everything else itself
    event_id = str(job.kwargs["event_id"])
    run = outcome.read_run(connection, event_id, job.id)
    if run is None:
        return
    context = current_context()
    policy = RetryPolicy.of_job(job.kwargs.get("policy"), context.settings)
    delivery = _Delivery(connection, context.settings, context.metrics, event_id, job, policy, run)
    if run.status is RunStatus.RUNNING:  # it died with the request possibly out
        with bind(job_id=job.id, event_id=event_id, route=run.route, source=job.meta.get("source")):
            delivery.interrupted("the worker died mid-run")


def unmappable(event_id: str, route: str, reason: str) -> None:
    """RQ job of a route that could not be mapped: it stays dead-lettered until replayed after a fix."""
    raise MappingError(route, f"{reason} (event {event_id}; fix the config, then replay)")
