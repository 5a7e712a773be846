"""Benchmark 1, ingress: signed webhooks accepted per second at 32 connections, beside two baselines.

Each server runs in its own process and is hit by the same wrk script (bench/signed.lua) with the same
pre-signed bodies, each body sent once:

- ``bare``: aiohttp that reads the body and answers 202, nothing else (the ceiling);
- ``naive``: aiohttp that verifies nothing and calls RQ's ``Queue.enqueue`` per request on a thread;
- ``relay``: ``relay serve``: HMAC verification, mapping, one transaction storing the event and its run;
- ``relay2``: ``relay serve --processes 2`` (n/a until the option exists).

Before the relay is measured, one signed webhook must get 202 and a wrongly signed one 401, so the figures
provably include verification. The measured run gets more pre-signed bodies than it can use: 1.5 times
what the bare baseline answered in this repetition (nothing here is faster), or 3 times the server's own
warm-up rate when that is more; a run that still runs out is void, not reported.
"""

from __future__ import annotations

import math
import subprocess
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path

from bench import wrk
from bench.harness import Figures, MemorySampler, Service, descendants
from bench.load import check_verification
from bench.signing import HOOK_PATH, signed_requests, write_wrk_data
from bench.stack import Stack, supports_option
from relay.dev.redis_server import free_port

SERVERS = ("bare", "naive", "relay", "relay2")
LABELS = {
    "bare": "bare aiohttp: read body, 202",
    "naive": "naive: RQ Queue.enqueue per request",
    "relay": "relay serve, 1 process",
    "relay2": "relay serve --processes 2",
}
WARMUP_CAPACITY_PER_S = 20_000  # more than any server here answers: a warm-up never runs dry
DATA_MARGIN = 1.5
WARMUP_MARGIN = 3.0
MIB = 1024


@dataclass(frozen=True)
class IngressPlan:
    duration_s: float
    warmup_s: float
    connections: int = 32
    threads: int = 2
    profile_dir: Path | None = None


def _start(stack: Stack, kind: str) -> tuple[Service, str]:
    if kind in ("relay", "relay2"):
        return stack.start_ingress(processes=2 if kind == "relay2" else 1)
    port = free_port()
    command = [sys.executable, "-m", "bench.baselines", kind, str(port)]
    if kind == "naive":
        command.append(stack.redis_server.url)
    service, url = stack.start_http(f"baseline-{kind}-{port}", command, port, stack.env())
    return service, url + HOOK_PATH


def _data(stack: Stack, count: int) -> Path:
    path = stack.work_dir / "wrk-data.txt"
    write_wrk_data(path, signed_requests(stack.secret, f"ing-{uuid.uuid4().hex[:12]}", count))
    return path


def _profile(stack: Stack, service: Service, url: str, plan: IngressPlan, capacity_per_s: float) -> None:
    """An extra, unmeasured run with py-spy attached: a flame graph of the ingress under the same load."""
    assert plan.profile_dir is not None
    plan.profile_dir.mkdir(parents=True, exist_ok=True)
    output = plan.profile_dir / f"ingress-{service.name}.svg"
    spy = [str(Path(sys.executable).with_name("py-spy")), "record", "--nonblocking", "--subprocesses"]
    spy += ["-o", str(output), "--pid", str(service.pid), "--duration", str(int(plan.duration_s))]
    profiler = subprocess.Popen(spy, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        data = _data(stack, math.ceil(capacity_per_s * plan.duration_s))
        wrk.run_for(url, data, duration_s=plan.duration_s, connections=plan.connections)
    finally:
        profiler.wait(timeout=plan.duration_s + 60)


def measure_server(
    stack: Stack, kind: str, plan: IngressPlan, *, ceiling_per_s: float | None, profile: bool
) -> Figures:
    """Start one server, warm it up, measure it with wrk; figures keyed ``ingress.<kind>.*``.

    ``ceiling_per_s``: the fastest rate expected (the bare baseline's), to size the data; None: unknown.
    """
    stack.flush()
    service, url = _start(stack, kind)
    try:
        if kind.startswith("relay"):
            check_verification(url, next(signed_requests(stack.secret, uuid.uuid4().hex, 1)), stack.secret)
        warm_data = _data(stack, math.ceil(WARMUP_CAPACITY_PER_S * plan.warmup_s))
        warm = wrk.run_for(url, warm_data, duration_s=plan.warmup_s, connections=plan.connections)
        warm_rate = max(warm.answered / warm.duration_s, 100.0)
        capacity_per_s = max(warm_rate * WARMUP_MARGIN, (ceiling_per_s or 0) * DATA_MARGIN)
        data = _data(stack, math.ceil(capacity_per_s * plan.duration_s))
        with MemorySampler(lambda: descendants(service.pid)) as memory:
            result = wrk.run_for(
                url, data, duration_s=plan.duration_s, threads=plan.threads, connections=plan.connections
            )
        service.require_alive()
        print(f"  {LABELS[kind]}: {result.describe()}", file=sys.stderr, flush=True)
        if profile and plan.profile_dir is not None:
            _profile(stack, service, url, plan, capacity_per_s)
    finally:
        stack.stop(service)
    key = f"ingress.{kind}"
    return Figures(
        values={
            f"{key}.rate": result.accepted_per_s,
            f"{key}.p50_ms": result.latency_ms["p50"],
            f"{key}.p99_ms": result.latency_ms["p99"],
            f"{key}.max_ms": result.latency_ms["max"],
            f"{key}.refused": float(result.non_2xx + result.socket_errors),
            f"{key}.duplicates": float(result.duplicates),
            f"{key}.rss_mib": memory.peak.rss_sum_kib / MIB,
            f"{key}.answered": float(result.answered),
        }
    )


def run_ingress(stack: Stack, plan: IngressPlan, repeat: int) -> Figures:
    """Every server of SERVERS once, in order; ratios against ``bare`` from this same repetition."""
    figures = Figures()
    two_processes = supports_option(["serve"], "--processes")
    for kind in SERVERS:
        if kind == "relay2" and not two_processes:
            figures.notes["ingress.relay2"] = "n/a: `relay serve --processes` not available yet"
            continue
        ceiling = figures.values.get("ingress.bare.rate")
        profile = repeat == 0 and kind.startswith("relay")
        figures.merge(measure_server(stack, kind, plan, ceiling_per_s=ceiling, profile=profile))
    bare = figures.values["ingress.bare.rate"]
    for kind in SERVERS[1:]:
        if f"ingress.{kind}.rate" in figures.values:
            figures.values[f"ingress.{kind}.ratio"] = figures.values[f"ingress.{kind}.rate"] / bare
    return figures
