"""Benchmark 4, burst: N signed webhooks as fast as wrk sends them, then the workers drain every run.

wrk (32 connections, each webhook sent once, bench/signed.lua in "count" mode) sends the burst to one
``relay serve`` while the worker pool is already running against the sandbox (answering at once). Every
answer is counted by status: all must be 202. Then the run records in Redis (``relay:event:*``) are read
one by one: each run must be succeeded or dead-lettered; ``lost`` counts the accepted runs that are neither.

The ingress rate is the number of events over the span of their ``received_at`` in the relay's own
records; the drain time runs from the first event's arrival to the last run's final ``updated_at``.
By default the account's rate limit is lifted, to measure capacity: at Plivo's 300 per 5 s (60 runs/s)
20,000 runs take at least 333 s whatever the relay does.
"""

from __future__ import annotations

import json
import sys
import time
import uuid
from dataclasses import dataclass

from redis import Redis

from bench import wrk
from bench.harness import BenchError, BenchTimeout, Figures, MemorySampler, descendants
from bench.signing import ROUTE, signed_requests, write_wrk_data
from bench.stack import LIFTED_RATE_LIMIT, Settings, Stack
from relay import keys
from relay.queue.jobs import job_id_for
from relay.queue.records import RunStatus

MIB = 1024
BATCH = 500
DEFAULT_RATE_PER_S = 300 / 5.2  # the relay's limiter: 300 per window of 5 s plus its 0.2 s margin


@dataclass(frozen=True)
class BurstPlan:
    webhooks: int
    workers: int
    pool_mode: bool
    rate_limit_lifted: bool = True
    connections: int = 32


@dataclass
class Outcomes:
    """What the relay's records say about every event in Redis."""

    events: int = 0
    delivered: int = 0
    dead_lettered: int = 0
    unfinished: int = 0
    first_received_at: float = float("inf")
    last_received_at: float = 0.0
    last_ended_at: float = 0.0

    def add(self, raw_event: bytes | None, raw_run: bytes | None) -> None:
        if raw_event is None:
            return
        self.events += 1
        received_at = float(json.loads(raw_event)["received_at"])
        self.first_received_at = min(self.first_received_at, received_at)
        self.last_received_at = max(self.last_received_at, received_at)
        run = json.loads(raw_run) if raw_run else {}
        status = run.get("status")
        if status == RunStatus.SUCCEEDED:
            self.delivered += 1
        elif status == RunStatus.DEAD_LETTERED:
            self.dead_lettered += 1
        else:
            self.unfinished += 1
            return
        self.last_ended_at = max(self.last_ended_at, float(run["updated_at"]))


def read_outcomes(redis: Redis) -> Outcomes:
    """Every event record and its one run's outcome (the bench config has one route per event)."""
    outcomes = Outcomes()
    prefix = keys.event_key("")
    event_ids = [key.decode()[len(prefix) :] for key in redis.scan_iter(match=prefix + "*", count=1000)]
    for start in range(0, len(event_ids), BATCH):
        batch = event_ids[start : start + BATCH]
        with redis.pipeline(transaction=False) as pipe:
            for event_id in batch:
                run_field = keys.run_field(job_id_for(event_id, ROUTE))
                pipe.hmget(keys.event_key(event_id), keys.EVENT_FIELD, run_field)
            for raw_event, raw_run in pipe.execute():
                outcomes.add(raw_event, raw_run)
    return outcomes


def _drain_timeout_s(plan: BurstPlan) -> float:
    slowest_rate = 20.0 if plan.rate_limit_lifted else DEFAULT_RATE_PER_S * 0.9
    return 120 + plan.webhooks / slowest_rate


def run_burst(stack: Stack, plan: BurstPlan) -> Figures:
    stack.flush()
    figures = Figures()
    sandbox = stack.start_sandbox()
    limit: Settings = {"RELAY_RATE_LIMIT": LIFTED_RATE_LIMIT} if plan.rate_limit_lifted else {}
    workers = stack.start_workers(plan.workers, sandbox, pool=plan.pool_mode, settings=limit)
    ingress, url = stack.start_ingress()
    try:
        stack.wait_workers(plan.workers, workers)
        data = stack.work_dir / "burst-data.txt"
        prefix = f"burst-{uuid.uuid4().hex[:12]}"
        write_wrk_data(data, signed_requests(stack.secret, prefix, plan.webhooks))
        deadline_s = 120 + plan.webhooks / 50
        with MemorySampler(lambda: descendants(ingress.pid)) as memory:
            result = wrk.run_each_once(url, data, deadline_s=deadline_s, connections=plan.connections)
        ingested_at = time.time()
        print(f"  burst: {result.describe()}", file=sys.stderr, flush=True)
        ingress.require_alive()  # a dead ingress makes every later webhook a connection error
        try:
            stack.wait_done(result.accepted, _drain_timeout_s(plan), [ingress, *workers])
        except BenchTimeout as exc:
            print(f"  burst: the drain did not complete: {exc}", file=sys.stderr, flush=True)
            figures.notes["burst.lost"] = str(exc)  # counted below: runs neither delivered nor dead
        with stack.redis() as redis:
            outcomes = read_outcomes(redis)
    finally:
        stack.stop(ingress, *workers, sandbox.service)
    if outcomes.events == 0:
        raise BenchError("the burst stored no event")
    ingest_span_s = outcomes.last_received_at - outcomes.first_received_at
    figures.values.update(
        {
            "burst.sent": float(result.loaded),
            "burst.accepted": float(result.accepted),
            "burst.server_errors": float(result.server_errors),
            "burst.refused": float(result.non_2xx + result.socket_errors),
            "burst.duplicates": float(result.duplicates),
            "burst.ingress_rate": (outcomes.events - 1) / ingest_span_s if ingest_span_s > 0 else 0.0,
            "burst.ingress_rate_wrk": result.accepted_per_s,
            "burst.answer_p99_ms": result.latency_ms["p99"],
            "burst.ingest_s": ingest_span_s,
            "burst.drain_s": outcomes.last_ended_at - outcomes.first_received_at,
            "burst.drain_after_ingest_s": max(outcomes.last_ended_at - ingested_at, 0.0),
            "burst.delivered": float(outcomes.delivered),
            "burst.dead_lettered": float(outcomes.dead_lettered),
            "burst.lost": float(result.accepted - outcomes.delivered - outcomes.dead_lettered),
            "burst.ingress_rss_mib": memory.peak.rss_sum_kib / MIB,
        }
    )
    return figures
