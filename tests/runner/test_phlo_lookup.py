"""RunnerClient.get_phlo: plivo-python's ``phlo.get()`` request over real HTTP, and the sandbox's answers."""

from __future__ import annotations

import asyncio
import base64
import platform
from collections.abc import Iterator

import pytest
from aiohttp import web
from pydantic import SecretStr
from pytest_aiohttp import AiohttpServer

from relay.dev.redis_server import free_port
from relay.errors import RunnerRejected, RunnerUnreachable
from relay.runner.client import RunnerClient
from relay.runner.sandbox import SANDBOX_AUTH_ID, SANDBOX_AUTH_TOKEN, SandboxConfig, SandboxThread
from relay.settings import PlivoAccount
from tests.conftest import KNOWN_PHLO, UNKNOWN_PHLO, Sandbox

ACCOUNT = PlivoAccount(auth_id=SANDBOX_AUTH_ID, auth_token=SecretStr(SANDBOX_AUTH_TOKEN))
WRONG_TOKEN = "wrong-token-8d2b6e0c4f"
OTHER_ID, OTHER_TOKEN = "MAOTHER000000000000", "other-token-3a9f1c7e55"
OTHER = PlivoAccount(auth_id=OTHER_ID, auth_token=SecretStr(OTHER_TOKEN))


@pytest.fixture
def runner(sandbox: Sandbox) -> Iterator[RunnerClient]:
    with RunnerClient(sandbox.url, connect_timeout_s=3.0, read_timeout_s=5.0) as client:
        yield client


async def test_get_phlo_sends_the_request_of_plivo_pythons_phlo_get(aiohttp_server: AiohttpServer) -> None:
    seen: list[tuple[str, str, dict[str, str]]] = []

    async def get(request: web.Request) -> web.Response:
        seen.append((request.method, request.raw_path, dict(request.headers)))
        answer = {"api_id": "a1", "phlo_id": request.match_info["phlo_id"], "name": "Lead callback"}
        return web.json_response({**answer, "created_on": "2024-01-02 03:04:05"})

    app = web.Application()
    app.router.add_get("/v1/phlo/{phlo_id}/", get)
    server = await aiohttp_server(app)
    with RunnerClient(str(server.make_url("")), connect_timeout_s=3.0, read_timeout_s=5.0) as client:
        info = await asyncio.to_thread(client.get_phlo, ACCOUNT, KNOWN_PHLO)

    assert (info.phlo_id, info.name) == (KNOWN_PHLO, "Lead callback")
    [(method, path, headers)] = seen
    assert (method, path) == ("GET", f"/v1/phlo/{KNOWN_PHLO}/")
    basic = base64.b64encode(f"{SANDBOX_AUTH_ID}:{SANDBOX_AUTH_TOKEN}".encode()).decode()
    assert headers["Authorization"] == f"Basic {basic}"
    assert headers["User-Agent"] == f"plivo-python/4.63.0 (Python: {platform.python_version()})"
    assert headers["Accept"] == "application/json"


def test_known_phlo_is_found_and_nothing_is_run(runner: RunnerClient, sandbox: Sandbox) -> None:
    info = runner.get_phlo(ACCOUNT, KNOWN_PHLO)

    assert info.phlo_id == KNOWN_PHLO
    assert info.name
    assert sandbox.runs() == []


def test_unknown_phlo_is_404(runner: RunnerClient) -> None:
    with pytest.raises(RunnerRejected) as info:
        runner.get_phlo(ACCOUNT, UNKNOWN_PHLO)
    assert info.value.status == 404
    assert UNKNOWN_PHLO in info.value.error


def test_wrong_token_is_401_and_the_error_does_not_show_it(runner: RunnerClient) -> None:
    wrong = PlivoAccount(auth_id=SANDBOX_AUTH_ID, auth_token=SecretStr(WRONG_TOKEN))
    with pytest.raises(RunnerRejected) as info:
        runner.get_phlo(wrong, KNOWN_PHLO)
    assert info.value.status == 401
    assert WRONG_TOKEN not in f"{info.value} {info.value!r} {info.value.args}"


def test_closed_port_is_unreachable_and_not_ambiguous() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    with (
        RunnerClient(url, connect_timeout_s=3.0, read_timeout_s=5.0) as client,
        pytest.raises(RunnerUnreachable) as info,
    ):
        client.get_phlo(ACCOUNT, KNOWN_PHLO)
    assert info.value.ambiguous is False
    assert "ConnectError" in info.value.reason


def test_a_phlo_of_another_account_is_404_to_get_and_run_but_found_by_its_owner() -> None:
    credentials = {SANDBOX_AUTH_ID: SANDBOX_AUTH_TOKEN, OTHER_ID: OTHER_TOKEN}
    config = SandboxConfig(credentials=credentials, phlo_ids={KNOWN_PHLO}, owners={KNOWN_PHLO: OTHER_ID})
    with (
        SandboxThread(config) as sandbox,
        RunnerClient(sandbox.url, connect_timeout_s=3.0, read_timeout_s=5.0) as client,
    ):
        with pytest.raises(RunnerRejected) as info:
            client.get_phlo(ACCOUNT, KNOWN_PHLO)
        assert info.value.status == 404
        with pytest.raises(RunnerRejected) as run_info:
            client.run(ACCOUNT, KNOWN_PHLO, None)
        assert run_info.value.status == 404

        assert client.get_phlo(OTHER, KNOWN_PHLO).phlo_id == KNOWN_PHLO
        assert client.run(OTHER, KNOWN_PHLO, None).status == 201
