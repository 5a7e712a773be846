"""The runner sandbox over real HTTP: run contract, recording, control API, faults, the thread and server."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import re
import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from relay.runner.sandbox import (
    SANDBOX_AUTH_ID,
    SANDBOX_AUTH_TOKEN,
    SandboxConfig,
    SandboxThread,
    serve_sandbox,
)

PHLO_ID = "4c1a9f23-7f56-4879-bb80-db856e1e7701"
OTHER_AUTH_ID = "MAOTHER000000000000"
OTHER_AUTH_TOKEN = "other-token"
AUTH = (SANDBOX_AUTH_ID, SANDBOX_AUTH_TOKEN)
RUN_PATH = f"/v1/account/{SANDBOX_AUTH_ID}/phlo/{PHLO_ID}/"


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


@pytest.fixture
def sandbox() -> Iterator[SandboxThread]:
    credentials = {SANDBOX_AUTH_ID: SANDBOX_AUTH_TOKEN, OTHER_AUTH_ID: OTHER_AUTH_TOKEN}
    with SandboxThread(SandboxConfig(credentials=credentials, phlo_ids={PHLO_ID})) as running:
        yield running


@pytest.fixture
def client(sandbox: SandboxThread) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=sandbox.url, timeout=10) as http:
        yield http


def runs(client: httpx.Client, **params: str) -> list[dict[str, Any]]:
    response = client.get("/_sandbox/runs", params=params)
    assert response.status_code == 200
    found: list[dict[str, Any]] = response.json()["runs"]
    return found


def add_fault(client: httpx.Client, **fault: Any) -> None:
    response = client.post("/_sandbox/faults", json=fault)
    assert response.status_code == 201, response.text


def run(client: httpx.Client, **kwargs: Any) -> httpx.Response:
    kwargs.setdefault("auth", AUTH)
    kwargs.setdefault("json", {})
    return client.post(RUN_PATH, **kwargs)


def assert_error(response: httpx.Response, status: int) -> str:
    """Assert the runner's error shape ``{api_id, error}`` with ``status``; returns the error."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    answer = response.json()
    assert set(answer) == {"api_id", "error"}
    assert uuid.UUID(answer["api_id"]).version == 4
    assert isinstance(answer["error"], str) and answer["error"]
    error: str = answer["error"]
    return error


def test_run_answers_201_and_records_the_request(client: httpx.Client) -> None:
    raw_body = json.dumps({"from": "+14155550100", "to": "+14155550199"})
    before = time.time()
    response = run(
        client,
        json=None,
        content=raw_body,
        headers={"Content-Type": "application/json", "User-Agent": "plivo-python/4.63.0 (Python: 3.11.9)"},
    )
    after = time.time()

    assert response.status_code == 201
    answer = response.json()
    assert set(answer) == {"phlo_id", "api_id", "message"}
    assert answer["phlo_id"] == PHLO_ID
    assert uuid.UUID(answer["api_id"]).version == 4
    assert f"with phlo_run_uuid: {answer['api_id']} executed with response:" in answer["message"]

    [record] = runs(client)
    assert record["method"] == "POST"
    assert record["path"] == RUN_PATH
    assert record["phlo_id"] == PHLO_ID
    assert record["auth_id"] == SANDBOX_AUTH_ID
    assert record["status"] == 201
    assert record["api_id"] == answer["api_id"]
    assert record["error"] is None
    assert record["body"] == {"from": "+14155550100", "to": "+14155550199"}
    assert record["raw_body"] == raw_body
    assert before <= record["received_at"] <= after
    headers = {name.lower(): value for name, value in record["headers"].items()}
    assert headers["authorization"] == "Basic ***"
    assert headers["content-type"] == "application/json"
    assert headers["user-agent"] == "plivo-python/4.63.0 (Python: 3.11.9)"


def test_run_without_trailing_slash_and_with_empty_body(client: httpx.Client) -> None:
    response = client.post(RUN_PATH.rstrip("/"), auth=AUTH)

    assert response.status_code == 201
    assert response.json()["phlo_id"] == PHLO_ID
    [record] = runs(client)
    assert record["path"] == RUN_PATH.rstrip("/")
    assert record["body"] == {}
    assert record["raw_body"] == ""


