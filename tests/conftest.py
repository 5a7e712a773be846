"""Real parts for every test: a private Redis server on a free port, and the runner sandbox over HTTP.

Over the whole session, every log record of the test process and every response body an aiohttp test
client (or send_raw) reads is checked for the secrets tests register with ``watch_secrets``
(no_secret_leaks). Log lines of child processes (``relay worker``) are not seen here.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn, TypeVar, cast

import httpx
import pytest
from aiohttp import ClientSession, TraceConfig, TraceResponseChunkReceivedParams, web
from aiohttp.test_utils import TestServer
from hypothesis import settings as hypothesis_settings
from pydantic import SecretStr
from pytest_aiohttp import AiohttpClient
from redis import Redis

from relay.dev.redis_server import EmbeddedRedis
from relay.infra.logs import AccessLogger
from relay.mapping.config import RelayConfig, parse_config
from relay.runner.sandbox import SANDBOX_AUTH_ID, SANDBOX_AUTH_TOKEN, SandboxConfig, SandboxThread
from relay.settings import Settings, load_settings

T = TypeVar("T")

# Hypothesis. `ci`, the default, is derandomized: each test draws the same examples every run (from a seed
# fixed by the test's own code), so a failure in CI fails again on any machine, and no example database is
# needed in a fresh clone. Its counts keep tests/e2e/test_fuzz.py well under a minute on two cores. `long`
# (HYPOTHESIS_PROFILE=long, for release checks) draws ten times as many, fresh each run, and keeps failing
# examples in .hypothesis/ to replay first next time. No deadline: timings on a shared machine vary.
hypothesis_settings.register_profile("ci", max_examples=100, derandomize=True, database=None, deadline=None)
hypothesis_settings.register_profile("long", max_examples=1000, deadline=None)
hypothesis_settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
KNOWN_PHLO = "11111111-aaaa-4bbb-8ccc-000000000001"
ALERT_PHLO = "11111111-aaaa-4bbb-8ccc-000000000002"
UNKNOWN_PHLO = "99999999-dead-4bbb-8ccc-000000000000"

TEST_CONFIG = f"""
sources:
  website-form:
    event_id: {{path: submission_id}}
    event_type: {{path: form}}
  hubspot-workflow:
    event_id: {{header: X-Request-Id}}
  typeform:
    event_id: {{path: event_id}}
    event_type: {{path: event_type}}
  misrouted:
    event_id: {{path: id}}

routes:
  - name: callback
    source: website-form
    events: [callback-request]
    phlo_id: {KNOWN_PHLO}
    payload:
      from: "+14155550100"
      to: {{path: phone, required: true}}
      name: {{path: name, default: there}}
  - name: sales-alert
    source: website-form
    events: [callback-request]
    when: "company_size == '500+'"
    phlo_id: {ALERT_PHLO}
    payload:
      to: "+14155550199"
      lead: {{path: phone}}
  - name: hubspot-sms
    source: hubspot-workflow
    phlo_id: {KNOWN_PHLO}
    payload:
      from: "+14155550100"
      to: {{path: properties.phone.value, required: true}}
  - name: typeform-call
    source: typeform
    events: [form_response]
    phlo_id: {KNOWN_PHLO}
    payload:
      to: {{path: "form_response.answers[?field.ref=='phone'] | [0].phone_number", required: true}}
  - name: not-deployed
    source: misrouted
    phlo_id: {UNKNOWN_PHLO}
    payload: {{to: "+14155550100"}}
