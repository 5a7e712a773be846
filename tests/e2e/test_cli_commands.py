"""The commands as a user runs them: `relay dev`, `relay serve` + `relay worker`, `relay events show`."""

from __future__ import annotations

import asyncio
import json
import os
import queue
import shlex
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from redis import Redis
from redis.exceptions import ConnectionError as RedisConnectionError

from relay.dev.redis_server import free_port
from relay.ingress.app import create_app
from relay.mapping.config import load_config
from relay.queue import records
from relay.settings import Settings
from tests.conftest import (
    ADMIN_HEADERS,
    Sandbox,
    answers,
    clean_environment,
    drain_queue,
    poll,
    running_worker,
    with_admin_token,
)
from tests.worker.test_delivery_to_runner import FORM

ROOT = Path(__file__).resolve().parents[2]


class Lines:
    """The output lines of a child process, read on a thread so a test can wait for one with a deadline."""

    def __init__(self, stream: Any) -> None:
        self.lines: queue.Queue[str] = queue.Queue()
        self.seen: list[str] = []
        self.reader = threading.Thread(target=self._read, args=(stream,), daemon=True)
        self.reader.start()

    def _read(self, stream: Any) -> None:
        for line in stream:
            self.lines.put(line.rstrip("\n"))

    def wait_for(self, text: str, timeout_s: float = 30.0) -> str:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                line = self.lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(f"{text!r} not printed; output so far: {self.seen}") from None
            self.seen.append(line)
            if text in line:
                return line

    def rest(self, timeout_s: float = 10.0) -> list[str]:
        """Every line, once the process has closed its output."""
        self.reader.join(timeout_s)
        while not self.lines.empty():
            self.seen.append(self.lines.get())
        return self.seen


def send_curl(line: str) -> httpx.Response:
    """Send what a printed `curl -sS URL -H 'K: V' -d BODY` line says, exactly."""
    words = shlex.split(line.strip())
    assert words[:2] == ["curl", "-sS"]
    url, headers, body = words[2], {}, None
    for flag, value in zip(words[3::2], words[4::2], strict=True):
        if flag == "-H":
            name, _, header_value = value.partition(":")
            headers[name.strip()] = header_value.strip()
        else:
            assert flag == "-d"
            body = value
    return httpx.post(url, headers=headers, content=body)


@pytest.fixture
def dev(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[str], Lines, int, int]]:
    port, sandbox_port = free_port(), free_port()
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "relay",
            "dev",
            "--data-dir",
            str(tmp_path),
            "--sandbox-port",
            str(sandbox_port),
        ],
        cwd=ROOT,
        env=clean_environment(RELAY_PORT=str(port)),  # no token: relay dev makes one (not shown)
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        yield process, Lines(process.stdout), port, sandbox_port
    finally:
        if process.poll() is None:  # a failed test: stop it as a user would, so Redis is stopped too
            process.send_signal(signal.SIGINT)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def test_relay_dev_printed_curl_reaches_the_sandbox_and_ctrl_c_stops_everything(
    dev: tuple[subprocess.Popen[str], Lines, int, int],
) -> None:
    process, output, port, sandbox_port = dev
    output.wait_for("RELAY_ADMIN_TOKEN is not set: a random admin token was made for this session")
    up = output.wait_for("phlo-relay is up")
    redis_url = up.split("(Redis ")[1].split(",")[0]
    curl = output.wait_for("/hooks/website-form")
    outcome = output.wait_for("Then see its outcome")
    assert "relay events show <event_id>" in outcome  # the made token is in no shell: read Redis
    console_link = output.wait_for("/console/login?once=").split(": ")[-1]
    output.wait_for("Ctrl-C stops everything")
    # The console link logs in once: a session cookie, the Overview; a second use is refused.
    with httpx.Client(follow_redirects=True) as browser:
        login = browser.get(console_link)
        assert login.status_code == 200 and login.url.path == "/console/", login.text
        assert "Queue" in login.text
    assert httpx.get(console_link).status_code == 401

    sent_at = time.monotonic()
    response = send_curl(curl)
    assert response.status_code == 202, response.text
    event_id, jobs = response.json()["event_id"], response.json()["jobs"]

    def all_runs() -> list[dict[str, Any]] | None:
        runs: list[dict[str, Any]] = httpx.get(f"http://127.0.0.1:{sandbox_port}/_sandbox/runs").json()[
            "runs"
        ]
        return runs if len(runs) == len(jobs) else None

    runs = poll(all_runs)
    print(f"printed curl to run recorded at the sandbox: {time.monotonic() - sent_at:.3f} s")
    assert {run["status"] for run in runs} == {201}

    # The session's token is not shown, so the outcome is read where `relay events show` reads it.
    assert httpx.get(f"http://127.0.0.1:{port}/events/{event_id}").status_code == 401
    records_redis = Redis.from_url(redis_url)

    def succeeded() -> records.EventView | None:
        view = records.read_event(records_redis, event_id)
        done = view is not None and all(run.status == "succeeded" for run in view.runs)
        return view if done else None

    view = poll(succeeded)
    records_redis.close()
    assert {run.phlo_run_id for run in view.runs} == {run["api_id"] for run in runs}

    process.send_signal(signal.SIGINT)
    assert process.wait(timeout=30) == 0
    output.wait_for("phlo-relay dev stopped")
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"http://127.0.0.1:{port}/healthz")
    with pytest.raises(RedisConnectionError):  # the embedded Redis is stopped too
        Redis.from_url(redis_url, socket_connect_timeout=1, retry=None).ping()


