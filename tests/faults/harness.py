"""The processes of a fault scenario: a Redis with its append-only file, the runner sandbox, ingresses and
workers, each a real child process driven only through its command line, signals and HTTP.

Every child runs in a session of its own, so that a kill takes its forks too (RQ's scheduler is a fork of
the worker that holds the scheduler lock), and writes its log to ``<dir>/logs/<name>.log``.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import httpx

from relay.dev.redis_server import EmbeddedRedis, free_port
from relay.dev.stack import wait_for_worker
from relay.runner.sandbox import SANDBOX_AUTH_ID, SANDBOX_AUTH_TOKEN
from relay.settings import Settings, load_settings
from tests.conftest import ALERT_PHLO, KNOWN_PHLO, UNKNOWN_PHLO, clean_environment

SIGNING_SECRET_ENV = "FAULTS_SIGNING_SECRET"
SIGNING_SECRET = "faults-signing-secret"
START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 15.0
_POLL_S = 0.05

# Two sources, one of them signed (GitHub's scheme), each with a route that always runs and one that fans
# out when the body says so; a region nobody deployed a PHLO for ends at the runner's 404. `ref` is unique
# per webhook and travels in every payload, so the sandbox's log names the webhook of each request.
CONFIG = f"""
sources:
  form:
    event_id: {{path: ref}}
  signed:
    verify: {{scheme: github, secrets: [{SIGNING_SECRET_ENV}]}}
    event_id: {{path: ref}}
routes:
"""
for _source in ("form", "signed"):
    CONFIG += f"""
  - name: {_source}-call
    source: {_source}
    phlo_id: {KNOWN_PHLO}
    payload: {{ref: {{path: ref}}, to: {{path: phone, required: true}}, from: "+14155550100"}}
  - name: {_source}-alert
    source: {_source}
    when: fanout
    phlo_id: {ALERT_PHLO}
    payload: {{ref: {{path: ref}}, to: "+14155550199", lead: {{path: phone}}}}
"""
CONFIG += f"""
  - name: form-nowhere
    source: form
    when: "region == 'nowhere'"
    phlo_id: {UNKNOWN_PHLO}
    payload: {{ref: {{path: ref}}, to: "+14155550100"}}
