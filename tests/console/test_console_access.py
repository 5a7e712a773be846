"""Access to the console: login with the admin token, the session cookie and its end, CSRF, the headers."""

from __future__ import annotations

from http.cookies import SimpleCookie
from ipaddress import ip_network
from typing import Any

from redis import Redis

from relay import keys
from relay.ingress.app import create_app
from relay.ingress.console.access import (
    LOGIN_FAILURE_WINDOW_S,
    MAX_LOGIN_FAILURES,
    ONCE_TTL_S,
    issue_login_link_token,
)
from relay.mapping.config import RelayConfig
from relay.settings import Settings
from tests.conftest import poll
from tests.console.support import (
    TOKEN,
    Client,
    console_client,
    csrf_of,
    log_in,
    page_csrf,
    with_token,
)

PAGES = [
    "/console/",
    "/console",
    "/console/events",
    "/console/dead-letters",
    "/console/dead-letters/confirm?action=purge&job_id=x",
    "/console/routes",
]
POSTS = [
    "/console/logout",
    "/console/dead-letters/confirm",
    "/console/dead-letters/replay",
    "/console/dead-letters/purge",
    "/console/pause",
    "/console/resume",
    "/console/reload",
]


def _cookie(answer: Any, name: str) -> Any:
    for header in answer.headers.getall("Set-Cookie", []):
        parsed = SimpleCookie(header)
        if name in parsed:
            return parsed[name]
    return None


def _assert_headers(answer: Any) -> None:
    csp = answer.headers["Content-Security-Policy"]
    assert "unsafe-inline" not in csp and "unsafe-eval" not in csp
    for directive in (
        "default-src 'self'",
        "script-src 'self'",
        "style-src 'self'",
        "frame-ancestors 'none'",
    ):
        assert directive in csp
    assert answer.headers["X-Content-Type-Options"] == "nosniff"
    assert answer.headers["Referrer-Policy"] == "no-referrer"
    assert answer.headers["Cache-Control"] == "no-store"


async def test_login_sets_a_strict_http_only_expiring_cookie(
    aiohttp_client: Any, settings: Settings, config: RelayConfig
) -> None:
    client: Client = await aiohttp_client(create_app(with_token(settings), config))
    answer = await log_in(client)
    assert answer.status == 303
    assert answer.headers["Location"] == "/console/"
    cookie = _cookie(answer, "relay_console")
    assert cookie is not None
    assert cookie["httponly"] is True
    assert cookie["samesite"] == "Strict"
    assert cookie["max-age"] == str(settings.console_session_ttl_s) == "28800"
    assert cookie["path"] == "/console/"
    assert not cookie["secure"]  # plain HTTP: a Secure cookie would never come back
    assert (await client.get("/console/")).status == 200


async def test_the_cookie_is_secure_behind_an_https_proxy(
    aiohttp_client: Any, settings: Settings, config: RelayConfig
) -> None:
    # RELAY_PUBLIC_URL is the senders' URL: an operator on the operators' port in plain HTTP gets no
    # Secure cookie (it would never come back), and the proxy's X-Forwarded-Proto decides.
    behind = with_token(
        settings, trusted_proxies=[ip_network("127.0.0.1/32")], public_url="https://hooks.example.com"
    )
    client: Client = await aiohttp_client(create_app(behind, config))
    plain = await client.get("/console/login", headers={"X-Forwarded-Proto": "http"})
    assert not _cookie(plain, "relay_console_login")["secure"]
    form = await client.get("/console/login", headers={"X-Forwarded-Proto": "https"})
    login_cookie = _cookie(form, "relay_console_login")
    assert login_cookie["secure"] is True
    answer = await client.post(
        "/console/login",
        data={"token": TOKEN, "csrf_token": csrf_of(await form.text())},
        headers={"X-Forwarded-Proto": "https", "Cookie": f"relay_console_login={login_cookie.value}"},
        allow_redirects=False,
    )
    assert answer.status == 303
    assert _cookie(answer, "relay_console")["secure"] is True


async def test_a_wrong_token_is_refused(aiohttp_client: Any, settings: Settings, config: RelayConfig) -> None:
    client: Client = await aiohttp_client(create_app(with_token(settings), config))
    for wrong in ("not-the-token", TOKEN + "x", " ", TOKEN[:-1], "ä"):
        answer = await log_in(client, wrong)
        assert answer.status == 401
        assert _cookie(answer, "relay_console") is None
        assert "not the admin token" in await answer.text()
    assert (await client.get("/console/")).status == 401


async def test_logged_out_every_console_page_answers_401_with_the_login_form(
    aiohttp_client: Any, settings: Settings, config: RelayConfig
) -> None:
    client: Client = await aiohttp_client(create_app(with_token(settings), config))
    for path in PAGES:
        answer = await client.get(path, allow_redirects=False)
        assert answer.status == 401, path
        assert 'action="/console/login"' in await answer.text()
        _assert_headers(answer)
    for path in POSTS:
        answer = await client.post(path, data={"csrf_token": "x"}, allow_redirects=False)
        assert answer.status == 401, path