def descendants(pid: int) -> dict[int, str]:
    """Every living process descended from ``pid`` (other sessions included), with its start time."""
    children: dict[int, list[int]] = {}
    started: dict[int, str] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue  # gone while we looked
            children.setdefault(int(fields[1]), []).append(int(entry.name))
            started[int(entry.name)] = fields[19]
    found: dict[int, str] = {}
    todo = list(children.get(pid, []))
    while todo:
        child = todo.pop()
        found[child] = started[child]
        todo.extend(children.get(child, []))
    return found


def alive(processes: dict[int, str]) -> list[int]:
    """The processes of ``processes`` still running (the same pid with the same start time, not a zombie)."""
    left = []
    for pid, start in processes.items():
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[19] == start and fields[0] != "Z":
            left.append(pid)
    return left


def test_ctrl_c_in_the_terminal_running_tasks_py_run_stops_everything_without_a_traceback(
    tmp_path: Path,
) -> None:
    port, sandbox_port = free_port(), free_port()
    command = ["tasks.py", "run", "--data-dir", str(tmp_path), "--sandbox-port", str(sandbox_port)]
    process = subprocess.Popen(
        [sys.executable, *command],
        cwd=ROOT,
        env=clean_environment(RELAY_PORT=str(port)),  # no token: relay dev makes one (not shown)
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # its own process group, as a terminal's foreground job has
    )
    output = Lines(process.stdout)
    try:
        output.wait_for("Ctrl-C stops everything", timeout_s=120)  # a first install may run first
        tree = descendants(process.pid)
        assert len(tree) >= 3, tree  # relay dev, its worker and the embedded Redis at least
        os.killpg(process.pid, signal.SIGINT)  # what the terminal does on Ctrl-C
        code = process.wait(timeout=Settings().shutdown_grace_s)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    lines = output.rest()
    assert code == 0, lines
    assert "phlo-relay dev stopped." in lines
    assert not [line for line in lines if "Traceback" in line], lines
    assert alive(tree) == []


def test_serve_and_worker_processes_deliver_and_events_show_reads_the_outcome(
    settings: Settings, sandbox: Sandbox
) -> None:
    port = free_port()
    env = clean_environment(**{**settings.as_environment(), "RELAY_PORT": str(port)})
    serve = subprocess.Popen(
        [sys.executable, "-m", "relay", "serve"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        with running_worker(settings) as worker:
            poll(lambda: answers(f"http://127.0.0.1:{port}/healthz"))
            response = httpx.post(f"http://127.0.0.1:{port}/hooks/website-form", json=FORM)
            assert response.status_code == 202
            event_id = response.json()["event_id"]

            def shown() -> dict[str, Any] | None:
                result = subprocess.run(
                    [sys.executable, "-m", "relay", "events", "show", event_id],
                    env=env,
                    capture_output=True,
                    text=True,
                    check=True,
                )
                view: dict[str, Any] = json.loads(result.stdout)
                return view if view["runs"][0]["status"] == "succeeded" else None

            view = poll(shown, timeout_s=30)
            [run] = sandbox.runs()
            assert view["runs"][0]["phlo_run_id"] == run["api_id"]
        assert worker.returncode == 0  # RQ's warm shutdown on SIGTERM
    finally:
        serve.terminate()
        serve.wait(timeout=30)


def test_events_show_unknown_event_exits_1(settings: Settings) -> None:
    env = clean_environment(**settings.as_environment())
    result = subprocess.run(
        [sys.executable, "-m", "relay", "events", "show", "evt_missing"],
        env=env,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 1
    assert "no event 'evt_missing'" in result.stderr


async def test_worker_pool_processes_deliver_every_run(
    aiohttp_client: Any, settings: Settings, sandbox: Sandbox
) -> None:
    client = await aiohttp_client(create_app(with_admin_token(settings), load_config(settings.config_path)))
    event_ids = []
    for number in range(12):
        response = await client.post("/hooks/website-form", json={**FORM, "submission_id": f"sub-{number}"})
        assert response.status == 202
        event_ids.append((await response.json())["event_id"])
    drain_queue(settings, "--processes", "2")
    assert len(sandbox.runs()) == 12
    for event_id in event_ids:
        view = await (await client.get(f"/events/{event_id}", headers=ADMIN_HEADERS)).json()
        assert [run["status"] for run in view["runs"]] == ["succeeded"]


def test_worker_refuses_to_start_without_the_credentials_its_routes_need(settings: Settings) -> None:
    env = {key: value for key, value in settings.as_environment().items() if not key.startswith("PLIVO_")}
    result = subprocess.run(
        [sys.executable, "-m", "relay", "worker", "--burst"],
        env=clean_environment(**env),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "PLIVO_AUTH_ID and PLIVO_AUTH_TOKEN are not set" in result.stderr
    assert "callback" in result.stderr


async def test_a_long_running_worker_retries_after_the_delay_through_rqs_scheduler(
    aiohttp_client: Any, settings: Settings, sandbox: Sandbox
) -> None:
    delayed = with_admin_token(settings).model_copy(update={"retry_base_delay_s": 1})
    sandbox.fail(503, 1)
    client = await aiohttp_client(create_app(delayed, load_config(delayed.config_path)))
    response = await client.post("/hooks/website-form", json=FORM)
    event_id = (await response.json())["event_id"]

    def delivered() -> list[dict[str, Any]] | None:
        runs = sandbox.runs()
        return runs if len(runs) == 2 else None

    with running_worker(delayed):
        runs = await asyncio.to_thread(poll, delivered, 30.0)
    assert [run["status"] for run in runs] == [503, 201]
    # Scheduled, not retried at once (RQ keeps schedule times in whole seconds, hence the margin).
    assert runs[1]["received_at"] - runs[0]["received_at"] >= 0.5
    [run] = (await (await client.get(f"/events/{event_id}", headers=ADMIN_HEADERS)).json())["runs"]
    assert run["status"] == "succeeded"
    assert run["attempts"] == 2
