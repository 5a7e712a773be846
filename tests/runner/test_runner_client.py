"""The PHLO runner client over real HTTP: against the sandbox, and a tiny aiohttp server of this file."""

from __future__ import annotations

import asyncio
import base64
import json
import math
import traceback
import uuid
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import pytest
from aiohttp import web
from pydantic import SecretStr
from pytest_aiohttp import AiohttpServer

from relay.dev.redis_server import free_port
from relay.errors import RunnerError, RunnerRejected, RunnerUnreachable
from relay.runner.client import MAX_ERROR_CHARS, RunnerClient, RunResult, encode_payload, run_path
from relay.runner.sandbox import SANDBOX_AUTH_ID, SANDBOX_AUTH_TOKEN
from relay.settings import PlivoAccount
from tests.conftest import KNOWN_PHLO, UNKNOWN_PHLO, Sandbox, assert_sdk_request

WRONG_TOKEN = "wrong-token-5c0e8d1f7a"
ACCOUNT = PlivoAccount(auth_id=SANDBOX_AUTH_ID, auth_token=SecretStr(SANDBOX_AUTH_TOKEN))
WRONG_ACCOUNT = PlivoAccount(auth_id=SANDBOX_AUTH_ID, auth_token=SecretStr(WRONG_TOKEN))


def _secrets() -> dict[str, str]:
    """Each token, and the Basic credentials carrying it, by a label that is safe to print."""
    found: dict[str, str] = {}
    for label, token in (("sandbox token", SANDBOX_AUTH_TOKEN), ("wrong token", WRONG_TOKEN)):
        found[label] = token
        found[f"{label} (Basic)"] = base64.b64encode(f"{SANDBOX_AUTH_ID}:{token}".encode()).decode()
    return found


SECRETS = _secrets()
E = TypeVar("E", bound=RunnerError)


def assert_no_secret(exc: BaseException) -> None:
    """No token in the exception's str, repr, args, formatted traceback, nor in any exception it chains."""
    texts = ["".join(traceback.format_exception(exc))]
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        texts += [str(current), repr(current), *(str(arg) for arg in current.args)]
        texts += [repr(arg) for arg in current.args]
        current = current.__cause__ or current.__context__
    # Only labels are compared and shown: a failing assertion never prints a token itself.
    leaks = sorted({label for label, secret in SECRETS.items() for text in texts if secret in text})
    assert leaks == []


def raised(kind: type[E], call: Callable[[], RunResult]) -> E:
    """The ``kind`` exception ``call`` raises, checked to carry no token."""
    with pytest.raises(kind) as info:
        call()
    assert_no_secret(info.value)
    return info.value


@pytest.fixture
def runner(sandbox: Sandbox) -> Iterator[RunnerClient]:
    with RunnerClient(sandbox.url, connect_timeout_s=3.0, read_timeout_s=5.0) as client:
        yield client


# --- encode_payload and run_path ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("payload", "body"),
    [
        (None, b"{}"),
        ({}, b"{}"),
        ({"to": None}, b"{}"),
        ({"from": "+14155550100", "to": "+14155550101"}, b'{"from": "+14155550100", "to": "+14155550101"}'),
        ({"to": "+1", "skip": None, "n": 3}, b'{"to": "+1", "n": 3}'),
        ({"name": "Zo\u00eb \u2713"}, b'{"name": "Zo\\u00eb \\u2713"}'),
        ({"z": 1, "a": [1, 2.5, True], "m": {"k": "v"}}, b'{"z": 1, "a": [1, 2.5, true], "m": {"k": "v"}}'),
    ],
)
def test_encode_payload_is_json_dumps_defaults_without_none(
    payload: dict[str, Any] | None, body: bytes
) -> None:
    assert encode_payload(payload) == body
    cleaned = {key: value for key, value in (payload or {}).items() if value is not None}
    assert encode_payload(payload) == json.dumps(cleaned).encode()


def test_encode_payload_refuses_nan_like_requests() -> None:
    with pytest.raises(ValueError):
        encode_payload({"x": math.nan})


@pytest.mark.parametrize(
    ("auth_id", "phlo_id", "path"),
    [
        (SANDBOX_AUTH_ID, KNOWN_PHLO, f"/v1/account/{SANDBOX_AUTH_ID}/phlo/{KNOWN_PHLO}/"),
        ("MA/../x", "a b/c", "/v1/account/MA%2F..%2Fx/phlo/a%20b%2Fc/"),
        ("MA", "q?x=1#frag", "/v1/account/MA/phlo/q%3Fx%3D1%23frag/"),
        ("MA", "50%&+;", "/v1/account/MA/phlo/50%25%26%2B%3B/"),
        ("MA", "caf\u00e9", "/v1/account/MA/phlo/caf%C3%A9/"),
        ("MA", "..", "/v1/account/MA/phlo/../"),
    ],
)
def test_run_path_quotes_each_segment(auth_id: str, phlo_id: str, path: str) -> None:
    assert run_path(auth_id, phlo_id) == path


