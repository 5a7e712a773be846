"""The record-keeper of a run while a worker has it: one method per transition of the run.

Each transition (waiting, failed and retried, interrupted, dead-lettered, succeeded) is counted, noted in
the run's history, saved and logged through one path, so that the metrics, the history, the record and the
log line of a run always tell the same story. Each also tells RQ what to do once the job raises: retry it
after a delay, or fail it for good (a dead letter).
"""

from __future__ import annotations

import logging
import math
import threading
import time
from dataclasses import dataclass
from typing import Any

from redis import Redis
from redis.client import Pipeline
from rq.job import Job

from relay.errors import DeliveryPaused
from relay.infra.metrics import DeadLetterReason, RelayMetrics
from relay.queue import records, stats
from relay.queue.pause import Scope
from relay.queue.records import Collision, RunOutcome, RunStatus, Step
from relay.queue.retry import GiveUp, RetryPolicy, next_attempt
from relay.runner.client import RunResult
from relay.settings import Settings
from relay.worker.rq_worker import RelayJob

# A run's lines keep the logger name of its job (relay.worker.job), which log queries select on.
log = logging.getLogger("relay.worker.job")
# The relay_runs label of each transition.
_RUNS_OUTCOME = {
    RunStatus.WAITING: "waiting",
    RunStatus.PAUSED: "held",
    RunStatus.FAILED: "retried",
    RunStatus.DEAD_LETTERED: "dead_lettered",
    RunStatus.SUCCEEDED: "succeeded",
    RunStatus.HELD: "held",
    RunStatus.EXPIRED: "expired",
    RunStatus.SUPPRESSED: "suppressed",
}
# The console's counts (relay.queue.stats) of each transition that ends an attempt.
_STATS_OUTCOME = {
    RunStatus.FAILED: "failed",
    RunStatus.DEAD_LETTERED: "dead_lettered",
    RunStatus.SUCCEEDED: "succeeded",
}