"""


def fault_settings(redis_url: str, runner_url: str, config_path: Path, **overrides: Any) -> Settings:
    """Settings that make recovery quick: short job timeout and maintenance interval, small retry delays,
    a small breaker, a rate limit out of the way unless a scenario sets one."""
    values: dict[str, Any] = {
        "redis_url": redis_url,
        "runner_url": runner_url,
        "plivo_auth_id": SANDBOX_AUTH_ID,
        "plivo_auth_token": SANDBOX_AUTH_TOKEN,
        "config_path": config_path,
        "job_timeout_s": 5,
        "maintenance_interval_s": 1,
        "worker_concurrency": 8,  # every worker holds several runs in flight: a kill cuts short several
        "runner_connect_timeout_s": 1.0,
        "runner_read_timeout_s": 1.0,
        "retry_base_delay_s": 0.5,
        "retry_max_delay_s": 2.0,
        "run_attempts": 10,
        "rate_limit": 100_000,
        "rate_window_s": 1.0,
        "breaker_failures": 5,
        "breaker_window_s": 5.0,
        "breaker_open_s": 1.0,
        "breaker_max_open_s": 4.0,
        "log_level": "WARNING",
        **overrides,
    }
    return load_settings(_env_file=None, **values)


class Child:
    """One relay command as a child process in a session of its own, logging to ``log_path``."""

    def __init__(self, name: str, args: list[str], env: dict[str, str], log_path: Path) -> None:
        self.name, self.args, self.env, self.log_path = name, args, env, log_path
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        """Start it and wait until it is ready."""
        self.spawn()
        self.ready()

    def ready(self) -> None:
        """Return once it serves (here: at once; HTTP servers override this)."""

    def spawn(self) -> None:
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "relay", *self.args],
                env=self.env,
                stdout=log,
                stderr=log,
                start_new_session=True,
            )

    @property
    def exit_code(self) -> int | None:
        """None while it runs (or was never started), else its exit code."""
        return None if self.process is None else self.process.poll()

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def signal_group(self, signum: int) -> None:
        if self.process is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signum)

    def kill(self) -> None:
        """SIGKILL the whole session: no handler runs, nothing is cleaned up."""
        if self.process is not None:
            self.signal_group(signal.SIGKILL)
            self.process.wait(timeout=STOP_TIMEOUT_S)
            self.process = None

    def log_tail(self, lines: int = 15) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])


def _wait_until_answers(child: Child, url: str) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while True:
        try:
            httpx.get(url, timeout=1.0)
            return
        except httpx.TransportError:
            pass
        if not child.alive:
            raise AssertionError(f"{child.name} exited with {child.exit_code}:\n{child.log_tail()}")
        if time.monotonic() > deadline:
            raise AssertionError(f"{child.name} did not answer at {url}:\n{child.log_tail()}")
        time.sleep(_POLL_S)


class SandboxProcess(Child):
    """``relay sandbox`` on a fixed port, and the runs it received across its restarts.

    Its log of runs lives in its memory: ``collect`` reads it before the process goes.
    """

    def __init__(self, port: int, env: dict[str, str], log_path: Path) -> None:
        args = ["sandbox", "--port", str(port), "--phlo", KNOWN_PHLO, "--phlo", ALERT_PHLO]
        super().__init__("sandbox", args, env, log_path)
        self.url = f"http://127.0.0.1:{port}"
        self.received: list[dict[str, Any]] = []  # runs of the instances that have stopped
        self.http = httpx.Client(base_url=self.url, timeout=10.0)

    def ready(self) -> None:
        _wait_until_answers(self, f"{self.url}/_sandbox/health")

    def runs(self) -> list[dict[str, Any]]:
        runs: list[dict[str, Any]] = self.http.get("/_sandbox/runs").raise_for_status().json()["runs"]
        return runs

    def fault(self, status: int | None = None, count: int | None = None, **extra: Any) -> None:
        body = {"status": status, "count": count, **extra}
        self.http.post("/_sandbox/faults", json=body).raise_for_status()

    def faults(self) -> list[dict[str, Any]]:
        """The faults still to apply."""
        faults: list[dict[str, Any]] = self.http.get("/_sandbox/faults").raise_for_status().json()["faults"]
        return faults

    def clear_faults(self) -> None:
        self.http.delete("/_sandbox/faults").raise_for_status()

    def go_down(self) -> None:
        """Stop the sandbox, keeping its log of runs complete.

        It first answers every new request 503, waits for the requests it is still sleeping on (a latency
        fault) to be answered, then hands over its log: nothing it acknowledges is missed.
        """
        self.clear_faults()
        self.fault(503, None, error="the sandbox is going down")
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            runs = self.runs()
            if all(run["status"] is not None for run in runs):
                break
            assert time.monotonic() < deadline, "the sandbox kept requests in flight"
            time.sleep(_POLL_S)
        self.received += runs
        self.kill()

    def all_runs(self) -> list[dict[str, Any]]:
        """Every run request received, by this instance and the stopped ones."""
        return self.received + (self.runs() if self.alive else [])


class IngressProcess(Child):
    def __init__(self, name: str, port: int, env: dict[str, str], log_path: Path) -> None:
        super().__init__(name, ["serve", "--port", str(port)], env, log_path)
        self.url = f"http://127.0.0.1:{port}"

    def ready(self) -> None:
        _wait_until_answers(self, f"{self.url}/healthz")


class Cluster:
    """Redis (append-only file on), the sandbox, ``ingresses`` ingress processes and ``workers`` workers.

    ``with Cluster(tmp_path, workers=3) as cluster: ...``; settings overrides go to every process.
    """

    def __init__(self, directory: Path, *, workers: int = 3, ingresses: int = 1, **overrides: Any) -> None:
        self.directory = directory
        (directory / "logs").mkdir(parents=True, exist_ok=True)
        config_path = directory / "routes.yaml"
        config_path.write_text(CONFIG, encoding="utf-8")
        self.redis = EmbeddedRedis(directory / "redis", port=free_port(), appendonly=True)
        sandbox_port = free_port()
        self.settings = fault_settings(
            self.redis.url, f"http://127.0.0.1:{sandbox_port}", config_path, **overrides
        )
        self.env = clean_environment(**self.settings.as_environment(), **{SIGNING_SECRET_ENV: SIGNING_SECRET})
        self.sandbox = SandboxProcess(sandbox_port, self.env, self.log("sandbox"))
        self.ingresses = [
            IngressProcess(f"ingress-{n}", free_port(), self.env, self.log(f"ingress-{n}"))
            for n in range(ingresses)
        ]
        self.workers: list[Child] = []
        self._worker_count = workers
        self.ended: list[Child] = []  # workers stopped on purpose

    def log(self, name: str) -> Path:
        return self.directory / "logs" / f"{name}.log"

    def start_worker(self) -> Child:
        """One more ``relay worker`` process (not waiting for it to start working)."""
        name = f"worker-{len(self.workers) + len(self.ended)}"
        worker = Child(name, ["worker"], self.env, self.log(name))
        worker.spawn()
        self.workers.append(worker)
        return worker

    def wait_for_workers(self) -> None:
        """Return once RQ lists every worker process as a worker of the queue."""
        for worker in self.workers:
            assert worker.process is not None
            wait_for_worker(self.settings, worker.process.pid)

    def kill_worker(self, worker: Child) -> None:
        """SIGKILL a worker (and its scheduler fork) as an OOM killer or a lost machine would."""
        worker.kill()
        self.workers.remove(worker)
        self.ended.append(worker)

    def restart_redis(self, down_s: float = 0.0) -> None:
        """Stop Redis (SIGTERM: it writes its append-only file out), wait ``down_s``, start it again on the
        same port and data directory."""
        self.redis.stop()
        time.sleep(down_s)  # the outage itself: how long Redis is away is what the scenario is about
        self.redis.start()

    def unexpected_exits(self) -> list[str]:
        """Processes that should run but have exited, with the end of their logs."""
        children: list[Child] = [*self.ingresses, *self.workers]
        return [
            f"{child.name} exited with {child.exit_code}:\n{child.log_tail()}"
            for child in children
            if child.process is not None and not child.alive
        ]

    def __enter__(self) -> Self:
        try:
            self.redis.start()
            # All at once: each child spends seconds importing before it serves.
            for child in [self.sandbox, *self.ingresses]:
                child.spawn()
            for _ in range(self._worker_count):
                self.start_worker()
            for child in [self.sandbox, *self.ingresses]:
                child.ready()
            self.wait_for_workers()
        except BaseException:
            self.close()
            raise
        return self

    def close(self) -> None:
        for child in [*self.workers, *self.ingresses]:
            child.kill()
        self.sandbox.kill()
        self.sandbox.http.close()
        self.redis.stop()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
