"""``relay dev``: Redis, the ingress, a worker and (without real credentials) the sandbox, on one machine.

The config file is watched: when it changes, the ingress reloads it and the worker is sent SIGHUP.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import shlex
import signal
import sys
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from pydantic import SecretStr
from rq import Worker

from relay.dev.redis_server import EmbeddedRedis
from relay.errors import ConfigError, RelayError
from relay.infra.redis_client import connect, describe_redis
from relay.infra.serving import start_site
from relay.ingress.app import create_app
from relay.ingress.console.access import ONCE_TTL_S, issue_login_link_token
from relay.ingress.reload import reload_config
from relay.mapping.config import RelayConfig, load_config
from relay.queue.jobs import relay_queue
from relay.runner.sandbox import SANDBOX_AUTH_ID, SANDBOX_AUTH_TOKEN, SandboxConfig, create_sandbox_app
from relay.settings import Settings

WORKER_START_TIMEOUT_S = 30.0
WORKER_STOP_TIMEOUT_S = 10.0
CONFIG_POLL_S = 1.0


def sample_curls(config: RelayConfig, config_path: Path, base_url: str) -> list[str]:
    """A ready-to-paste curl per source with a sample body in ``samples/<source>.json`` beside the config."""
    curls = []
    for source in config.sources:
        sample = config_path.parent / "samples" / f"{source}.json"
        if sample.is_file():
            body = json.dumps(json.loads(sample.read_text(encoding="utf-8")), separators=(",", ":"))
            header = "-H 'Content-Type: application/json'"
            curls.append(f"curl -sS {base_url}/hooks/{source} {header} -d {shlex.quote(body)}")
    return curls


def wait_for_worker(settings: Settings, pid: int, cancelled: threading.Event | None = None) -> None:
    """Return once the worker process is registered with RQ (listening on the queue), or is ``cancelled``."""
    cancelled = cancelled or threading.Event()
    redis = connect(settings)
    queue = relay_queue(redis, settings)
    deadline = time.monotonic() + WORKER_START_TIMEOUT_S
    try:
        while not any(worker.pid == pid for worker in Worker.all(queue=queue)):
            if time.monotonic() > deadline:
                raise RelayError(f"the worker did not start within {WORKER_START_TIMEOUT_S:.0f} s")
            if cancelled.wait(0.05):  # polling RQ's worker registry with a deadline
                return
    finally:
        redis.close()


def _outcome_command(settings: Settings, base_url: str) -> str:
    """How to read an event's outcome: ``GET /events/{id}`` takes the admin token (named, never shown).

    The curl line works only where the shell holds the variable: not for a token made for the session."""
    if os.environ.get("RELAY_ADMIN_TOKEN", "").strip():
        return f'curl -sS -H "Authorization: Bearer $RELAY_ADMIN_TOKEN" {base_url}/events/<event_id>'
    return f"RELAY_REDIS_URL={describe_redis(settings)} relay events show <event_id>"


def _banner(settings: Settings, config: RelayConfig, with_sandbox: bool, console_link: str) -> str:
    base_url = f"http://{settings.host}:{settings.port}"
    lines = [
        "",
        f"phlo-relay is up: {base_url}  (Redis {describe_redis(settings)}, runner {settings.runner_url})",
        "Send a sample event:",
        *(f"  {curl}" for curl in sample_curls(config, settings.config_path, base_url)),
        f"Then see its outcome: {_outcome_command(settings, base_url)}",
        f"The console (this link logs you in once, within {ONCE_TTL_S // 60} min): {base_url}{console_link}",
    ]
    if with_sandbox:
        lines.append(f"Runs the sandbox received: curl -sS {settings.runner_url}/_sandbox/runs")
    lines.append("Ctrl-C stops everything.")
    return "\n".join(lines)


def console_login_link(settings: Settings) -> str:
    """The path of a one-time console login (``/console/login?once=...``), stored in Redis."""
    redis = connect(settings)
    try:
        return f"/console/login?once={issue_login_link_token(redis)}"
    finally:
        redis.close()


def with_admin_token(settings: Settings) -> Settings:
    """``settings`` with an admin token: a random one for this session when RELAY_ADMIN_TOKEN is not set."""
    if settings.admin_token is not None and settings.admin_token.get_secret_value().strip():
        return settings
    print(
        "RELAY_ADMIN_TOKEN is not set: a random admin token was made for this session (not shown; "
        "the console link below logs you in).",
        flush=True,
    )
    return settings.model_copy(update={"admin_token": SecretStr(secrets.token_urlsafe(32))})


def _file_bytes(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except OSError:  # an editor's save may remove the file for a moment
        return None


async def watch_file(
    path: Path, on_change: Callable[[], Awaitable[None]], interval_s: float = CONFIG_POLL_S
) -> None:
    """Call ``on_change`` whenever the file's bytes change (polled: no inotify needed), until cancelled."""
    seen = _file_bytes(path)
    while True:
        await asyncio.sleep(interval_s)  # the poll interval itself, not a wait for an event
        now = _file_bytes(path)
        if now is not None and now != seen:
            seen = now
            await on_change()