"""


# -- no secret in any log line or response body, over the whole session -----------------------------------

WATCHED_SECRETS: set[str] = {SANDBOX_AUTH_TOKEN}
LEAKS: list[str] = []


def watch_secrets(*secrets: str) -> None:
    """Secrets (tokens, signing secrets, passwords) no log line or response body may ever show."""
    WATCHED_SECRETS.update(secret for secret in secrets if len(secret) >= 8)  # shorter ones match by chance


def check_for_leaks(where: str, text: str | bytes) -> None:
    """Note every watched secret ``text`` shows; no_secret_leaks fails the session on any."""
    shown = text.decode("utf-8", "replace") if isinstance(text, bytes) else text
    for secret in WATCHED_SECRETS:
        if secret in shown:
            LEAKS.append(f"{where}: {shown.replace(secret, '<SECRET>')[:300]!r}")


class _LeakHandler(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        check_for_leaks(f"log record of {record.name}", self.format(record))  # with any traceback


async def _check_chunk(
    session: ClientSession, context: object, params: TraceResponseChunkReceivedParams
) -> None:
    check_for_leaks(f"answer to {params.method} {params.url.path}", params.chunk)


@pytest.fixture
def aiohttp_client(aiohttp_client: AiohttpClient) -> AiohttpClient:
    """pytest-aiohttp's factory: its servers log access as the relay's do, and every answer its clients
    read is checked for watched secrets."""

    async def make(app: Any, **kwargs: Any) -> Any:
        if isinstance(app, web.Application):  # TestServer drops constructor options: start it here
            app = TestServer(app)
            await app.start_server(access_log_class=AccessLogger)
        trace = TraceConfig()
        trace.on_response_chunk_received.append(_check_chunk)
        kwargs["trace_configs"] = [*kwargs.get("trace_configs", []), trace]
        return await aiohttp_client(app, **kwargs)

    return cast(AiohttpClient, make)


@pytest.fixture(scope="session", autouse=True)
def no_secret_leaks() -> Iterator[None]:
    """Fail the session if any log record (DEBUG and up) or checked answer showed a watched secret."""
    handler = _LeakHandler(logging.DEBUG)
    handler.setFormatter(logging.Formatter("%(name)s %(message)s"))
    root = logging.getLogger()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    try:
        yield
    finally:
        root.removeHandler(handler)
        root.setLevel(level)
    assert not LEAKS, "secrets shown:\n" + "\n".join(LEAKS[:20])


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedRedis]:
    with EmbeddedRedis(tmp_path_factory.mktemp("redis"), appendonly=False) as server:
        yield server


@pytest.fixture
def redis(redis_server: EmbeddedRedis) -> Iterator[Redis]:
    client = Redis.from_url(redis_server.url)
    client.flushdb()
    yield client
    client.close()


@pytest.fixture(scope="session")
def sandbox_server() -> Iterator[SandboxThread]:
    config = SandboxConfig(
        credentials={SANDBOX_AUTH_ID: SANDBOX_AUTH_TOKEN}, phlo_ids={KNOWN_PHLO, ALERT_PHLO}
    )
    with SandboxThread(config) as sandbox:
        yield sandbox


class Sandbox:
    """Test handle on the sandbox's control API (real HTTP)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.http = httpx.Client(base_url=url, timeout=10)

    def runs(self) -> list[dict[str, Any]]:
        runs: list[dict[str, Any]] = self.http.get("/_sandbox/runs").raise_for_status().json()["runs"]
        return runs

    def fail(self, status: int | None, count: int | None, **extra: Any) -> None:
        self.http.post(
            "/_sandbox/faults", json={"status": status, "count": count, **extra}
        ).raise_for_status()

    def reset(self) -> None:
        self.http.delete("/_sandbox/runs").raise_for_status()
        self.http.delete("/_sandbox/faults").raise_for_status()


def sandbox_handle(server: SandboxThread) -> Iterator[Sandbox]:
    """A test's handle on a sandbox: no runs or faults before the test, none left after it."""
    handle = Sandbox(server.url)
    handle.reset()
    yield handle
    handle.reset()
    handle.http.close()


@pytest.fixture
def sandbox(sandbox_server: SandboxThread) -> Iterator[Sandbox]:
    yield from sandbox_handle(sandbox_server)


@pytest.fixture
def config() -> RelayConfig:
    return parse_config(TEST_CONFIG, "test-config.yaml")


@pytest.fixture
def settings(
    redis: Redis, redis_server: EmbeddedRedis, sandbox_server: SandboxThread, tmp_path: Path
) -> Settings:
    """Settings of a test: an emptied Redis, the sandbox, immediate retries, no circuit breaker."""
    config_path = tmp_path / "routes.yaml"
    config_path.write_text(TEST_CONFIG, encoding="utf-8")
    return load_settings(
        _env_file=None,
        redis_url=redis_server.url,
        runner_url=sandbox_server.url,
        plivo_auth_id=SANDBOX_AUTH_ID,
        plivo_auth_token=SANDBOX_AUTH_TOKEN,
        config_path=config_path,
        retry_base_delay_s=0,
        runner_read_timeout_s=2.0,
        breaker_failures=1000,  # tests of the breaker turn it on; elsewhere a failing runner stays failing
    )


def assert_attempts_are_its_attempt_steps(run: dict[str, Any]) -> None:
    """A run's attempt count is exactly the attempts its history records, numbered 1, 2, ...: a wait (breaker,
    rate limit, pause, hold) appends a step without an attempt and never spends one."""
    attempted = sorted({step["attempt"] for step in run["history"] if step.get("attempt")})
    assert attempted == list(range(1, run["attempts"] + 1)), (run["attempts"], run["history"])


