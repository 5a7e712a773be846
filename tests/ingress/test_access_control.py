"""On the public port only ``/hooks/...``, ``/healthz`` and ``/readyz`` answer without a credential.

``/metrics`` (the ingress's and ``relay worker``'s own port), ``GET /events/{id}`` and ``/admin/...`` take
``Authorization: Bearer <RELAY_ADMIN_TOKEN>``: 401 without it, 404 when no token is configured;
``RELAY_METRICS_PUBLIC=true`` opens ``/metrics`` and nothing else.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from pydantic import SecretStr
from redis import Redis

from relay.infra.access import AdminToken
from relay.ingress.app import create_app
from relay.mapping.config import RelayConfig
from relay.settings import Settings
from relay.worker.loop import serve_metrics
from tests.conftest import watch_secrets
from tests.worker.test_delivery_to_runner import FORM

TOKEN = "metrics-and-events-token-7c41e9"
watch_secrets(TOKEN)
BEARER = {"Authorization": f"Bearer {TOKEN}"}
PRIVATE = ["/metrics", "/events/evt_x", "/admin/dead-letters", "/admin/paused"]
WRONG = [
    {},
    {"Authorization": "Bearer wrong-token"},
    {"Authorization": f"Bearer {TOKEN}x"},
    {"Authorization": f"Basic {TOKEN}"},
    {"Authorization": TOKEN},
    {"X-Admin-Token": TOKEN},
]


def with_access(settings: Settings, token: str | None, public: bool = False) -> Settings:
    secret = None if token is None else SecretStr(token)
    return settings.model_copy(update={"admin_token": secret, "metrics_public": public})


async def answers_of(client: Any, path: str, headers: dict[str, str]) -> tuple[int, dict[str, Any], str]:
    response = await client.get(path, headers=headers)
    body = await response.json() if response.content_type == "application/json" else {}
    return response.status, body, response.headers.get("WWW-Authenticate", "")


async def test_without_a_token_the_private_paths_do_not_exist(
    aiohttp_client: Any, settings: Settings, config: RelayConfig
) -> None:
    for token in (None, "", "   "):
        client = await aiohttp_client(create_app(with_access(settings, token), config))
        for path in PRIVATE:
            for headers in [*WRONG, BEARER]:
                status, body, _ = await answers_of(client, path, headers)
                assert (status, body.get("error")) == (404, "not_found"), (token, path, headers)


async def test_with_a_token_the_private_paths_answer_401_without_it_and_the_token_opens_them(
    aiohttp_client: Any, settings: Settings, config: RelayConfig, redis: Redis
) -> None:
    client = await aiohttp_client(create_app(with_access(settings, TOKEN), config))
    for path in PRIVATE:
        for headers in WRONG:
            status, body, challenge = await answers_of(client, path, headers)
            assert (status, body["error"]) == (401, "unauthorized"), (path, headers)
            assert challenge.startswith('Bearer realm="phlo-relay admin"'), (path, headers)
            assert "RELAY_ADMIN_TOKEN" in body["message"] or "not the admin token" in body["message"]
    metrics = await client.get("/metrics", headers=BEARER)
    assert metrics.status == 200 and "relay_redis_up 1.0" in await metrics.text()
    status, body, _ = await answers_of(client, "/events/evt_x", BEARER)
    assert (status, body["error"]) == (404, "unknown_event")  # the route answers; the event is unknown
    accepted = await client.post("/hooks/website-form", json=FORM)
    assert accepted.status == 202
    event_id = (await accepted.json())["event_id"]
    shown = await client.get(f"/events/{event_id}", headers=BEARER)
    assert shown.status == 200 and (await shown.json())["event"]["event_id"] == event_id
    assert (await client.get(f"/events/{event_id}")).status == 401
    assert (await client.get("/admin/dead-letters", headers=BEARER)).status == 200


@pytest.mark.parametrize("token", [None, TOKEN], ids=["no-token", "token"])
async def test_metrics_public_opens_metrics_only(
    aiohttp_client: Any, settings: Settings, config: RelayConfig, token: str | None
) -> None:
    client = await aiohttp_client(create_app(with_access(settings, token, public=True), config))
    for headers in WRONG:
        response = await client.get("/metrics", headers=headers)
        assert response.status == 200 and "relay_redis_up" in await response.text()
    closed = 401 if token else 404
    for path in PRIVATE[1:]:
        assert (await client.get(path)).status == closed, path


@pytest.mark.parametrize("token", [None, TOKEN], ids=["no-token", "token"])
async def test_webhooks_and_probes_answer_without_a_credential(
    aiohttp_client: Any, settings: Settings, config: RelayConfig, redis: Redis, token: str | None
) -> None:
    client = await aiohttp_client(create_app(with_access(settings, token), config))
    assert (await client.get("/healthz")).status == 200
    assert (await client.get("/readyz")).status == 200
    assert (await client.post("/hooks/website-form", json=FORM)).status == 202


async def test_a_wrong_token_is_logged_without_the_token(
    aiohttp_client: Any, settings: Settings, config: RelayConfig, caplog: pytest.LogCaptureFixture
) -> None:
    client = await aiohttp_client(create_app(with_access(settings, TOKEN), config))
    with caplog.at_level(logging.DEBUG):
        for path in PRIVATE:
            sent = {"Authorization": f"Bearer {TOKEN[:-1]}"}
            response = await client.get(path, headers=sent)
            assert response.status == 401
            assert TOKEN[:-1] not in await response.text()
    warnings = [record for record in caplog.records if "wrong bearer token" in record.getMessage()]
    assert len(warnings) == len(PRIVATE)
    assert not [line for line in caplog.text.splitlines() if TOKEN[:-1] in line]
    assert TOKEN not in repr(AdminToken(SecretStr(TOKEN)))  # the session's leak check watches TOKEN too


# -- the worker's own metrics port ---------------------------------------------------------------------


@pytest.fixture
def worker_metrics(settings: Settings, request: pytest.FixtureRequest) -> Iterator[str]:
    """``relay worker``'s metrics server on a free port with the test's access settings; its base URL."""
    token, public = request.param
    server = serve_metrics(with_access(settings, token, public).model_copy(update={"worker_metrics_port": 0}))
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()


def worker_get(url: str, headers: dict[str, str] | None = None) -> httpx.Response:
    response = httpx.get(url, headers=headers, timeout=10)
    assert TOKEN not in response.text
    return response


@pytest.mark.parametrize("worker_metrics", [(None, False)], indirect=True)
def test_worker_metrics_port_without_a_token_answers_404(worker_metrics: str) -> None:
    for headers in [*WRONG, BEARER]:
        response = worker_get(f"{worker_metrics}/metrics", headers)
        assert (response.status_code, response.json()["error"]) == (404, "not_found")


@pytest.mark.parametrize("worker_metrics", [(TOKEN, False)], indirect=True)
def test_worker_metrics_port_takes_the_admin_token(
    worker_metrics: str, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.DEBUG):
        for headers in WRONG:
            response = worker_get(f"{worker_metrics}/metrics", headers)
            assert (response.status_code, response.json()["error"]) == (401, "unauthorized"), headers
            assert response.headers["WWW-Authenticate"].startswith("Bearer realm=")
    assert TOKEN not in caplog.text and "wrong-token" not in caplog.text
    scraped = worker_get(f"{worker_metrics}/metrics", BEARER)
    assert scraped.status_code == 200 and "relay_redis_up 1.0" in scraped.text
    assert worker_get(f"{worker_metrics}/other", BEARER).status_code == 404


@pytest.mark.parametrize("worker_metrics", [(None, True), (TOKEN, True)], indirect=True)
def test_worker_metrics_port_is_open_with_metrics_public(worker_metrics: str) -> None:
    for headers in WRONG:
        response = worker_get(f"{worker_metrics}/metrics", headers)
        assert response.status_code == 200 and "relay_redis_up 1.0" in response.text
    assert worker_get(f"{worker_metrics}/", {}).status_code == 404
