"""``bench/run.py``: run the selected benchmarks ``--repeat`` times, print the table, write the document."""

from __future__ import annotations

import argparse
import shlex
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from bench import document, report, targets
from bench.burst import BurstPlan, run_burst
from bench.delivery import DeliveryPlan, run_delivery
from bench.harness import BenchError, Figures
from bench.ingress import IngressPlan, run_ingress
from bench.latency import LatencyPlan, run_latency
from bench.stack import Stack, open_stack

BENCHMARKS = ("ingress", "delivery", "latency", "burst")


@dataclass(frozen=True)
class Plans:
    ingress: IngressPlan
    delivery: DeliveryPlan
    latency: LatencyPlan
    burst: BurstPlan

    def method(self) -> list[str]:
        """How each figure was obtained, with this run's sizes, for the document."""
        i, d, lat, b = self.ingress, self.delivery, self.latency, self.burst
        pool = (
            f"`relay worker --processes {d.pool_workers}`"
            if d.pool_mode
            else (f"{d.pool_workers} separate `relay worker` processes")
        )
        limit = (
            "lifted (capacity figure; `--burst-rate-limit default` keeps 300 per 5 s)"
            if (b.rate_limit_lifted)
            else "the default 300 per 5 s"
        )
        return [
            "Everything runs on this machine, started by the harness: a private `redis-server` with its "
            "append-only file on (`appendfsync everysec`, as in docker-compose.yml), and `relay serve`, "
            "`relay worker` and `relay sandbox` as subprocesses configured by environment only, "
            "`RELAY_LOG_LEVEL=WARNING`. Redis is emptied before each measurement.",
            "The webhook is a website-form-like source verified with the relay's `hmac` scheme "
            "(HMAC-SHA256 of the body, hex, in `X-Signature`), mapped to one PHLO run per event; every "
            "webhook carries a unique event id, so none is a duplicate.",
            f"**Ingress**: load generator **wrk** ({i.threads} threads, {i.connections} connections, "
            f"{i.duration_s:.0f} s after a {i.warmup_s:.0f} s warm-up) with `bench/signed.lua`, which sends "
            "bodies signed beforehand in Python (LuaJIT has no HMAC), each once, and counts every answer by "
            "status; a run that uses up its bodies is void. The baselines run in their own process with "
            "aiohttp's `web.run_app`, asyncio's default loop and no access log, like `relay serve`, and get "
            "the same requests: *bare* reads the body and answers 202; *naive* verifies nothing and calls "
            "RQ's `Queue.enqueue` per request on a 32-thread pool. Before the relay is measured, a signed "
            "webhook must get 202 and a wrongly signed one 401. Latency percentiles are wrk's.",
            f"**Delivery**: stock RQ (`rq worker --burst -w rq.worker.SimpleWorker -S json`) on {d.jobs} "
            f"pre-enqueued no-op jobs, against one `relay worker --burst` on {d.jobs} runs queued through "
            "`relay serve`, the sandbox answering at once and the rate limit lifted out of the way. Both "
            "rates are jobs over the span from the first job's start to the last one's end in RQ's job "
            "records, so process start-up is excluded alike.",
            f"**Delivery at 300 ms**: {pool}, sandbox answering every run after 300 ms, the default rate "
            f"limit (300 per 5 s), {d.pool_runs} runs queued through `relay serve` once the workers listen. "
            "Sustained rate from the sandbox's receipt times over the steady part (from the later of 1 s "
            "after the queue was filled and 10 s after the first receipt, to the last receipt); the 5 s "
            "window count is over all receipts.",
            f"**Latency**: a Python asyncio generator paces {lat.rate_per_s:.0f} signed webhooks/s for "
            f"{lat.duration_s:.0f} s to `relay serve` with {lat.workers} idle workers waiting; latency is "
            "the sandbox's `received_at` minus the generator's clock just before sending (one machine, one "
            "clock), runs matched to webhooks by the event id mapped into the payload.",
            f"**Burst**: {b.webhooks} webhooks sent by wrk ({b.connections} connections, each once, as fast "
            f"as it can) to one `relay serve` while {b.workers} workers run; rate limit {limit}. Every "
            "answer counted by status; then each run's record in Redis is read: delivered, dead-lettered, "
            "or lost. Ingress rate from the events' `received_at`; drain from the first arrival to the last "
            "run's end. At Plivo's 60 runs/s, 20,000 runs take at least 333 s whatever the relay does.",
            "**Memory**: RSS/PSS of the ingress process (and its children) sampled every 0.5 s during its "
            "wrk run and during the burst; worker processes sampled idle (listening, before any run) and "
            "throughout the 300 ms run.",
        ]