@dataclass
class RunKeeper:
    """One run's outcome record and RQ job while a worker delivers it."""

    redis: Redis
    settings: Settings
    metrics: RelayMetrics
    event_id: str
    job: Job | None
    policy: RetryPolicy
    run: RunOutcome
    # Set once its worker gave up on this attempt and requeued the run: then only a success is recorded.
    abandoned: threading.Event | None = None
    attempt_begun: bool = False  # start() was called in this delivery

    def start(self) -> None:
        """An attempt begins (not a step of its own: the attempt's end is)."""
        self.attempt_begun = True
        self._save(status=RunStatus.RUNNING, attempts=self.run.attempts + 1, next_attempt_at=None)

    def pause(self, pause: DeliveryPaused) -> None:
        """Hold the run back without an attempt (breaker open, rate limit), or dead-letter it past its age.

        An attempt that had begun (its turn reserved, then lost by waking too late) is taken back.
        """
        if self.attempt_begun:
            self.attempt_begun = False
            self.run = self.run.model_copy(update={"attempts": self.run.attempts - 1})
        now = time.time()
        if now + pause.delay_s > self.policy.deadline_at:
            self.give_up(f"{pause.reason}, and its maximum age would pass first", DeadLetterReason.MAX_AGE)
            return
        self._schedule(pause.delay_s)
        step = Step(at=now, status=RunStatus.WAITING, note=pause.reason, retry_in_s=round(pause.delay_s, 1))
        self._record(step, "run %s waiting %.1f s: %s", pause.delay_s, pause.reason,
                     next_attempt_at=now + pause.delay_s)  # fmt: skip

    def hold(self, scope: Scope) -> None:
        """Park the run, unattempted, until its paused route, account or source is resumed."""
        reason = f"{scope.kind} {scope.name!r} is paused"
        self._schedule(0)
        if isinstance(self.job, RelayJob):
            self.job.held_by = scope  # its job's retry parks it (RelayJob.retry)
        step = Step(at=time.time(), status=RunStatus.PAUSED, note=reason)
        self._record(step, "run %s held: %s", reason, next_attempt_at=None)

    def hold_until(self, release_at: float, delay_s: float, reason: str, **changes: Any) -> None:
        """Hold the run, unattempted, in RQ's scheduled registry until ``release_at`` (``Settings.now``)."""
        self._schedule(max(delay_s, 1.0))
        if isinstance(self.job, RelayJob):
            self.job.due_at = release_at  # the promoter goes by the same clock
        step = Step(at=time.time(), status=RunStatus.HELD, note=reason, retry_in_s=round(delay_s, 1))
        self._record(step, "run %s held: %s", reason, next_attempt_at=release_at, **changes)

    def expire(self, reason: str) -> None:
        """End the run unsent and not dead-lettered: its job finishes (``past_max_age: expire``)."""
        step = Step(at=time.time(), status=RunStatus.EXPIRED, note=reason)
        self._record(step, "run %s expired: %s", reason, next_attempt_at=None)

    def suppress(self, collision: Collision) -> None:
        """Record the run as over a frequency cap: not sent, and its job ends (finished) without a retry."""
        self.metrics.runs_suppressed.labels(self.run.route).inc()
        reason = (
            f"over the {collision.kind} {collision.name!r} cap of {collision.max} per {collision.per_s} s "
            f"for this recipient: earlier run {collision.job_id}"
        )
        step = Step(at=time.time(), status=RunStatus.SUPPRESSED, note=reason)
        self._record(step, "run %s suppressed: %s", reason, collided_with=collision, next_attempt_at=None,
                     log_fields={"collided_with": collision.job_id})  # fmt: skip

    def requeue(self, delay_s: float) -> None:
        """Send the run back to the queue in ``delay_s``, without an attempt, and without a history step."""
        self._schedule(delay_s)

    def give_up(self, reason: str, why: DeadLetterReason, **changes: Any) -> None:
        """Dead-letter the run: ``reason`` is its error, ``why`` the metrics' label."""
        self._schedule(None)
        self.metrics.dead_letters.labels(self.run.route, why).inc()
        step = Step(at=time.time(), status=RunStatus.DEAD_LETTERED, attempt=self.run.attempts, error=reason)
        self._record(step, "run %s dead-lettered: %s", reason, level=logging.WARNING,
                     last_error=reason, next_attempt_at=None, **changes)  # fmt: skip

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
        retry_reason = f"http_{http_status}" if http_status else "timeout" if ambiguous else "unreachable"
        self.metrics.retries.labels(self.run.route, retry_reason).inc()
        step = Step(at=now, status=RunStatus.FAILED, attempt=self.run.attempts, http_status=http_status,
                    error=error, retry_in_s=round(delay_s, 1))  # fmt: skip
        self._record(step, "run %s attempt %d failed, retry in %.1f s: %s", self.run.attempts, delay_s, error,
                     last_error=error, http_status=http_status, next_attempt_at=now + delay_s,
                     ambiguous=ambiguous)  # fmt: skip

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
        self.metrics.retries.labels(self.run.route, "interrupted").inc()
        step = Step(at=now, status=RunStatus.FAILED, attempt=self.run.attempts, error=reason, retry_in_s=0)
        self._record(step, "run %s attempt %d %s; retried at once", self.run.attempts, reason,
                     level=logging.WARNING, last_error=reason, ambiguous=True,
                     next_attempt_at=now)  # fmt: skip

    def succeeded(self, result: RunResult, pipe: Pipeline) -> None:
        """Queue the run's success on ``pipe``, for its caller to execute with the breaker's news."""
        if self.job is not None and self.job.created_at is not None:  # the ingress made the job
            self.metrics.end_to_end.labels(self.run.route).observe(
                max(0.0, time.time() - self.job.created_at.timestamp())
            )
        step = Step(
            at=time.time(), status=RunStatus.SUCCEEDED, attempt=self.run.attempts, http_status=result.status
        )
        self._record(
            step,
            "run %s succeeded: PHLO run %s",
            result.phlo_run_id,
            pipe=pipe,
            log_fields={"phlo_run_id": result.phlo_run_id},
            phlo_run_id=result.phlo_run_id,
            message=result.message,
            http_status=result.status,
            elapsed_ms=round(result.elapsed_ms, 1),
            last_error=None,
        )

    def _record(
        self,
        step: Step,
        line: str,
        *args: Any,
        level: int = logging.INFO,
        pipe: Pipeline | None = None,
        log_fields: dict[str, Any] | None = None,
        **changes: Any,
    ) -> None:
        """The one path of every transition: count it, save the run with ``step`` in its history, log it.

        ``line`` is logged with the run's job id and ``args``, and the step's outcome, attempt and retry
        delay as fields.
        """
        if self.abandoned is not None and self.abandoned.is_set():
            # Its worker recorded it interrupted and requeued it; a newer attempt may be writing. Only a
            # success is news then (the PHLO ran): added to the record as it is now, which may hold a
            # retry's steps, and marked ambiguous, since that retry may have run it too.
            if step.status is not RunStatus.SUCCEEDED:
                log.warning("run %s: late %s of an abandoned attempt ignored", self.run.job_id, step.status)
                return
            self.run = records.read_run(self.redis, self.event_id, self.run.job_id) or self.run
            changes["ambiguous"] = True
        self.metrics.runs.labels(self.run.route, _RUNS_OUTCOME[step.status]).inc()
        counted = _STATS_OUTCOME.get(step.status)
        if counted is None:
            self._save(step, pipe, status=step.status, **changes)
        else:  # with the console's count, in the same round trip
            own = pipe if pipe is not None else self.redis.pipeline(transaction=True)
            self._save(step, own, status=step.status, **changes)
            stats.count_run(own, self.run.route, counted, step.at, step.error)
            if pipe is None:
                own.execute()
        fields = {"attempt": step.attempt, "retry_in_s": step.retry_in_s}
        extra = {
            "outcome": step.status.value,
            **{name: value for name, value in fields.items() if value is not None},
            **(log_fields or {}),
        }
        log.log(level, line, self.run.job_id, *args, extra=extra)

    def _save(self, step: Step | None = None, pipe: Pipeline | None = None, **changes: Any) -> None:
        """Record the run with ``changes`` (and ``step`` in its history), now or queued on ``pipe``."""
        where = pipe if pipe is not None else self.redis
        ttl_s = self.settings.outcome_ttl_s
        if step is None:
            self.run = records.save_run(where, self.event_id, self.run, ttl_s, **changes)
        else:
            self.run = records.append_step(where, self.event_id, self.run, step, ttl_s, **changes)

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
            if delay_s <= 0:
                self.job.retry_intervals = [0]  # RQ queues it again at once
            elif isinstance(self.job, RelayJob):
                self.job.retry_intervals = [math.ceil(delay_s)]
                self.job.due_at = time.time() + delay_s  # its exact score in RQ's scheduled registry
            else:
                # RQ schedules in whole seconds, rounding the due time down: one more second keeps a
                # retry from ever coming sooner than asked (Retry-After is a floor).
                self.job.retry_intervals = [math.ceil(delay_s) + 1]
