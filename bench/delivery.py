"""Benchmark 2, delivery: runs per second of one worker process beside stock RQ, and at a runner latency
beside the pool of processes that held one run each before ``relay worker --concurrency``.

- ``rq``: a stock RQ ``SimpleWorker`` (``rq worker --burst -w rq.worker.SimpleWorker -S json``) on N
  pre-enqueued no-op jobs: the ceiling of RQ itself here.
- ``relay1``: one ``relay worker --burst`` (its default concurrency) on N real runs (queued through
  ``relay serve``), the sandbox answering at once and the rate limit lifted out of the way. Both rates are N
  divided by the span from the first job's start to the last job's end in RQ's own job records, so start-up
  is excluded for both alike.
- At 300 ms and 1,000 ms of runner latency, with the default rate limit (bench/concurrency.py): ``one300``
  and ``one1000``, one ``relay worker`` process at its default concurrency, beside ``pool300`` and
  ``pool1000``, K processes at ``--concurrency 1`` (the way before: one run per process).
"""

from __future__ import annotations

import io
import subprocess
import sys
import tarfile
from dataclasses import dataclass
from pathlib import Path

from rq import Queue
from rq.serializers import JSONSerializer

from bench.baselines import NOOP_FUNC, NOOP_QUEUE
from bench.concurrency import Case, compare, run_case
from bench.harness import BenchError, Figures
from bench.load import queue_runs
from bench.stack import LIFTED_RATE_LIMIT, Sandbox, Stack, job_span_s
from bench.stack import Settings as StackSettings

# main before issue 14: one run in flight per worker process. Its worker is the "before" of relay1, measured
# in the same run (machines differ several-fold: stock RQ ran 341 jobs/s on one, 69 on another).
BEFORE_COMMIT = "a2da1a1"
REPOSITORY = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class DeliveryPlan:
    jobs: int  # for rq and relay1
    runs: int  # for each case of one process, and the pool at 300 ms
    pool_runs_slow: int  # for the pool at 1,000 ms (20 runs/s: fewer runs for as long a steady part)
    pool_workers: int
    pool_mode: bool  # True: relay worker --processes K; False: K separate processes
    pool_at_slow: bool = True  # also measure the pool at 1,000 ms

    def cases(self) -> list[Case]:
        """In the order measured: each one process right before its baseline, on a machine as busy."""
        one300 = Case("one300", 300, self.runs, 1, None)
        pool300 = Case("pool300", 300, self.runs, self.pool_workers, 1, self.pool_mode)
        one1000 = Case("one1000", 1000, self.runs, 1, None)
        pool1000 = Case("pool1000", 1000, self.pool_runs_slow, self.pool_workers, 1, self.pool_mode)
        return [one300, pool300, one1000, *([pool1000] if self.pool_at_slow else [])]


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


def _before_package(stack: Stack) -> Path | None:
    """The ``relay`` package of BEFORE_COMMIT, extracted into the work directory; None without git history."""
    target = stack.work_dir / f"relay-{BEFORE_COMMIT}"
    if not (target / "relay").is_dir():
        command = ["git", "-C", str(REPOSITORY), "archive", BEFORE_COMMIT, "relay"]
        archive = subprocess.run(command, capture_output=True, check=False)
        if archive.returncode != 0:
            return None
        target.mkdir(parents=True, exist_ok=True)
        with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar:
            tar.extractall(target, filter="data")
    return target


def _relay_single(stack: Stack, sandbox: Sandbox, jobs: int, *, before: bool = False) -> float | None:
    """Runs per second of one ``relay worker`` (default concurrency) against a sandbox answering at once.

    ``before``: the worker of BEFORE_COMMIT instead (None when there is no git history to take it from).
    """
    stack.flush()
    sandbox.reset()
    job_ids = queue_runs(stack, jobs).job_ids
    settings: StackSettings = {"RELAY_RATE_LIMIT": LIFTED_RATE_LIMIT}
    if before:
        package = _before_package(stack)
        if package is None:
            return None
        env = {**stack.env(sandbox, settings), "PYTHONPATH": str(package)}
        worker = stack.start("worker-before", [sys.executable, "-m", "relay", "worker", "--burst"], env)
    else:
        [worker] = stack.start_workers(1, sandbox, pool=False, burst=True, settings=settings)
    worker.wait_exit(timeout_s=60 + jobs / 10)
    stack.stop(worker)
    received = sandbox.runs()
    if len(received) != jobs or any(run["status"] != 201 for run in received):
        raise BenchError(f"the sandbox received {len(received)} runs for {jobs} jobs, or refused some")
    with stack.redis() as redis:
        return jobs / job_span_s(redis, job_ids)


def run_delivery(stack: Stack, plan: DeliveryPlan) -> Figures:
    figures = Figures()
    rq_rate = _rq_noop(stack, plan.jobs)
    sandbox = stack.start_sandbox()
    try:
        before_rate = _relay_single(stack, sandbox, plan.jobs, before=True)
        relay_rate = _relay_single(stack, sandbox, plan.jobs)
        assert relay_rate is not None
        for case in plan.cases():
            figures.merge(run_case(stack, sandbox, case))
    finally:
        stack.stop(sandbox.service)
    compare(figures, "one300", "pool300")
    compare(figures, "one1000", "pool1000")
    values = figures.values
    values["delivery.rq.rate"] = rq_rate
    values["delivery.relay1.rate"] = relay_rate
    values["delivery.relay1.ratio"] = relay_rate / rq_rate
    if before_rate is not None:
        values["delivery.before.rate"] = before_rate
        values["delivery.relay1.before_ratio"] = relay_rate / before_rate
    values["worker.idle_rss_mib"] = values["delivery.one300.process_idle_rss_mib"]
    values["worker.busy_rss_mib"] = values["delivery.one300.process_busy_rss_mib"]
    return figures
