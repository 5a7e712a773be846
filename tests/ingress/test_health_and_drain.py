"""Health, readiness and drain: what a load balancer sees of the ingress, in one process or several."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from redis import Redis

from relay.dev.redis_server import free_port
from relay.ingress.app import create_app
from relay.mapping.config import RelayConfig
from relay.settings import Settings
from tests.conftest import answers, clean_environment, poll
from tests.e2e.test_cli_commands import Lines
from tests.worker.test_delivery_to_runner import FORM

DRAIN_DELAY_S = 1.5


@contextlib.contextmanager
def ingress(settings: Settings, *args: str, **env: str) -> Iterator[tuple[subprocess.Popen[str], str, Lines]]:
    """A real ``relay serve`` on a free port, ready; killed with its process group at the end."""
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "relay", "serve", "--port", str(port), *args],
        env=clean_environment(
            **{
                **settings.as_environment(),
                "RELAY_DRAIN_DELAY_S": str(DRAIN_DELAY_S),
                "RELAY_SHUTDOWN_GRACE_S": "20",
                "RELAY_LOG_FORMAT": "text",
                **env,
            }
        ),
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        lines = Lines(process.stderr)
        poll(lambda: answers(f"{url}/readyz") == 200 or None, timeout_s=30)
        yield process, url, lines
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=30)


def form(number: int | str) -> dict[str, Any]:
    return {**FORM, "submission_id": f"sub-{number}-{uuid.uuid4().hex[:8]}"}


async def test_healthz_answers_and_readyz_follows_redis(
    aiohttp_client: Any, settings: Settings, config: RelayConfig
) -> None:
    client = await aiohttp_client(create_app(settings, config))
    assert (await client.get("/healthz")).status == 200
    ready = await client.get("/readyz")
    assert ready.status == 200
    assert (await ready.json())["redis"] == "ok"

    nowhere = settings.model_copy(update={"redis_url": f"redis://127.0.0.1:{free_port()}/0"})
    down = await aiohttp_client(create_app(nowhere, config))
    assert (await down.get("/healthz")).status == 200  # alive, only not ready
    unready = await down.get("/readyz")
    assert unready.status == 503
    body = await unready.json()
    assert body["status"] == "unready"
    assert body["redis"].startswith("unreachable")


def test_sigterm_turns_not_ready_serves_through_the_drain_delay_then_exits(settings: Settings) -> None:
    with ingress(settings) as (process, url, lines):
        process.send_signal(signal.SIGTERM)
        lines.wait_for("draining")
        with httpx.Client(base_url=url) as http:
            readiness = http.get("/readyz")
            assert readiness.status_code == 503
            assert readiness.json()["status"] == "draining"
            # Still serving during the delay, asking the client to reconnect elsewhere.
            accepted = http.post("/hooks/website-form", json=form("late"))
            assert accepted.status_code == 202
            assert accepted.headers["Connection"] == "close"
        assert process.wait(timeout=DRAIN_DELAY_S + 15) == 0
        assert answers(f"{url}/healthz") is None  # the port is closed


def test_a_request_in_flight_at_sigterm_is_finished(settings: Settings, redis: Redis) -> None:
    body = json.dumps(form("in-flight")).encode()
    with ingress(settings) as (process, url, lines):
        port = int(url.rsplit(":", 1)[1])
        with socket.create_connection(("127.0.0.1", port), timeout=20) as sock:
            head = (
                f"POST /hooks/website-form HTTP/1.1\r\nHost: relay\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\n\r\n"
            )
            sock.sendall(head.encode() + body[:10])  # the request has started: its body is on the way
            process.send_signal(signal.SIGTERM)
            lines.wait_for("draining")
            # The drain delay passes and the port closes while the request is still unfinished.
            lines.wait_for("closing the port")
            poll(lambda: answers(f"{url}/healthz") is None or None, timeout_s=DRAIN_DELAY_S + 10)
            sock.sendall(body[10:])
            answer = sock.recv(65536).decode()
        assert answer.startswith("HTTP/1.1 202"), answer
        event_id = json.loads(answer.split("\r\n\r\n", 1)[1])["event_id"]
        assert redis.exists(f"relay:event:{event_id}")
        assert process.wait(timeout=20) == 0


async def _balanced_stream(urls: list[str], stop: asyncio.Event) -> list[int]:
    """Play a load balancer: send to the ready instances only, checking readiness as it goes."""
    statuses: list[int] = []
    async with httpx.AsyncClient(timeout=10) as http:

        async def ready(url: str) -> bool:
            try:
                return (await http.get(f"{url}/readyz")).status_code == 200
            except httpx.TransportError:
                return False

        number = 0
        while not stop.is_set():
            live = [url for url in urls if await ready(url)]
            for url in live:
                number += 1
                response = await http.post(f"{url}/hooks/website-form", json=form(number))
                statuses.append(response.status_code)
    return statuses


async def test_a_drained_instance_fails_no_request_of_a_load_balancer(settings: Settings) -> None:
    with ingress(settings) as (leaving, leaving_url, _), ingress(settings) as (_, staying_url, _):
        stop = asyncio.Event()
        stream = asyncio.create_task(_balanced_stream([leaving_url, staying_url], stop))
        await asyncio.sleep(0.5)  # let the stream run against both before one leaves
        leaving.send_signal(signal.SIGTERM)
        await asyncio.to_thread(leaving.wait, DRAIN_DELAY_S + 15)
        await asyncio.sleep(0.5)
        stop.set()
        statuses = await stream
    assert leaving.returncode == 0
    assert len(statuses) > 20
    assert set(statuses) == {202}


def _children(pid: int) -> set[int]:
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    return {int(child) for child in children}


def test_several_processes_share_the_port_and_a_dead_one_is_replaced(settings: Settings) -> None:
    with ingress(settings, "--processes", "2") as (supervisor, url, lines):
        pids = poll(lambda: children if len(children := _children(supervisor.pid)) == 2 else None)
        served = {httpx.post(f"{url}/hooks/website-form", json=form(n)).status_code for n in range(20)}
        assert served == {202}
        victim = min(pids)
        os.kill(victim, signal.SIGKILL)
        lines.wait_for("restarting")
        replaced = poll(lambda: c if len(c := _children(supervisor.pid)) == 2 and victim not in c else None)
        assert victim not in replaced
        poll(lambda: answers(f"{url}/readyz") == 200 or None)
        supervisor.send_signal(signal.SIGTERM)
        assert supervisor.wait(timeout=DRAIN_DELAY_S + 20) == 0
        for pid in replaced:  # every child drained and exited with it
            assert not Path(f"/proc/{pid}").exists() or "zombie" in Path(f"/proc/{pid}/status").read_text()


@pytest.mark.parametrize("processes", ["1", "2"])
def test_a_second_sigterm_stops_at_once(settings: Settings, processes: str) -> None:
    with ingress(settings, "--processes", processes, RELAY_DRAIN_DELAY_S="30") as (process, _, lines):
        process.send_signal(signal.SIGTERM)
        lines.wait_for("draining")
        started = time.monotonic()
        process.send_signal(signal.SIGTERM)
        try:
            assert process.wait(timeout=15) == 0
        except subprocess.TimeoutExpired:
            logged = lines.seen + list(lines.lines.queue)
            raise AssertionError(f"still running; it logged: {logged}") from None
        assert time.monotonic() - started < 15  # not the 30 s of the drain delay