async def _first(*awaitables: Awaitable[object]) -> None:
    """Wait until the first of ``awaitables`` ends (raising its error), cancelling the others."""
    tasks = [asyncio.ensure_future(awaitable) for awaitable in awaitables]
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        for task in done:
            task.result()
    finally:
        for task in tasks:
            task.cancel()


async def _serve(settings: Settings, config: RelayConfig, sandbox_port: int | None) -> None:
    # Ctrl-C and SIGTERM stop everything in order from the first moment, start-up included.
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    runners = []
    worker: asyncio.subprocess.Process | None = None
    try:
        if sandbox_port is not None:
            sandbox = SandboxConfig(
                credentials={SANDBOX_AUTH_ID: SANDBOX_AUTH_TOKEN}, phlo_ids=config.phlo_ids()
            )
            runners.append((await start_site(create_sandbox_app(sandbox), "127.0.0.1", sandbox_port))[0])
        app = create_app(settings, config)
        runners.append((await start_site(app, settings.host, settings.port))[0])
        # One worker process: it holds RELAY_WORKER_CONCURRENCY runs in flight.
        worker = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "relay",
            "worker",
            env={**os.environ, **settings.as_environment()},
            start_new_session=True,  # stopped by us, in order, not by the terminal's Ctrl-C
        )
        cancelled = threading.Event()  # a stop during start-up ends the thread waiting for the worker
        try:
            registered = asyncio.to_thread(wait_for_worker, settings, worker.pid, cancelled)
            await _first(registered, worker.wait(), stop.wait())
        finally:
            cancelled.set()
        if not stop.is_set() and worker.returncode is None:
            link = await asyncio.to_thread(console_login_link, settings)
            print(_banner(settings, config, sandbox_port is not None, link), flush=True)
            running = worker

            async def reload() -> None:
                with contextlib.suppress(ConfigError):  # logged; the old config stays in force
                    await reload_config(app, "file changed")
                if running.returncode is None:
                    running.send_signal(signal.SIGHUP)

            await _first(worker.wait(), stop.wait(), watch_file(settings.config_path, reload))
        if not stop.is_set():
            raise RelayError(f"the worker exited unexpectedly with code {worker.returncode}")
    finally:
        if worker is not None and worker.returncode is None:
            worker.terminate()  # a warm shutdown: the runs in flight finish first
            try:
                await asyncio.wait_for(worker.wait(), WORKER_STOP_TIMEOUT_S)
            except TimeoutError:
                worker.terminate()  # a second signal: it requeues the runs still in flight, at once
                try:
                    await asyncio.wait_for(worker.wait(), WORKER_STOP_TIMEOUT_S)
                except TimeoutError:
                    worker.kill()
                    await worker.wait()
        for runner in reversed(runners):
            await runner.cleanup()


def run_dev(settings: Settings, data_dir: Path, sandbox_port: int) -> int:
    """Run everything until Ctrl-C; real Plivo credentials in the environment skip the sandbox."""
    use_sandbox = settings.account("default") is None
    if use_sandbox:
        settings = settings.model_copy(
            update={
                "runner_url": f"http://127.0.0.1:{sandbox_port}",
                "plivo_auth_id": SANDBOX_AUTH_ID,
                "plivo_auth_token": SecretStr(SANDBOX_AUTH_TOKEN),
            }
        )
    config = load_config(settings.config_path, settings.account_names())
    settings = with_admin_token(settings)
    with EmbeddedRedis(data_dir / "redis") as redis_server:
        settings = settings.model_copy(update={"redis_url": redis_server.url})
        asyncio.run(_serve(settings, config, sandbox_port if use_sandbox else None))
    print("phlo-relay dev stopped.", flush=True)
    return 0
