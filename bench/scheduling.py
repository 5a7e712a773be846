"""Benchmark 6, scheduling: how late due retries go out when a worker is SIGKILLed while they wait.

Before ``relay.queue.due``, RQ's scheduler moved due retries to the queue from the one worker holding RQ's
scheduler lock; SIGKILL of that worker left them waiting 63 s (issue 14, three workers, the runner
answering 500 to every first attempt, retries asked for 2 s later). That design is gone from the code, so
it cannot be measured beside this one: its figure is quoted, not re-measured. Now every worker refreshes
the lock key (``rq:scheduler-lock:<queue>``) under the name ``relay-due-promoter`` and moves due runs
itself; "the worker holding it" is any of them.

The run: three separate ``relay worker`` processes (each in a session of its own, default concurrency),
the rate limit and the circuit breaker lifted out of the way, the sandbox answering the next N run
requests 500 with ``Retry-After: 5``. N runs are queued through ``relay serve``: every first attempt fails,
and each retry is due after the backoff's full jitter over ``RELAY_RETRY_BASE_DELAY_S=16`` with the
Retry-After as its floor: spread from 5 to 16 s after the failure, none before every first attempt is
done. Eight seconds after the queue was filled, with about half of the retries still waiting, one worker
is SIGKILLed (the benchmark first checks that the lock key names the relay's promoter). Each run's due
time is its history's failed step, ``at + retry_in_s`` (rounded to 0.1 s by the record); its lateness is
the sandbox's ``received_at`` of its second request minus that. Runs the kill cut short mid-attempt are
recovered by crash detection (~8 s heartbeat + 2 s maintenance) and counted apart; their lateness counts.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from rq.scheduler import RQScheduler

from bench.harness import BenchError, Figures, percentile, poll_until
from bench.load import queue_runs
from bench.signing import ROUTE
from bench.stack import LIFTED_RATE_LIMIT, RELAY_QUEUE, Settings, Stack
from relay.queue.due import PROMOTER_NAME
from relay.queue.records import RunOutcome, RunStatus, read_records

FAULT_STATUS = 500


@dataclass(frozen=True)
class SchedulingPlan:
    runs: int
    workers: int = 3
    retry_after_s: int = 5  # every first retry's floor: after all first attempts, which take ~1-2 s
    base_delay_s: float = 16.0  # the backoff's ceiling for the first retry: due times spread to here
    kill_after_s: float = 8.0  # after the queue was filled: about half of the retries are still waiting


@dataclass(frozen=True)
class Lateness:
    """One run's retry: when it was due, how late its request reached the runner, whether cut short."""

    due_at: float
    late_s: float
    cut_short: bool


def _settings(plan: SchedulingPlan) -> Settings:
    """Of the workers, and of the ingress, whose retry policy each run carries in its job."""
    return {
        "RELAY_RATE_LIMIT": LIFTED_RATE_LIMIT,
        "RELAY_BREAKER_FAILURES": 1_000_000,  # N failures in a row would open it and hold every run
        "RELAY_RETRY_BASE_DELAY_S": plan.base_delay_s,
    }


def lateness(run: RunOutcome, receipts: list[dict[str, Any]]) -> Lateness:
    """The lateness of a run's first retry from its record and the sandbox's receipts of its requests."""
    failed = [step for step in run.history if step.status is RunStatus.FAILED]
    first = next((step for step in failed if step.http_status == FAULT_STATUS), None)
    if first is None or first.retry_in_s is None:
        raise BenchError(f"run {run.job_id} has no failed first attempt in its history")
    ordered = sorted(receipts, key=lambda receipt: float(receipt["received_at"]))
    if len(ordered) < 2 or ordered[0]["status"] != FAULT_STATUS or ordered[1]["status"] == FAULT_STATUS:
        statuses = [receipt["status"] for receipt in ordered]
        raise BenchError(
            f"run {run.job_id}: requests answered {statuses}, not a {FAULT_STATUS} then a retry; a retry "
            "met a fault meant for a first attempt (raise the Retry-After floor)"
        )
    due_at = first.at + first.retry_in_s
    cut_short = any(step.retry_in_s == 0 for step in failed)  # an attempt interrupted by the kill
    return Lateness(due_at, float(ordered[1]["received_at"]) - due_at, cut_short)


def _check_lock(stack: Stack) -> None:
    """RQ's scheduler lock of the queue must name the relay's promoter (so a stock scheduler stays out)."""
    with stack.redis() as redis:
        holder = redis.get(RQScheduler.get_locking_key(RELAY_QUEUE))
    if holder != PROMOTER_NAME.encode():
        raise BenchError(f"RQ's scheduler lock is held by {holder!r}, not {PROMOTER_NAME!r}")


def _summary(late: list[Lateness], killed_at: float, runs: int, lost: int) -> Figures:
    after = [item.late_s for item in late if item.due_at >= killed_at]
    before = [item.late_s for item in late if item.due_at < killed_at]
    if not after or not before:
        raise BenchError(f"{len(before)} retries were due before the kill and {len(after)} after: adjust")
    every = [item.late_s for item in late]
    return Figures(
        values={
            "sched.max_s": max(every),
            "sched.p99_s": percentile(every, 99),
            "sched.after.max_s": max(after),
            "sched.after.p99_s": percentile(after, 99),
            "sched.after.count": float(len(after)),
            "sched.before.max_s": max(before),
            "sched.before.p99_s": percentile(before, 99),
            "sched.retries": float(len(every)),
            "sched.cut_short": float(sum(item.cut_short for item in late)),
            "sched.lost": float(lost),
            "sched.runs": float(runs),
        }
    )


def run_scheduling(stack: Stack, plan: SchedulingPlan) -> Figures:
    stack.flush()
    sandbox = stack.start_sandbox()
    workers = stack.start_workers(plan.workers, sandbox, pool=False, settings=_settings(plan))
    try:
        stack.wait_workers(plan.workers, workers)
        sandbox.fail_next(plan.runs, FAULT_STATUS, plan.retry_after_s)
        job_ids = queue_runs(stack, plan.runs, prefix="sched", settings=_settings(plan)).job_ids
        kill_at = time.monotonic() + plan.kill_after_s

        def kill_due() -> bool:
            for worker in workers:
                worker.require_alive()
            return time.monotonic() >= kill_at

        poll_until(kill_due, plan.kill_after_s + 5, "the moment of the kill")
        _check_lock(stack)
        victim, survivors = workers[0], workers[1:]
        killed_at = time.time()
        victim.kill()
        stack.wait_done(plan.runs, plan.base_delay_s + 60 + plan.runs / 20, survivors)
        receipts = sandbox.runs()
    finally:
        stack.stop(*workers, sandbox.service)
    by_ref: dict[str, list[dict[str, Any]]] = {}
    for receipt in receipts:
        by_ref.setdefault(receipt["body"]["ref"], []).append(receipt)
    late, lost = [], 0
    with stack.redis() as redis:
        for job_id in job_ids:
            # The relay's event id is its own; the payload's ref is the webhook's (the source's) event id.
            event, run = read_records(redis, job_id.removesuffix(f"-{ROUTE}"), job_id)
            if event is None or run is None or run.status is not RunStatus.SUCCEEDED:
                lost += 1
                continue
            late.append(lateness(run, by_ref.get(event.source_event_id or "", [])))
    return _summary(late, killed_at, plan.runs, lost)