def missing(reason: str, switch: str = "RELAY_REQUIRE_TOOLS") -> NoReturn:
    """Skip a test whose system tool is missing, saying what to install; under ``switch=1`` fail instead.

    CI (``.ci/run``) installs every such tool and sets the switches, so no test can skip there unseen.
    """
    if os.environ.get(switch) == "1":
        pytest.fail(f"{switch}=1 but {reason}")
    pytest.skip(reason)


def clean_environment(**extra: str) -> dict[str, str]:
    """The environment of a child process without any relay or Plivo variable of this machine."""
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("RELAY_", "PLIVO_")) and key not in ("REDIS_URL", "PROMETHEUS_MULTIPROC_DIR")
    }
    return {**env, **extra}


@contextlib.contextmanager
def running_worker(settings: Settings) -> Iterator[subprocess.Popen[bytes]]:
    """A real ``relay worker`` process for the duration of the block; stopped with SIGTERM (warm)."""
    worker = subprocess.Popen(
        [sys.executable, "-m", "relay", "worker"],
        env=clean_environment(**settings.as_environment()),
        stderr=subprocess.DEVNULL,
    )
    try:
        yield worker
    finally:
        worker.terminate()
        worker.wait(timeout=30)


def drain_queue(settings: Settings, *worker_args: str) -> None:
    """Run a real ``relay worker --burst`` until the relay's queue is empty (immediate retries included)."""
    result = subprocess.run(
        [sys.executable, "-m", "relay", "worker", "--burst", *worker_args],
        env=clean_environment(**settings.as_environment()),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr


def assert_sdk_request(run: dict[str, Any], phlo_id: str, payload: dict[str, Any]) -> None:
    """A request the sandbox recorded is exactly what plivo-python sends for this run."""
    assert run["method"] == "POST"
    assert run["path"] == f"/v1/account/{SANDBOX_AUTH_ID}/phlo/{phlo_id}/"
    assert run["auth_id"] == SANDBOX_AUTH_ID
    headers = {name.lower(): value for name, value in run["headers"].items()}
    assert headers["content-type"] == "application/json"
    assert headers["accept"] == "application/json"
    assert headers["user-agent"] == f"plivo-python/4.63.0 (Python: {platform.python_version()})"
    assert headers["authorization"] == "Basic ***"  # the sandbox masks what it records
    assert run["raw_body"] == json.dumps(payload)


def poll(check: Callable[[], T | None], timeout_s: float = 20.0) -> T:
    """Poll ``check`` until it returns a value, with a deadline."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = check()
        if value is not None:
            return value
        assert time.monotonic() < deadline, "condition not reached before the deadline"
        time.sleep(0.02)


@dataclass(frozen=True)
class RawResponse:
    """What a server answered to bytes sent over a plain socket."""

    status: int
    headers: dict[str, str]  # names in lower case
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


async def send_raw(port: int, data: bytes, host: str = "127.0.0.1", timeout_s: float = 10.0) -> RawResponse:
    """Send bytes no HTTP client would (bytes that are not UTF-8 in a header, ...) and read the answer."""
    reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write(data)
        await writer.drain()
        async with asyncio.timeout(timeout_s):
            head = await reader.readuntil(b"\r\n\r\n")
            status_line, *lines = head.decode("latin-1").split("\r\n")
            headers = {
                name.strip().lower(): value.strip()
                for name, _, value in (line.partition(":") for line in lines if line)
            }
            body = await reader.readexactly(int(headers.get("content-length", "0")))
    finally:
        writer.close()
    check_for_leaks(f"raw answer to {data[:60]!r}", head + body)
    return RawResponse(int(status_line.split()[1]), headers, body)


def answers(url: str) -> int | None:
    """The status a URL answers with, or None while nothing listens there."""
    try:
        return httpx.get(url).status_code
    except httpx.ConnectError:
        return None


# -- the admin token: /events/..., /metrics and /admin/... answer only with it ----------------------------

SUITE_ADMIN_TOKEN = "admin-token-of-the-test-suite-51d2"
ADMIN_HEADERS = {"Authorization": f"Bearer {SUITE_ADMIN_TOKEN}"}
watch_secrets(SUITE_ADMIN_TOKEN)


def with_admin_token(settings: Settings) -> Settings:
    """``settings`` with RELAY_ADMIN_TOKEN set: send ADMIN_HEADERS to read /events/... and /metrics."""
    return settings.model_copy(update={"admin_token": SecretStr(SUITE_ADMIN_TOKEN)})
