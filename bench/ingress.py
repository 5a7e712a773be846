"""Ingress benchmark: webhooks accepted per second and answer latency, beside a baseline in the same run.

    .venv/bin/python bench/ingress.py [--requests 4000] [--concurrency 32]

What it starts, all on this machine: a private Redis (append-only file on, as in production), `relay serve`
in its own process, and, as the baseline, a bare aiohttp server in its own process that reads and parses
the same JSON body and answers 202 without mapping or storing anything. The load generator is an aiohttp
client in this process with a fixed number of concurrent senders; on a 2-core machine it competes with the
server for CPU, so read the figures side by side, not as absolutes.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import aiohttp

from relay.redis_server import EmbeddedRedis, free_port

CONFIG = """
sources:
  website-form:
    event_id: {path: submission_id}
    event_type: {path: form}
routes:
  - name: callback
    source: website-form
    events: [callback-request]
    phlo_id: 8f0a6c2e-1d4b-4c5e-9a7b-3e2f1d0c9b8a
    payload:
      from: "+14155550100"
      to: {path: phone, required: true}
      name: {path: name, default: there}
"""

BASELINE_SERVER = """
import json, sys
from aiohttp import web

async def hook(request):
    json.loads(await request.read())
    return web.json_response({"status": "accepted"}, status=202)

app = web.Application()
app.router.add_post("/hooks/{source}", hook)
web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), access_log=None, print=None)
"""

BODY = {"submission_id": "sub-1", "form": "callback-request", "name": "Ada", "phone": "+14155550123"}


async def wait_until_up(url: str, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    async with aiohttp.ClientSession() as session:
        while True:
            try:
                async with session.get(url):
                    return
            except aiohttp.ClientConnectionError:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.05)  # polling for the server's port, with a deadline


async def drive(url: str, requests: int, concurrency: int) -> dict[str, float]:
    """Send ``requests`` POSTs with ``concurrency`` senders; every answer must be 202."""
    latencies_ms: list[float] = []
    remaining = iter(range(requests))
    run = uuid.uuid4().hex[:8]  # event ids unique across runs: a repeat would be answered as a duplicate
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def sender() -> None:
            for number in remaining:
                body = json.dumps({**BODY, "submission_id": f"sub-{run}-{number}"}).encode()
                started = time.perf_counter()
                async with session.post(
                    url, data=body, headers={"Content-Type": "application/json"}
                ) as answer:
                    await answer.read()
                    if answer.status != 202:
                        raise RuntimeError(f"answer {answer.status}: {await answer.text()}")
                latencies_ms.append((time.perf_counter() - started) * 1000)

        started = time.perf_counter()
        await asyncio.gather(*(sender() for _ in range(concurrency)))
        elapsed_s = time.perf_counter() - started
    latencies_ms.sort()
    return {
        "rate": requests / elapsed_s,
        "p50": statistics.median(latencies_ms),
        "p99": latencies_ms[int(len(latencies_ms) * 0.99) - 1],
        "max": latencies_ms[-1],
    }


def start(command: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


async def measure(args: argparse.Namespace, work_dir: Path) -> list[tuple[str, dict[str, float]]]:
    config_path = work_dir / "routes.yaml"
    config_path.write_text(CONFIG, encoding="utf-8")
    results = []
    with EmbeddedRedis(work_dir / "redis", appendonly=True) as redis_server:
        relay_port, baseline_port = free_port(), free_port()
        env = {
            **os.environ,
            "RELAY_REDIS_URL": redis_server.url,
            "RELAY_CONFIG_PATH": str(config_path),
            "RELAY_PORT": str(relay_port),
            "RELAY_LOG_LEVEL": "WARNING",
        }
        servers = [
            (
                "baseline: bare aiohttp, parse JSON, 202",
                baseline_port,
                [sys.executable, "-c", BASELINE_SERVER, str(baseline_port)],
            ),
            ("relay serve: map + store job and record", relay_port, [sys.executable, "-m", "relay", "serve"]),
        ]
        for label, port, command in servers:
            process = start(command, env)
            try:
                url = f"http://127.0.0.1:{port}/hooks/website-form"
                await wait_until_up(f"http://127.0.0.1:{port}/")
                await drive(url, min(500, args.requests), args.concurrency)  # warm-up
                results.append((label, await drive(url, args.requests, args.concurrency)))
            finally:
                process.terminate()
                process.wait(timeout=30)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=4000)
    parser.add_argument("--concurrency", type=int, default=32)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="relay-bench-") as work_dir:
        results = asyncio.run(measure(args, Path(work_dir)))
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}")
    print(
        f"load: {args.requests} POSTs, {args.concurrency} concurrent senders (aiohttp client, same machine)"
    )
    print(f"{'server':<42} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8}")
    for label, figures in results:
        rate, p50, p99, worst = figures["rate"], figures["p50"], figures["p99"], figures["max"]
        print(f"{label:<42} {rate:>8.0f} {p50:>8.2f} {p99:>8.2f} {worst:>8.2f}")


if __name__ == "__main__":
    main()