@pytest.mark.parametrize(
    ("path_auth_id", "headers", "recorded_auth_id"),
    [
        pytest.param(SANDBOX_AUTH_ID, {}, None, id="missing"),
        pytest.param(SANDBOX_AUTH_ID, {"Authorization": "Bearer sandbox-token"}, None, id="not-basic"),
        pytest.param(SANDBOX_AUTH_ID, {"Authorization": "Basic !!not-base64"}, None, id="undecodable"),
        pytest.param(
            SANDBOX_AUTH_ID,
            {"Authorization": basic(SANDBOX_AUTH_ID, "wrong")},
            SANDBOX_AUTH_ID,
            id="wrong-token",
        ),
        pytest.param(
            "MAUNKNOWN0000000000",
            {"Authorization": basic("MAUNKNOWN0000000000", SANDBOX_AUTH_TOKEN)},
            "MAUNKNOWN0000000000",
            id="unknown-auth-id",
        ),
        pytest.param(
            SANDBOX_AUTH_ID,
            {"Authorization": basic(OTHER_AUTH_ID, OTHER_AUTH_TOKEN)},
            OTHER_AUTH_ID,
            id="path-auth-id-differs",
        ),
    ],
)
def test_run_refuses_bad_credentials_with_401(
    client: httpx.Client, path_auth_id: str, headers: dict[str, str], recorded_auth_id: str | None
) -> None:
    response = client.post(f"/v1/account/{path_auth_id}/phlo/{PHLO_ID}/", json={}, headers=headers)

    assert assert_error(response, 401) == "authentication failed"
    [record] = runs(client)
    assert record["status"] == 401
    assert record["api_id"] is None
    assert record["auth_id"] == recorded_auth_id
    assert SANDBOX_AUTH_TOKEN not in json.dumps(record)
    assert OTHER_AUTH_TOKEN not in json.dumps(record)


def test_token_is_never_recorded(client: httpx.Client) -> None:
    assert run(client).status_code == 201
    assert run(client, auth=(SANDBOX_AUTH_ID, "wrong")).status_code == 401
    assert run(client, auth=None, headers={"Authorization": SANDBOX_AUTH_TOKEN}).status_code == 401

    recorded = runs(client)
    assert [record["status"] for record in recorded] == [201, 401, 401]
    assert SANDBOX_AUTH_TOKEN not in json.dumps(recorded)


def test_run_of_unknown_phlo_answers_404(client: httpx.Client) -> None:
    response = client.post(f"/v1/account/{SANDBOX_AUTH_ID}/phlo/no-such-phlo/", json={}, auth=AUTH)

    assert "no-such-phlo" in assert_error(response, 404)
    [record] = runs(client)
    assert (record["phlo_id"], record["status"]) == ("no-such-phlo", 404)


@pytest.mark.parametrize(
    ("raw_body", "recorded_body"),
    [(b"[1, 2]", [1, 2]), (b'"text"', "text"), (b"{not json", None), (b"null", None)],
)
def test_run_with_a_body_that_is_not_a_json_object_answers_400(
    client: httpx.Client, raw_body: bytes, recorded_body: Any
) -> None:
    response = run(client, json=None, content=raw_body, headers={"Content-Type": "application/json"})

    assert_error(response, 400)
    [record] = runs(client)
    assert record["status"] == 400
    assert record["body"] == recorded_body
    assert record["raw_body"] == raw_body.decode()


def test_wrong_method_on_the_run_path_answers_405_and_is_recorded(client: httpx.Client) -> None:
    response = client.get(RUN_PATH, auth=AUTH)

    assert_error(response, 405)
    assert response.headers["Allow"] == "POST"
    [record] = runs(client)
    assert (record["method"], record["status"]) == ("GET", 405)


def test_status_fault_is_consumed_then_runs_answer_normally(client: httpx.Client) -> None:
    add_fault(client, status=500, count=2, error="boom")
    listed = client.get("/_sandbox/faults").json()["faults"]
    assert [(fault["status"], fault["remaining"]) for fault in listed] == [(500, 2)]

    first, second, third = run(client), run(client), run(client)

    assert assert_error(first, 500) == "boom"
    assert assert_error(second, 500) == "boom"
    assert "Retry-After" not in first.headers
    assert third.status_code == 201
    assert client.get("/_sandbox/faults").json() == {"faults": []}
    assert [record["status"] for record in runs(client)] == [500, 500, 201]


def test_faults_apply_in_the_order_queued_with_retry_after(client: httpx.Client) -> None:
    add_fault(client, status=429, count=1, retry_after=7, error="too many requests")
    add_fault(client, status=503, count=1)

    throttled, unavailable, normal = run(client), run(client), run(client)

    assert assert_error(throttled, 429) == "too many requests"
    assert throttled.headers["Retry-After"] == "7"
    assert_error(unavailable, 503)
    assert "Retry-After" not in unavailable.headers
    assert normal.status_code == 201


def test_fault_without_count_lasts_until_cleared(client: httpx.Client) -> None:
    add_fault(client, status=502, count=None)

    assert [run(client).status_code for _ in range(4)] == [502] * 4
    assert client.delete("/_sandbox/faults").json() == {"cleared": 1}
    assert run(client).status_code == 201


def test_latency_fault_delays_a_normal_answer(client: httpx.Client) -> None:
    add_fault(client, latency_ms=300, count=1)

    started = time.monotonic()
    delayed = run(client)
    elapsed_s = time.monotonic() - started

    assert delayed.status_code == 201
    assert elapsed_s >= 0.3
    assert client.get("/_sandbox/faults").json() == {"faults": []}


