"""The ingress refuses bad input with a clear status and a JSON reason, and claims nothing it cannot store."""

from __future__ import annotations

from typing import Any

import pytest
from redis import Redis

from relay.dev.redis_server import free_port
from relay.ingress.app import create_app
from relay.mapping.config import RelayConfig
from relay.settings import Settings
from tests.conftest import ADMIN_HEADERS, send_raw, with_admin_token
from tests.worker.test_delivery_to_runner import FORM


async def refusal(response: Any, status: int, code: str) -> str:
    assert response.status == status
    assert response.content_type == "application/json"
    body = await response.json()
    assert body["error"] == code
    message: str = body["message"]
    assert message
    return message


async def test_unknown_source_is_404(aiohttp_client: Any, settings: Settings, config: RelayConfig) -> None:
    client = await aiohttp_client(create_app(settings, config))
    message = await refusal(await client.post("/hooks/nobody", json=FORM), 404, "unknown_source")
    assert "nobody" in message


async def test_malformed_json_is_400(aiohttp_client: Any, settings: Settings, config: RelayConfig) -> None:
    client = await aiohttp_client(create_app(settings, config))
    response = await client.post(
        "/hooks/website-form", data=b'{"phone": ', headers={"Content-Type": "application/json"}
    )
    assert "not valid JSON" in await refusal(response, 400, "malformed_body")


async def test_unsupported_content_type_is_415(
    aiohttp_client: Any, settings: Settings, config: RelayConfig
) -> None:
    client = await aiohttp_client(create_app(settings, config))
    response = await client.post("/hooks/website-form", data=b"<a/>", headers={"Content-Type": "text/csv"})
    message = await refusal(response, 415, "unsupported_media_type")
    assert "application/json" in message


async def test_oversized_body_is_413_declared_or_streamed(
    aiohttp_client: Any, settings: Settings, config: RelayConfig, redis: Redis
) -> None:
    small = settings.model_copy(update={"max_body_bytes": 2048})
    client = await aiohttp_client(create_app(small, config))
    big = {**FORM, "padding": "x" * 4096}
    await refusal(await client.post("/hooks/website-form", json=big), 413, "body_too_large")

    async def chunks() -> Any:  # no Content-Length: the limit holds while reading
        for _ in range(8):
            yield b" " * 1024

    response = await client.post(
        "/hooks/website-form", data=chunks(), headers={"Content-Type": "application/json"}
    )
    await refusal(response, 413, "body_too_large")
    assert redis.dbsize() == 0, redis.keys()


async def test_wrong_method_and_unknown_path_answer_json(
    aiohttp_client: Any, settings: Settings, config: RelayConfig
) -> None:
    client = await aiohttp_client(create_app(settings, config))
    await refusal(await client.get("/hooks/website-form"), 405, "method_not_allowed")
    await refusal(await client.get("/nothing-here"), 404, "not_found")


async def test_redis_unreachable_is_503_and_nothing_is_claimed(
    aiohttp_client: Any, settings: Settings, config: RelayConfig
) -> None:
    nowhere = with_admin_token(settings).model_copy(
        update={"redis_url": f"redis://127.0.0.1:{free_port()}/0"}
    )
    client = await aiohttp_client(create_app(nowhere, config))
    response = await client.post("/hooks/website-form", json=FORM)
    message = await refusal(response, 503, "queue_unavailable")
    assert "retry" in message
    response = await client.get("/events/evt_x", headers=ADMIN_HEADERS)
    await refusal(response, 503, "queue_unavailable")


async def test_missing_content_type_says_so(
    aiohttp_client: Any, settings: Settings, config: RelayConfig
) -> None:
    client = await aiohttp_client(create_app(settings, config))
    response = await client.post("/hooks/website-form", data=b"{}", skip_auto_headers=["Content-Type"])
    assert "Content-Type is missing" in await refusal(response, 415, "unsupported_media_type")


@pytest.mark.parametrize(
    ("content_type", "body"),
    [
        ("application/json", b'{"phone": '),
        ("application/json", b'{"a": NaN}'),
        ("application/x-www-form-urlencoded", b"a=%FF"),
        ("multipart/form-data; boundary=xyz", b"--xyz\r\nContent-Disposition: form-data; name=a\r\n\r\n1"),
        ("multipart/form-data", b"no boundary given"),
        ("text/xml", b"<a><b></a>"),
        ("text/xml", b'<!DOCTYPE a [<!ENTITY x "y">]><a>&x;</a>'),
        ("application/json; charset=utf-8", b'{"a": "\xff"}'),
    ],
    ids=[
        "json",
        "json-nan",
        "form",
        "multipart-truncated",
        "multipart-no-boundary",
        "xml",
        "xml-doctype",
        "charset",
    ],
)
async def test_malformed_bodies_of_every_format_are_400_with_a_reason(
    aiohttp_client: Any, settings: Settings, config: RelayConfig, redis: Redis, content_type: str, body: bytes
) -> None:
    client = await aiohttp_client(create_app(settings, config))
    response = await client.post("/hooks/website-form", data=body, headers={"Content-Type": content_type})
    await refusal(response, 400, "malformed_body")
    assert redis.dbsize() == 0, redis.keys()


async def test_an_event_id_header_that_is_not_utf8_is_400_and_nothing_is_stored(
    aiohttp_client: Any, settings: Settings, config: RelayConfig, redis: Redis
) -> None:
    """Regression: the byte reached Redis as a lone surrogate, failed to encode there, and answered 500."""
    client = await aiohttp_client(create_app(settings, config))
    body = b'{"properties": {"phone": {"value": "+14155550100"}}}'
    response = await send_raw(
        client.port,
        b"POST /hooks/hubspot-workflow HTTP/1.1\r\nHost: relay\r\nContent-Type: application/json\r\n"
        b"X-Request-Id: req-\xff\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(body), body),
    )
    assert response.status == 400
    assert response.json() == {
        "error": "malformed_header",
        "message": "header X-Request-Id is not valid UTF-8",
    }
    assert redis.dbsize() == 0
