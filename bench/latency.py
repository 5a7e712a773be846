"""Benchmark 3, latency: from a webhook's arrival to the runner receiving its run, at 50 events/s.

A Python asyncio generator (not wrk: it needs each send's time) sends signed webhooks at a steady rate to
``relay serve``, with idle ``relay worker`` processes already waiting and the sandbox answering at once.
Each run's latency is the sandbox's ``received_at`` (``time.time()`` in the sandbox process) minus the
generator's ``time.time()`` taken just before it wrote the webhook: one machine, one clock. Runs are matched
to webhooks by the event id the config maps into the payload (``ref``). Twenty warm-up events go first and
are not counted.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from bench.harness import BenchError, Figures, percentile
from bench.load import post_paced
from bench.signing import signed_requests
from bench.stack import Stack

WARMUP_EVENTS = 20


@dataclass(frozen=True)
class LatencyPlan:
    duration_s: float
    rate_per_s: float = 50.0
    workers: int = 3
    pool_mode: bool = True


def latencies_ms(sent_at: dict[str, float], receipts: list[dict[str, object]]) -> list[float]:
    """Receipt time minus send time of each run, matched by the payload's ``ref``."""
    found = []
    for receipt in receipts:
        body, received_at = receipt["body"], receipt["received_at"]
        ref = body.get("ref") if isinstance(body, dict) else None
        if isinstance(ref, str) and ref in sent_at and isinstance(received_at, float):
            found.append((received_at - sent_at[ref]) * 1000)
    return found


def run_latency(stack: Stack, plan: LatencyPlan) -> Figures:
    stack.flush()
    sandbox = stack.start_sandbox()
    ingress, url = stack.start_ingress()
    workers = stack.start_workers(plan.workers, sandbox, pool=plan.pool_mode)
    try:
        stack.wait_workers(plan.workers, workers)
        prefix = f"lat-{uuid.uuid4().hex[:12]}"
        warmup = list(signed_requests(stack.secret, f"{prefix}-warm", WARMUP_EVENTS))
        post_paced(url, warmup, plan.rate_per_s).require_all_accepted(WARMUP_EVENTS)
        stack.wait_done(WARMUP_EVENTS, 60, [ingress, *workers])
        sandbox.reset()
        events = round(plan.rate_per_s * plan.duration_s)
        sent = post_paced(url, list(signed_requests(stack.secret, prefix, events)), plan.rate_per_s)
        sent.require_all_accepted(events)
        stack.wait_done(WARMUP_EVENTS + events, 60 + plan.duration_s, [ingress, *workers])
        receipts = sandbox.runs()
    finally:
        stack.stop(*workers, ingress, sandbox.service)
    measured = latencies_ms(sent.sent_at, receipts)
    if len(measured) != events:
        raise BenchError(f"matched {len(measured)} runs to {events} webhooks")
    send_times = sorted(sent.sent_at.values())
    return Figures(
        values={
            "latency.p50_ms": percentile(measured, 50),
            "latency.p99_ms": percentile(measured, 99),
            "latency.max_ms": max(measured),
            "latency.answer_p50_ms": percentile(sent.answer_ms, 50),
            "latency.answer_p99_ms": percentile(sent.answer_ms, 99),
            "latency.events": float(events),
            "latency.sent_per_s": (events - 1) / (send_times[-1] - send_times[0]),
        }
    )