@pytest.mark.parametrize(
    "fault",
    [
        {},
        {"count": 2},
        {"status": 200},
        {"status": "500"},
        {"status": 500, "count": 0},
        {"status": 500, "latency_ms": -1},
        {"status": 500, "retry_after": -5},
        {"status": 500, "colour": "red"},
    ],
)
def test_invalid_fault_is_refused(client: httpx.Client, fault: dict[str, Any]) -> None:
    response = client.post("/_sandbox/faults", json=fault)

    assert response.status_code == 400
    assert response.json()["error"]
    assert client.get("/_sandbox/faults").json() == {"faults": []}


def test_phlo_set_replacement(client: httpx.Client) -> None:
    response = client.put("/_sandbox/phlos", json={"phlo_ids": ["new-phlo"]})
    assert response.json() == {"phlo_ids": ["new-phlo"]}

    assert client.post(f"/v1/account/{SANDBOX_AUTH_ID}/phlo/new-phlo/", json={}, auth=AUTH).status_code == 201
    assert run(client).status_code == 404

    assert client.put("/_sandbox/phlos", json={"phlo_ids": None}).json() == {"phlo_ids": None}
    assert client.post(f"/v1/account/{SANDBOX_AUTH_ID}/phlo/anything/", json={}, auth=AUTH).status_code == 201
    assert client.put("/_sandbox/phlos", json={"phlo_ids": "new-phlo"}).status_code == 400


def test_get_phlo(client: httpx.Client) -> None:
    for path in (f"/v1/phlo/{PHLO_ID}/", f"/v1/phlo/{PHLO_ID}"):
        response = client.get(path, auth=AUTH)
        assert response.status_code == 200
        answer = response.json()
        assert set(answer) == {"api_id", "phlo_id", "name", "created_on"}
        assert answer["phlo_id"] == PHLO_ID

    assert_error(client.get("/v1/phlo/no-such-phlo/", auth=AUTH), 404)
    assert_error(client.get(f"/v1/phlo/{PHLO_ID}/"), 401)
    assert_error(client.get(f"/v1/phlo/{PHLO_ID}/", auth=(SANDBOX_AUTH_ID, "wrong")), 401)
    assert runs(client) == []


def test_runs_filter_and_clear(client: httpx.Client) -> None:
    client.put("/_sandbox/phlos", json={"phlo_ids": [PHLO_ID, "second"]})
    assert run(client).status_code == 201
    assert client.post(f"/v1/account/{SANDBOX_AUTH_ID}/phlo/second", json={}, auth=AUTH).status_code == 201

    assert [record["phlo_id"] for record in runs(client)] == [PHLO_ID, "second"]
    assert [record["phlo_id"] for record in runs(client, phlo_id="second")] == ["second"]
    assert client.delete("/_sandbox/runs").json() == {"cleared": 2}
    assert runs(client) == []


def test_health_and_unknown_paths(client: httpx.Client) -> None:
    assert client.get("/_sandbox/health").status_code == 200
    assert_error(client.get("/v1/nothing-here"), 404)
    assert client.get("/_sandbox/nothing-here").status_code == 404


def test_default_config_knows_every_phlo() -> None:
    with SandboxThread() as sandbox:
        response = httpx.post(f"{sandbox.url}/v1/account/{SANDBOX_AUTH_ID}/phlo/any-id/", json={}, auth=AUTH)
        assert response.status_code == 201
    assert SANDBOX_AUTH_TOKEN not in repr(sandbox.config)


def test_thread_stops_serving_on_exit() -> None:
    sandbox = SandboxThread()
    with pytest.raises(RuntimeError):
        _ = sandbox.url
    with sandbox:
        url = sandbox.url
        with httpx.Client() as http:  # a keep-alive connection left open must not block the exit
            assert http.get(f"{url}/_sandbox/health").status_code == 200

    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{url}/_sandbox/health")


async def test_serve_sandbox_serves_until_cancelled() -> None:
    started = asyncio.Event()
    urls: list[str] = []

    class Started(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            found = re.search(r"serving on (http://\S+)", record.getMessage())
            if found:
                urls.append(found.group(1))
                started.set()

    handler = Started()
    sandbox_logger = logging.getLogger("relay.runner.sandbox")
    sandbox_logger.addHandler(handler)
    previous_level = sandbox_logger.level
    sandbox_logger.setLevel(logging.INFO)
    task = asyncio.create_task(serve_sandbox(SandboxConfig(), "127.0.0.1", 0))
    try:
        await asyncio.wait_for(started.wait(), timeout=10)
        async with httpx.AsyncClient(base_url=urls[0]) as http:
            assert (await http.get("/_sandbox/health")).status_code == 200
    finally:
        sandbox_logger.removeHandler(handler)
        sandbox_logger.setLevel(previous_level)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    async with httpx.AsyncClient() as http:
        with pytest.raises(httpx.ConnectError):
            await http.get(f"{urls[0]}/_sandbox/health")
