"""Benchmark 2, delivery: runs per second of the workers, beside stock RQ, and the pool at Plivo's limit.

- ``rq``: a stock RQ ``SimpleWorker`` (``rq worker --burst -w rq.worker.SimpleWorker -S json``) on N
  pre-enqueued no-op jobs: the ceiling of RQ itself here.
- ``relay1``: one ``relay worker --burst`` on N real runs (queued through ``relay serve``), the sandbox
  answering at once and the rate limit lifted out of the way. Both rates are N divided by the span from the
  first job's start to the last job's end in RQ's own job records, so start-up is excluded for both alike.
- ``pool``: K workers (``relay worker --processes K``, or K separate ``relay worker`` processes), the sandbox
  answering every run after 300 ms like a real PHLO, the default rate limit (300 per 5 s). The rate is taken
  from the sandbox's ``received_at`` over the steady part: from the later of "queue filled + 1 s" and
  "first receipt + 10 s" (past the limit's initial allowance) to the last receipt. Also the most receipts in
  any 5-second window, and the RSS and PSS of every worker process, sampled throughout.
"""

from __future__ import annotations

import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from rq import Queue
from rq.serializers import JSONSerializer

from bench.baselines import NOOP_FUNC, NOOP_QUEUE
from bench.harness import BenchError, Figures, MemorySampler, max_in_window
from bench.load import post_each
from bench.signing import signed_requests
from bench.stack import LIFTED_RATE_LIMIT, Sandbox, Stack, job_span_s

MIB = 1024
RUNNER_LATENCY_MS = 300
WINDOW_S = 5.0
STEADY_AFTER_FIRST_S = 10.0
STEADY_AFTER_FILL_S = 1.0


@dataclass(frozen=True)
class DeliveryPlan:
    jobs: int  # for rq and relay1
    pool_runs: int
    pool_workers: int
    pool_mode: bool  # True: relay worker --processes K; False: K separate processes


def _rq_noop(stack: Stack, jobs: int) -> float:
    """Runs per second of a stock RQ SimpleWorker on ``jobs`` no-op jobs."""
    stack.flush()
    with stack.redis() as redis:
        queue = Queue(NOOP_QUEUE, connection=redis, serializer=JSONSerializer)
        prepared = [Queue.prepare_data(NOOP_FUNC, kwargs={"number": n}) for n in range(jobs)]
        job_ids = [job.id for job in queue.enqueue_many(prepared)]
        rq = str(Path(sys.executable).with_name("rq"))
        command = [rq, "worker", "--burst", "-w", "rq.worker.SimpleWorker", "-S", "json"]
        command += ["-u", stack.redis_server.url, "--logging_level", "WARNING", NOOP_QUEUE]
        worker = stack.start("rq-simpleworker", command, stack.env())
        worker.wait_exit(timeout_s=60 + jobs / 20)
        stack.stop(worker)
        return jobs / job_span_s(redis, job_ids)


def _queue_runs(stack: Stack, sandbox: Sandbox, runs: int) -> list[str]:
    """Queue ``runs`` real runs through ``relay serve``; their job ids."""
    ingress, url = stack.start_ingress()
    try:
        sent = post_each(url, list(signed_requests(stack.secret, f"dlv-{uuid.uuid4().hex[:12]}", runs)))
    finally:
        stack.stop(ingress)
    sent.require_all_accepted(runs)
    return sent.job_ids


def _relay_single(stack: Stack, sandbox: Sandbox, jobs: int) -> float:
    """Runs per second of one ``relay worker`` against a sandbox answering at once."""
    stack.flush()
    sandbox.reset()
    job_ids = _queue_runs(stack, sandbox, jobs)
    [worker] = stack.start_workers(
        1, sandbox, pool=False, burst=True, settings={"RELAY_RATE_LIMIT": LIFTED_RATE_LIMIT}
    )
    worker.wait_exit(timeout_s=60 + jobs / 10)
    stack.stop(worker)
    received = sandbox.runs()
    if len(received) != jobs or any(run["status"] != 201 for run in received):
        raise BenchError(f"the sandbox received {len(received)} runs for {jobs} jobs, or refused some")
    with stack.redis() as redis:
        return jobs / job_span_s(redis, job_ids)


def steady_rate(received_at: list[float], filled_at: float) -> tuple[float, float]:
    """Runs per second over the steady part (see the module docstring), and its length in seconds."""
    ordered = sorted(received_at)
    start = max(filled_at + STEADY_AFTER_FILL_S, ordered[0] + STEADY_AFTER_FIRST_S)
    steady = [moment for moment in ordered if moment >= start]
    if len(steady) < 2:
        raise BenchError("the run is too short for a steady part: queue more runs")
    span_s = steady[-1] - steady[0]
    return (len(steady) - 1) / span_s, span_s


def _pool(stack: Stack, sandbox: Sandbox, plan: DeliveryPlan) -> Figures:
    stack.flush()
    sandbox.reset()
    sandbox.answer_after(RUNNER_LATENCY_MS)
    workers = stack.start_workers(plan.pool_workers, sandbox, pool=plan.pool_mode)
    try:
        stack.wait_workers(plan.pool_workers, workers)
        idle = MemorySampler(lambda: stack.worker_pids(workers))
        idle.sample()
        with MemorySampler(lambda: stack.worker_pids(workers)) as busy:
            _queue_runs(stack, sandbox, plan.pool_runs)
            filled_at = time.time()
            # At Plivo's 60 runs/s, plus a margin for a slow machine.
            stack.wait_done(plan.pool_runs, plan.pool_runs / 20 + 60, workers)
    finally:
        stack.stop(*workers)
    received = sandbox.runs()
    refs = {run["body"]["ref"] for run in received}
    if len(received) != plan.pool_runs or len(refs) != plan.pool_runs:
        raise BenchError(f"{len(received)} receipts ({len(refs)} distinct) for {plan.pool_runs} runs")
    times = [run["received_at"] for run in received]
    rate, span_s = steady_rate(times, filled_at)
    return Figures(
        values={
            "delivery.pool.rate": rate,
            "delivery.pool.steady_s": span_s,
            "delivery.pool.rate_overall": (len(times) - 1) / (max(times) - min(times)),
            "delivery.pool.max_5s": float(max_in_window(times, WINDOW_S)),
            "delivery.pool.rss_mib": busy.peak.rss_sum_kib / MIB,
            "delivery.pool.pss_mib": busy.peak.pss_sum_kib / MIB,
            "delivery.pool.processes": float(busy.peak.processes),
            "delivery.pool.idle_rss_mib": idle.peak.rss_sum_kib / MIB,
            "delivery.pool.idle_pss_mib": idle.peak.pss_sum_kib / MIB,
            "worker.idle_rss_mib": idle.peak.rss_max_process_kib / MIB,
            "worker.busy_rss_mib": busy.peak.rss_max_process_kib / MIB,
        }
    )


def run_delivery(stack: Stack, plan: DeliveryPlan) -> Figures:
    figures = Figures()
    rq_rate = _rq_noop(stack, plan.jobs)
    sandbox = stack.start_sandbox()
    try:
        relay_rate = _relay_single(stack, sandbox, plan.jobs)
        figures.merge(_pool(stack, sandbox, plan))
    finally:
        stack.stop(sandbox.service)
    figures.values["delivery.rq.rate"] = rq_rate
    figures.values["delivery.relay1.rate"] = relay_rate
    figures.values["delivery.relay1.ratio"] = relay_rate / rq_rate
    return figures