async def test_without_an_admin_token_the_console_is_not_there(
    aiohttp_client: Any, settings: Settings, config: RelayConfig
) -> None:
    client: Client = await aiohttp_client(create_app(settings, config))
    for path in [*PAGES, "/console/login", "/console/static/console.css", "/console"]:
        assert (await client.get(path)).status == 404, path
    for path in ["/console/login", *POSTS]:
        assert (await client.post(path, data={"token": "x"})).status == 404, path


async def test_a_missing_or_forged_csrf_token_is_refused(
    aiohttp_client: Any, settings: Settings, config: RelayConfig, redis: Redis
) -> None:
    client = await console_client(aiohttp_client, settings, config)
    for data in ({}, {"csrf_token": "forged"}, {"csrf_token": ""}):
        answer = await client.post("/console/logout", data=data)
        assert answer.status == 403
        assert (await answer.json())["error"] == "csrf_refused"
        _assert_headers(answer)
    assert (await client.get("/console/")).status == 200  # still logged in
    # The login form's own token: doubled in a cookie that a forged cross-site post does not carry.
    fresh: Client = await aiohttp_client(create_app(with_token(settings), config))
    answer = await fresh.post("/console/login", data={"token": TOKEN, "csrf_token": "forged"})
    assert answer.status == 403
    assert not redis.keys(keys.console_session_key("*"))[1:]  # only the first client's session


async def test_logout_ends_the_session_for_good(
    aiohttp_client: Any, settings: Settings, config: RelayConfig, redis: Redis
) -> None:
    client = await console_client(aiohttp_client, settings, config)
    session_id = client.session.cookie_jar.filter_cookies(client.make_url("/console/"))["relay_console"].value
    answer = await client.post("/console/logout", data={"csrf_token": await page_csrf(client)})
    assert answer.status == 200
    assert "Logged out." in await answer.text()
    assert redis.keys(keys.console_session_key("*")) == []
    replayed = await client.get("/console/", headers={"Cookie": f"relay_console={session_id}"})
    assert replayed.status == 401


async def test_a_session_expires(
    aiohttp_client: Any, settings: Settings, config: RelayConfig, redis: Redis
) -> None:
    client: Client = await aiohttp_client(create_app(with_token(settings, console_session_ttl_s=1), config))
    answer = await log_in(client)
    assert _cookie(answer, "relay_console")["max-age"] == "1"
    [key] = redis.keys(keys.console_session_key("*"))
    assert 0 < redis.pttl(key) <= 1000
    cookie = client.session.cookie_jar.filter_cookies(client.make_url("/console/"))["relay_console"].value

    async def status() -> int:  # the cookie sent by hand: the client's jar drops it once Max-Age passes
        return (await client.get("/console/", headers={"Cookie": f"relay_console={cookie}"})).status

    assert await status() in (200, 401)
    poll(lambda: None if redis.exists(key) else True, timeout_s=10)
    assert await status() == 401


async def test_a_one_time_login_link_works_once(
    aiohttp_client: Any, settings: Settings, config: RelayConfig, redis: Redis
) -> None:
    client: Client = await aiohttp_client(create_app(with_token(settings), config))
    token = issue_login_link_token(redis)
    [once_key] = redis.keys(keys.console_once_key("*"))
    assert 0 < redis.ttl(once_key) <= ONCE_TTL_S
    first = await client.get(f"/console/login?once={token}", allow_redirects=False)
    assert first.status == 303
    assert _cookie(first, "relay_console") is not None
    other: Client = await aiohttp_client(create_app(with_token(settings), config))
    again = await other.get(f"/console/login?once={token}", allow_redirects=False)
    assert again.status == 401
    assert "used already or has expired" in await again.text()


async def test_every_console_answer_carries_the_security_headers(
    aiohttp_client: Any, settings: Settings, config: RelayConfig
) -> None:
    client = await console_client(aiohttp_client, settings, config)
    for path in [*PAGES, "/console/login", "/console/static/console.css", "/console/nowhere"]:
        _assert_headers(await client.get(path))
    hook = await client.post("/hooks/nowhere", json={})
    assert "Content-Security-Policy" not in hook.headers  # the webhooks' answers are left as they were


async def test_an_address_that_keeps_guessing_the_token_is_held_off(
    aiohttp_client: Any, settings: Settings, config: RelayConfig, redis: Redis
) -> None:
    behind = with_token(settings, trusted_proxies=[ip_network("127.0.0.1/32")])
    client: Client = await aiohttp_client(create_app(behind, config))

    async def attempt(token: str, address: str) -> Any:
        form = await client.get("/console/login")
        data = {"token": token, "csrf_token": csrf_of(await form.text())}
        return await client.post(
            "/console/login", data=data, headers={"X-Forwarded-For": address}, allow_redirects=False
        )

    for _ in range(MAX_LOGIN_FAILURES):
        assert (await attempt("guess", "203.0.113.9")).status == 401
    held = await attempt(TOKEN, "203.0.113.9")  # even the right token, until the window ends
    assert held.status == 429 and "Too many wrong tokens" in await held.text()
    assert _cookie(held, "relay_console") is None
    ttl_s = redis.ttl(keys.console_login_failures_key("203.0.113.9"))
    assert 0 < ttl_s <= LOGIN_FAILURE_WINDOW_S
    assert (await attempt(TOKEN, "198.51.100.7")).status == 303  # another address is not held