# --- success against the sandbox -------------------------------------------------------------------


@pytest.mark.parametrize(
    "payload",
    [
        {"from": "+14155550100", "to": "+14155550101", "name": "Zo\u00eb", "note": None},
        {"to": "+14155550101", "tags": ["a", "b"], "meta": {"n": 1}},
        {},
        None,
    ],
)
def test_run_returns_result_and_sends_the_sdk_request(
    runner: RunnerClient, sandbox: Sandbox, payload: dict[str, Any] | None
) -> None:
    result = runner.run(ACCOUNT, KNOWN_PHLO, payload)

    [run] = sandbox.runs()
    assert run["status"] == 201
    assert result.status == 201
    assert result.phlo_run_id is not None
    assert result.phlo_run_id == run["api_id"]
    assert result.message is not None
    assert result.phlo_run_id in result.message
    assert result.elapsed_ms > 0

    cleaned = {key: value for key, value in (payload or {}).items() if value is not None}
    assert_sdk_request(run, KNOWN_PHLO, cleaned)
    assert run["body"] == cleaned


def test_one_client_keeps_working_across_runs_and_errors(runner: RunnerClient, sandbox: Sandbox) -> None:
    ids = [runner.run(ACCOUNT, KNOWN_PHLO, {"to": f"+1415555010{n}"}).phlo_run_id for n in range(3)]
    raised(RunnerRejected, lambda: runner.run(WRONG_ACCOUNT, KNOWN_PHLO, {}))
    raised(RunnerRejected, lambda: runner.run(ACCOUNT, UNKNOWN_PHLO, {}))
    ids.append(runner.run(ACCOUNT, KNOWN_PHLO, None).phlo_run_id)

    runs = sandbox.runs()
    assert [run["status"] for run in runs] == [201, 201, 201, 401, 404, 201]
    assert ids == [run["api_id"] for run in runs if run["status"] == 201]
    assert len(set(ids)) == 4


# --- pool reuse, seen from a server of this file ----------------------------------------------------


def _peer_app(ports: list[int]) -> web.Application:
    """Answers every run 201 and records the client's source port; some PHLO ids answer other ways."""

    async def run(request: web.Request) -> web.Response:
        assert request.transport is not None
        ports.append(int(request.transport.get_extra_info("peername")[1]))
        phlo_id = request.match_info["phlo_id"]
        if phlo_id == "html-502":
            return web.Response(status=502, text="<html><body>Bad gateway: upstream down</body></html>")
        if phlo_id == "empty-503":
            return web.Response(status=503)
        if phlo_id == "long-500":
            return web.Response(status=500, text="x" * (MAX_ERROR_CHARS * 3), content_type="text/plain")
        if phlo_id == "list-400":
            return web.json_response(["not", "an", "object"], status=400)
        return web.json_response({"api_id": str(uuid.uuid4()), "message": "ok"}, status=201)

    app = web.Application()
    app.router.add_post("/v1/account/{auth_id}/phlo/{phlo_id}/", run)
    return app


async def test_sequential_runs_share_one_pooled_connection(aiohttp_server: AiohttpServer) -> None:
    ports: list[int] = []
    server = await aiohttp_server(_peer_app(ports))
    url = str(server.make_url(""))
    with (
        RunnerClient(url, connect_timeout_s=3.0, read_timeout_s=5.0) as client,
        RunnerClient(url, connect_timeout_s=3.0, read_timeout_s=5.0) as other,
    ):
        results = [await asyncio.to_thread(client.run, ACCOUNT, KNOWN_PHLO, {"n": n}) for n in range(3)]
        assert [result.status for result in results] == [201, 201, 201]
        assert len(ports) == 3
        assert len(set(ports)) == 1, ports
        # Control: another client, its connection open beside the first, comes from another port.
        await asyncio.to_thread(other.run, ACCOUNT, KNOWN_PHLO, None)
        assert ports[3] != ports[0]