def plans(args: argparse.Namespace) -> Plans:
    pool_mode = args.worker_pool == "processes"
    return Plans(
        ingress=IngressPlan(
            duration_s=3 if args.quick else 10, warmup_s=1 if args.quick else 2, profile_dir=args.profile
        ),
        delivery=DeliveryPlan(
            jobs=500 if args.quick else 2000,
            pool_runs=1000 if args.quick else 3000,
            pool_workers=args.workers,
            pool_mode=pool_mode,
        ),
        latency=LatencyPlan(duration_s=5 if args.quick else 20, pool_mode=pool_mode),
        burst=BurstPlan(
            webhooks=2000 if args.quick else 20000,
            workers=args.workers,
            pool_mode=pool_mode,
            rate_limit_lifted=args.burst_rate_limit == "lifted",
        ),
    )


def _runner(name: str, chosen: Plans, repeat: int) -> Callable[[Stack], Figures]:
    if name == "ingress":
        return lambda stack: run_ingress(stack, chosen.ingress, repeat)
    if name == "delivery":
        return lambda stack: run_delivery(stack, chosen.delivery)
    if name == "latency":
        return lambda stack: run_latency(stack, chosen.latency)
    return lambda stack: run_burst(stack, chosen.burst)


def _selection(text: str) -> list[str]:
    chosen = [name.strip() for name in text.split(",") if name.strip()]
    unknown = sorted(set(chosen) - set(BENCHMARKS))
    if unknown or not chosen:
        raise argparse.ArgumentTypeError(f"choose from {', '.join(BENCHMARKS)}")
    return chosen


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bench/run.py", description="Benchmarks of phlo-relay beside their baselines, in one run."
    )
    parser.add_argument("--quick", action="store_true", help="smaller runs, 1 repetition unless --repeat")
    parser.add_argument("--repeat", type=int, help="repetitions of each benchmark (default 3; quick: 1)")
    parser.add_argument(
        "--only",
        type=_selection,
        default=list(BENCHMARKS),
        help=f"comma-separated subset of {','.join(BENCHMARKS)}",
    )
    parser.add_argument("--write", type=Path, metavar="PATH", help="write the report (docs/performance.md)")
    parser.add_argument("--workers", type=int, default=20, help="worker pool of the 300 ms and burst runs")
    parser.add_argument(
        "--worker-pool",
        choices=["processes", "separate"],
        default="processes",
        help="`relay worker --processes K` (default) or K separate processes",
    )
    parser.add_argument(
        "--burst-rate-limit",
        choices=["lifted", "default"],
        default="lifted",
        help="the burst's account rate limit (default lifted: capacity)",
    )
    parser.add_argument(
        "--profile",
        type=Path,
        metavar="DIR",
        help="also record py-spy flame graphs of the ingress (extra, unmeasured runs)",
    )
    parser.add_argument("--note", help="a note shown at the top of the written report")
    parser.add_argument(
        "--analysis",
        type=Path,
        metavar="MARKDOWN",
        help="a file explaining the misses, included in the written report",
    )
    parser.add_argument("--work-dir", type=Path, help="keep logs and Redis data here (default: a temp dir)")
    return parser


def _measure(args: argparse.Namespace, chosen: Plans, work_dir: Path, repeat: int) -> list[Figures]:
    results = []
    with open_stack(work_dir) as stack:
        for index in range(repeat):
            figures = Figures()
            for name in args.only:
                started = time.monotonic()
                print(f"[{index + 1}/{repeat}] {name} ...", file=sys.stderr, flush=True)
                figures.merge(_runner(name, chosen, index)(stack))
                print(
                    f"[{index + 1}/{repeat}] {name} done in {time.monotonic() - started:.0f} s",
                    file=sys.stderr,
                    flush=True,
                )
            targets.derive(figures)
            results.append(figures)
    return results


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    repeat = args.repeat or (1 if args.quick else 3)
    chosen = plans(args)
    started_at, load_before = datetime.now(UTC), document.load_average()
    try:
        if args.work_dir is not None:
            results = _measure(args, chosen, args.work_dir, repeat)
        else:
            with tempfile.TemporaryDirectory(prefix="relay-bench-") as work_dir:
                results = _measure(args, chosen, Path(work_dir), repeat)
    except BenchError as exc:
        print(f"benchmark failed: {exc}", file=sys.stderr)
        return 1
    lines = report.build_lines(results, args.workers)
    print(report.render_text(lines))
    misses = [line.miss for line in lines if line.miss]
    for miss in misses:
        print(f"MISS: {miss}")
    if args.write is not None:
        command = shlex.join([".venv/bin/python", "bench/run.py", *(sys.argv[1:] if argv is None else argv)])
        run = document.Run(
            command,
            started_at,
            load_before,
            document.load_average(),
            repeat,
            chosen.method(),
            misses,
            args.note,
            args.analysis.read_text(encoding="utf-8") if args.analysis else None,
        )
        document.write(args.write, lines, run)
        print(f"wrote {args.write}", file=sys.stderr)
    return 0
