"""The sender's address and URL behind a load balancer: forwarded headers are believed only from proxies."""

from __future__ import annotations

from ipaddress import ip_network
from typing import Any

import pytest
from aiohttp import web

from relay.ingress.origin import Network, client_ip, public_url

LOCAL = [ip_network("127.0.0.0/8")]
PROXIES = web.AppKey("proxies", list[Network])
PUBLIC_URL = web.AppKey("public_url", str)


async def echo(request: web.Request) -> web.Response:
    proxies = request.app[PROXIES]
    return web.json_response(
        {
            "client_ip": client_ip(request, proxies),
            "url": public_url(request, request.app.get(PUBLIC_URL), proxies),
        }
    )


async def seen(aiohttp_client: Any, proxies: list[Network], base: str | None, **headers: str) -> Any:
    app = web.Application()
    app[PROXIES] = proxies
    if base is not None:
        app[PUBLIC_URL] = base
    app.router.add_post("/hooks/{source}", echo)
    client = await aiohttp_client(app)
    response = await client.post("/hooks/twilio?foo=1&bar=a%20b", headers=headers)
    return await response.json()


async def test_without_proxies_forwarded_headers_are_ignored(aiohttp_client: Any) -> None:
    got = await seen(
        aiohttp_client, [], None, **{"X-Forwarded-For": "203.0.113.9", "X-Forwarded-Proto": "https"}
    )
    assert got["client_ip"] == "127.0.0.1"
    assert got["url"].startswith("http://127.0.0.1:")
    assert got["url"].endswith("/hooks/twilio?foo=1&bar=a%20b")  # the query exactly as sent


async def test_a_trusted_proxy_gives_the_sender_address_and_public_url(aiohttp_client: Any) -> None:
    headers = {
        # A forged first hop from the client, then the real client as the proxy appended it.
        "X-Forwarded-For": "198.51.100.1, 203.0.113.9",
        "X-Forwarded-Proto": "https",
        "X-Forwarded-Host": "hooks.example.com",
    }
    got = await seen(aiohttp_client, LOCAL, None, **headers)
    assert got["client_ip"] == "203.0.113.9"
    assert got["url"] == "https://hooks.example.com/hooks/twilio?foo=1&bar=a%20b"


@pytest.mark.parametrize(
    ("base", "expected"),
    [
        ("https://hooks.example.com", "https://hooks.example.com/hooks/twilio?foo=1&bar=a%20b"),
        ("https://example.com/relay/", "https://example.com/relay/hooks/twilio?foo=1&bar=a%20b"),
    ],
)
async def test_a_configured_public_url_wins(aiohttp_client: Any, base: str, expected: str) -> None:
    got = await seen(aiohttp_client, [], base, **{"X-Forwarded-Host": "evil.example"})
    assert got["url"] == expected