@pytest.mark.parametrize(
    ("phlo_id", "status", "error"),
    [
        ("html-502", 502, "<html><body>Bad gateway: upstream down</body></html>"),
        ("empty-503", 503, "Service Unavailable"),
        ("long-500", 500, "x" * MAX_ERROR_CHARS),
        ("list-400", 400, '["not", "an", "object"]'),
    ],
)
async def test_non_json_error_body_still_gives_a_readable_error(
    aiohttp_server: AiohttpServer, phlo_id: str, status: int, error: str
) -> None:
    server = await aiohttp_server(_peer_app([]))
    with RunnerClient(str(server.make_url("")), connect_timeout_s=3.0, read_timeout_s=5.0) as client:
        exc = await asyncio.to_thread(raised, RunnerRejected, lambda: client.run(ACCOUNT, phlo_id, {}))
    assert exc.status == status
    assert exc.error == error
    assert exc.api_id is None
    assert exc.permanent is (status == 400)
    assert f"HTTP {status}" in str(exc)


# --- rejections from the sandbox --------------------------------------------------------------------


def test_wrong_token_is_permanent_401_without_the_token(runner: RunnerClient, sandbox: Sandbox) -> None:
    exc = raised(RunnerRejected, lambda: runner.run(WRONG_ACCOUNT, KNOWN_PHLO, {"to": "+1"}))
    assert exc.status == 401
    assert exc.permanent is True
    assert exc.error == "authentication failed"
    assert exc.api_id is not None
    [run] = sandbox.runs()
    assert run["status"] == 401
    assert run["auth_id"] == SANDBOX_AUTH_ID


def test_unknown_phlo_is_permanent_404(runner: RunnerClient, sandbox: Sandbox) -> None:
    exc = raised(RunnerRejected, lambda: runner.run(ACCOUNT, UNKNOWN_PHLO, None))
    assert exc.status == 404
    assert exc.permanent is True
    assert UNKNOWN_PHLO in exc.error
    [run] = sandbox.runs()
    assert (run["status"], run["phlo_id"]) == (404, UNKNOWN_PHLO)


def test_odd_phlo_id_reaches_the_runner_as_one_segment(runner: RunnerClient, sandbox: Sandbox) -> None:
    odd = "a b?c=1#d&e%f"
    exc = raised(RunnerRejected, lambda: runner.run(ACCOUNT, odd, None))
    assert exc.status == 404
    [run] = sandbox.runs()
    assert run["phlo_id"] == odd


@pytest.mark.parametrize(("status", "retry_after"), [(429, 7), (500, None), (503, 2), (408, None)])
def test_retryable_faults_are_not_permanent(
    runner: RunnerClient, sandbox: Sandbox, status: int, retry_after: int | None
) -> None:
    error = f"sandbox says {status}: slow down"
    sandbox.fail(status, 1, error=error, retry_after=retry_after)
    exc = raised(RunnerRejected, lambda: runner.run(ACCOUNT, KNOWN_PHLO, {"to": "+1"}))
    assert exc.status == status
    assert exc.permanent is False
    assert exc.error == error
    assert exc.api_id is not None
    # The fault is spent: the same client runs again.
    assert runner.run(ACCOUNT, KNOWN_PHLO, {"to": "+1"}).status == 201


@pytest.mark.parametrize("status", [400, 403, 405])
def test_other_client_errors_are_permanent(runner: RunnerClient, sandbox: Sandbox, status: int) -> None:
    sandbox.fail(status, 1)
    exc = raised(RunnerRejected, lambda: runner.run(ACCOUNT, KNOWN_PHLO, None))
    assert (exc.status, exc.permanent, exc.error) == (status, True, f"sandbox fault: HTTP {status}")


# --- no answer --------------------------------------------------------------------------------------


def test_connection_refused_is_unreachable_and_not_ambiguous() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    with RunnerClient(url, connect_timeout_s=3.0, read_timeout_s=5.0) as client:
        exc = raised(RunnerUnreachable, lambda: client.run(ACCOUNT, KNOWN_PHLO, {"to": "+1"}))
    assert exc.ambiguous is False
    assert exc.permanent is False
    assert "ConnectError" in exc.reason
    assert url in str(exc)


def test_read_timeout_is_unreachable_and_ambiguous(sandbox: Sandbox) -> None:
    sandbox.http.post("/_sandbox/faults", json={"latency_ms": 1500, "count": 1}).raise_for_status()
    with RunnerClient(sandbox.url, connect_timeout_s=3.0, read_timeout_s=0.3) as client:
        exc = raised(RunnerUnreachable, lambda: client.run(ACCOUNT, KNOWN_PHLO, {"to": "+1"}))
    assert exc.ambiguous is True
    assert exc.permanent is False
    assert "ReadTimeout" in exc.reason
    assert "may have run" in str(exc)
    [run] = sandbox.runs()
    assert run["method"] == "POST"
    assert run["path"] == f"/v1/account/{SANDBOX_AUTH_ID}/phlo/{KNOWN_PHLO}/"
    assert run["raw_body"] == '{"to": "+1"}'
