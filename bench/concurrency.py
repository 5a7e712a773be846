"""Benchmark 2, delivery at a runner latency: one ``relay worker`` process with its runs in flight, beside a
pool of processes holding one run each (the way before ``--concurrency``), in the same run.

Each case starts its workers, lets the sandbox answer every run after a fixed latency like a real PHLO
(whose answer waits on the PHLO's first nodes), keeps the default account rate limit (300 per 5 s), and
queues its runs through ``relay serve`` once the workers listen. Figures, per case:

- sustained runs/s from the sandbox's ``received_at`` over the steady part: from the later of "queue filled
  + 1 s" and "first receipt + 10 s" (past the limit's initial allowance) to the last receipt;
- the most receipts in any 5 s window (Plivo allows 300), over all receipts;
- the peak RSS and PSS summed over every process of the workers, sampled every 0.5 s throughout, and once
  idle (listening, before any run).

The relay's limiter keeps 300 per 5.2 s (its 0.2 s margin), so 57.7 runs/s is the most any case can sustain.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from bench.harness import BenchError, Figures, MemorySampler, max_in_window
from bench.load import queue_runs
from bench.stack import Sandbox, Stack
from relay.settings import Settings

DEFAULT_CONCURRENCY = int(Settings.model_fields["worker_concurrency"].default)
MIB = 1024
WINDOW_S = 5.0
STEADY_AFTER_FIRST_S = 10.0
STEADY_AFTER_FILL_S = 1.0


@dataclass(frozen=True)
class Case:
    """One way of running the workers at one runner latency; its figures are ``delivery.<key>.*``."""

    key: str
    latency_ms: float
    runs: int
    processes: int
    concurrency: int | None  # --concurrency of each process; None: the default (RELAY_WORKER_CONCURRENCY)
    pool_mode: bool = True  # several processes: `relay worker --processes K`, else K separate processes

    def describe(self) -> str:
        """The workers as a command line, for the document."""
        flag = "" if self.concurrency is None else f" --concurrency {self.concurrency}"
        if self.processes == 1:
            default = f" (default concurrency, {DEFAULT_CONCURRENCY})"
            return f"one `relay worker{flag}`" + ("" if flag else default)
        if self.pool_mode:
            return f"`relay worker --processes {self.processes}{flag}`"
        return f"{self.processes} separate `relay worker{flag}` processes"


def steady_rate(received_at: list[float], filled_at: float) -> tuple[float, float]:
    """Runs per second over the steady part (see the module docstring), and its length in seconds."""
    ordered = sorted(received_at)
    start = max(filled_at + STEADY_AFTER_FILL_S, ordered[0] + STEADY_AFTER_FIRST_S)
    steady = [moment for moment in ordered if moment >= start]
    if len(steady) < 2:
        raise BenchError("the run is too short for a steady part: queue more runs")
    span_s = steady[-1] - steady[0]
    return (len(steady) - 1) / span_s, span_s


def _timeout_s(case: Case) -> float:
    """How long its runs may take: at the slower of Plivo's limit and its slots' ceiling, halved, + 60 s."""
    slots = case.processes * (case.concurrency or DEFAULT_CONCURRENCY)
    ceiling_per_s = min(60.0, slots / (case.latency_ms / 1000))
    return case.runs / (ceiling_per_s / 2) + 60


def run_case(stack: Stack, sandbox: Sandbox, case: Case) -> Figures:
    """Measure one case (see the module docstring)."""
    stack.flush()
    sandbox.reset()
    sandbox.answer_after(case.latency_ms)
    workers = stack.start_workers(case.processes, sandbox, pool=case.pool_mode, concurrency=case.concurrency)
    try:
        stack.wait_workers(case.processes, workers)
        idle = MemorySampler(lambda: stack.worker_pids(workers))
        idle.sample()
        with MemorySampler(lambda: stack.worker_pids(workers)) as busy:
            queue_runs(stack, case.runs)
            filled_at = time.time()
            stack.wait_done(case.runs, _timeout_s(case), workers)
    finally:
        stack.stop(*workers)
    received = sandbox.runs()
    refs = {run["body"]["ref"] for run in received}
    refused = sum(run["status"] != 201 for run in received)
    if len(received) != case.runs or len(refs) != case.runs or refused:
        raise BenchError(
            f"{case.key}: {len(received)} receipts ({len(refs)} distinct, {refused} refused) "
            f"for {case.runs} runs"
        )
    times = [run["received_at"] for run in received]
    rate, span_s = steady_rate(times, filled_at)
    prefix = f"delivery.{case.key}"
    return Figures(
        values={
            f"{prefix}.rate": rate,
            f"{prefix}.steady_s": span_s,
            f"{prefix}.rate_overall": (len(times) - 1) / (max(times) - min(times)),
            f"{prefix}.max_5s": float(max_in_window(times, WINDOW_S)),
            f"{prefix}.rss_mib": busy.peak.rss_sum_kib / MIB,
            f"{prefix}.pss_mib": busy.peak.pss_sum_kib / MIB,
            f"{prefix}.processes": float(busy.peak.processes),
            f"{prefix}.idle_rss_mib": idle.peak.rss_sum_kib / MIB,
            f"{prefix}.idle_pss_mib": idle.peak.pss_sum_kib / MIB,
            f"{prefix}.process_idle_rss_mib": idle.peak.rss_max_process_kib / MIB,
            f"{prefix}.process_busy_rss_mib": busy.peak.rss_max_process_kib / MIB,
        }
    )


def compare(figures: Figures, one: str, pool: str) -> None:
    """The one process against the pool of the same latency, within one repetition."""
    values = figures.values
    measured, baseline = f"delivery.{one}", f"delivery.{pool}"
    if f"{measured}.rate" in values and f"{baseline}.rate" in values:
        values[f"{measured}.rate_ratio"] = values[f"{measured}.rate"] / values[f"{baseline}.rate"]
    if f"{measured}.rss_mib" in values and f"{baseline}.rss_mib" in values:
        values[f"{measured}.memory_less"] = values[f"{baseline}.rss_mib"] / values[f"{measured}.rss_mib"]
        values[f"{measured}.pss_less"] = values[f"{baseline}.pss_mib"] / values[f"{measured}.pss_mib"]
