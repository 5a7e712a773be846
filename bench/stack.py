"""The system under test, started on this machine: a private Redis, and the relay's own commands as processes.

Redis runs with its append-only file on (``appendfsync everysec``, its default), as in docker-compose.yml, so
that a 202 costs what it costs in production. ``relay serve``, ``relay worker`` and ``relay sandbox`` run as
real subprocesses configured only through their environment, in the work directory (so no developer's
``.env`` is read), with ``RELAY_LOG_LEVEL=WARNING`` (aiohttp's access log and RQ's per-job lines off).
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
from redis import Redis
from rq import Queue, Worker
from rq.job import Job
from rq.registry import FailedJobRegistry, FinishedJobRegistry
from rq.serializers import JSONSerializer

from bench.harness import BenchError, Service, descendants, poll_until, wait_http
from bench.signing import CONFIG, HOOK_PATH, PHLO_ID, SECRET_VARIABLE
from relay.dev.redis_server import EmbeddedRedis, free_port
from relay.runner.sandbox import SANDBOX_AUTH_ID, SANDBOX_AUTH_TOKEN

REPO = Path(__file__).resolve().parents[1]
RELAY = [sys.executable, "-m", "relay"]
RELAY_QUEUE = "phlo-runs"
LIFTED_RATE_LIMIT = 1_000_000_000
START_TIMEOUT_S = 60.0
# The caller's own settings must not change what is measured.
_INHERITED_PREFIXES = ("RELAY_", "PLIVO_", "REDIS_URL", "BENCH_")
Settings = dict[str, str | int | float]  # environment settings of a relay process, by variable name


def supports_option(command: list[str], option: str) -> bool:
    """Whether a relay command's --help lists ``option`` (so that a row can say n/a until it exists)."""
    completed = subprocess.run([*RELAY, *command, "--help"], capture_output=True, text=True, check=False)
    return option in completed.stdout


@dataclass
class Sandbox:
    """The runner sandbox process and its control API."""

    service: Service
    url: str
    http: httpx.Client = field(init=False)

    def __post_init__(self) -> None:
        self.http = httpx.Client(base_url=self.url, timeout=60)

    def reset(self) -> None:
        self.http.delete("/_sandbox/runs").raise_for_status()
        self.http.delete("/_sandbox/faults").raise_for_status()

    def answer_after(self, latency_ms: float) -> None:
        """Every run request from now on waits ``latency_ms`` before it is answered (until reset)."""
        fault = {"latency_ms": latency_ms, "count": None}
        self.http.post("/_sandbox/faults", json=fault).raise_for_status()

    def fail_next(self, count: int, status: int, retry_after_s: int | None = None) -> None:
        """The next ``count`` run requests are answered ``status`` (with ``Retry-After``, if given)."""
        fault = {"status": status, "count": count, "retry_after": retry_after_s}
        self.http.post("/_sandbox/faults", json=fault).raise_for_status()

    def runs(self) -> list[dict[str, Any]]:
        runs: list[dict[str, Any]] = self.http.get("/_sandbox/runs").raise_for_status().json()["runs"]
        return runs


@dataclass
class Stack:
    """Redis for the whole run; services started per benchmark and stopped by it (or at the end)."""

    work_dir: Path
    redis_server: EmbeddedRedis
    secret: str
    services: list[Service] = field(default_factory=list)

    @property
    def config_path(self) -> Path:
        return self.work_dir / "routes.yaml"

    def redis(self) -> Redis:
        return Redis.from_url(self.redis_server.url)

    def flush(self) -> None:
        """Empty Redis between measurements (the append-only file logs it like any write)."""
        with self.redis() as redis:
            redis.flushdb()

    def env(self, sandbox: Sandbox | None = None, settings: Settings | None = None) -> dict[str, str]:
        """The environment of a relay process: only the settings given here (and the defaults)."""
        env = {key: value for key, value in os.environ.items() if not key.startswith(_INHERITED_PREFIXES)}
        env.update(
            PYTHONPATH=str(REPO),
            RELAY_REDIS_URL=self.redis_server.url,
            RELAY_CONFIG_PATH=str(self.config_path),
            RELAY_LOG_LEVEL="WARNING",
            RELAY_DRAIN_DELAY_S="0",
            RELAY_SHUTDOWN_GRACE_S="5",
            PLIVO_AUTH_ID=SANDBOX_AUTH_ID,
            PLIVO_AUTH_TOKEN=SANDBOX_AUTH_TOKEN,
        )
        env[SECRET_VARIABLE] = self.secret
        if sandbox is not None:
            env["RELAY_RUNNER_URL"] = sandbox.url
        env.update({name: str(value) for name, value in (settings or {}).items()})
        return env

    def start(self, name: str, command: list[str], env: dict[str, str]) -> Service:
        service = Service.start(name, command, env, self.work_dir, self.work_dir)
        self.services.append(service)
        return service

    def stop(self, *services: Service) -> None:
        for service in services:
            service.stop()
            if service in self.services:
                self.services.remove(service)

    def start_http(
        self, name: str, command: list[str], port: int, env: dict[str, str]
    ) -> tuple[Service, str]:
        """Start a server and return once it answers on ``port``."""
        service = self.start(name, command, env)
        url = f"http://127.0.0.1:{port}"
        wait_http(f"{url}/", service, START_TIMEOUT_S)
        return service, url

    def start_ingress(self, processes: int = 1, settings: Settings | None = None) -> tuple[Service, str]:
        """``relay serve`` (with ``--processes`` when more than one); returns it and its hook URL."""
        port = free_port()
        command = [*RELAY, "serve", "--port", str(port)]
        if processes > 1:
            command += ["--processes", str(processes)]
        service, url = self.start_http(f"ingress-{port}", command, port, self.env(settings=settings))
        return service, url + HOOK_PATH

    def start_sandbox(self) -> Sandbox:
        port = free_port()
        command = [*RELAY, "sandbox", "--port", str(port), "--phlo", PHLO_ID]
        service, url = self.start_http(f"sandbox-{port}", command, port, self.env())
        sandbox = Sandbox(service, url)
        sandbox.reset()
        return sandbox

    def start_workers(
        self,
        count: int,
        sandbox: Sandbox,
        *,
        pool: bool,
        burst: bool = False,
        concurrency: int | None = None,
        settings: Settings | None = None,
    ) -> list[Service]:
        """``count`` relay workers: one ``relay worker --processes count`` (pool), or separate processes.

        ``concurrency``: each process's runs in flight (``--concurrency``); None leaves the default.
        """
        env = self.env(sandbox, settings)
        flags = ["--burst"] if burst else []
        if concurrency is not None:
            flags += ["--concurrency", str(concurrency)]
        if pool and count > 1:
            command = [*RELAY, "worker", "--processes", str(count), *flags]
            return [self.start(f"workers-{count}", command, env)]
        return [self.start(f"worker-{i}", [*RELAY, "worker", *flags], env) for i in range(count)]

    def wait_workers(self, count: int, services: list[Service], queue_name: str = RELAY_QUEUE) -> None:
        """Return once ``count`` RQ workers listen on the queue."""
        with self.redis() as redis:
            queue = Queue(queue_name, connection=redis, serializer=JSONSerializer)

            def registered() -> bool:
                for service in services:
                    service.require_alive()
                return len(Worker.all(queue=queue)) >= count

            poll_until(registered, START_TIMEOUT_S, f"{count} workers to listen on {queue_name}")

    def wait_done(self, count: int, timeout_s: float, services: list[Service]) -> None:
        """Return once ``count`` relay runs have ended (succeeded or dead-lettered), by RQ's registries.

        Cheap to poll (two ZCARDs); the exact outcome of each run is read from its record afterwards.
        """
        with self.redis() as redis:
            finished = FinishedJobRegistry(RELAY_QUEUE, connection=redis, serializer=JSONSerializer)
            failed = FailedJobRegistry(RELAY_QUEUE, connection=redis, serializer=JSONSerializer)

            def ended() -> bool:
                for service in services:
                    service.require_alive()
                return finished.get_job_count(cleanup=False) + failed.get_job_count(cleanup=False) >= count

            poll_until(ended, timeout_s, f"{count} runs to end", interval_s=0.25)

    def worker_pids(self, services: list[Service]) -> list[int]:
        """Every process of these workers: pool parents and their forked children."""
        return [pid for service in services if service.alive() for pid in descendants(service.pid)]

    def close(self) -> None:
        for service in reversed(self.services):
            service.stop()
        self.services.clear()


@contextmanager
def open_stack(work_dir: Path) -> Iterator[Stack]:
    """A Stack on a fresh Redis in ``work_dir``; everything it started is stopped on exit, Redis last."""
    work_dir.mkdir(parents=True, exist_ok=True)
    (work_dir / "routes.yaml").write_text(CONFIG, encoding="utf-8")
    with EmbeddedRedis(work_dir / "redis", appendonly=True) as redis_server:
        stack = Stack(work_dir, redis_server, secrets.token_hex(32))
        try:
            yield stack
        finally:
            stack.close()


def job_span_s(redis: Redis, job_ids: list[str]) -> float:
    """Seconds from the first job's start to the last one's end, by RQ's own timestamps."""
    jobs = [job for job in Job.fetch_many(job_ids, connection=redis, serializer=JSONSerializer) if job]
    if len(jobs) != len(job_ids):
        raise BenchError(f"{len(job_ids) - len(jobs)} of {len(job_ids)} jobs are gone from Redis")
    started: list[datetime] = [job.started_at for job in jobs if job.started_at is not None]
    ended: list[datetime] = [job.ended_at for job in jobs if job.ended_at is not None]
    if len(started) != len(jobs) or len(ended) != len(jobs):
        raise BenchError("some jobs have no start or end time: they did not all run")
    return (max(ended) - min(started)).total_seconds()
