"""Shared by the console's tests: an ingress app with the admin token, and a client logged in to it."""

from __future__ import annotations

import asyncio
import html
import re
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from aiohttp import web
from aiohttp.test_utils import TestClient
from pydantic import SecretStr

from relay.ingress.app import create_app
from relay.mapping.config import RelayConfig
from relay.settings import Settings
from tests.conftest import watch_secrets

T = TypeVar("T")
Client = TestClient[web.Request, web.Application]
TOKEN = "console-admin-token-for-tests-51b9"
watch_secrets(TOKEN)
_CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')


def with_token(settings: Settings, **updates: Any) -> Settings:
    return settings.model_copy(update={"admin_token": SecretStr(TOKEN), **updates})


def csrf_of(html: str) -> str:
    """The CSRF token of the first form of a page."""
    match = _CSRF.search(html)
    assert match is not None, "no CSRF field in the page"
    return match[1]


async def log_in(client: Client, token: str = TOKEN) -> Any:
    """Fetch the login form and post the token; the answer to the post (not followed)."""
    form = await client.get("/console/login")
    assert form.status == 200
    csrf = csrf_of(await form.text())
    return await client.post(
        "/console/login", data={"token": token, "csrf_token": csrf},
        allow_redirects=False,
    )  # fmt: skip


async def console_client(aiohttp_client: Any, settings: Settings, config: RelayConfig) -> Client:
    """A client of an ingress with the admin token set, logged in to the console."""
    client: Client = await aiohttp_client(create_app(with_token(settings), config))
    answer = await log_in(client)
    assert answer.status == 303, await answer.text()
    return client


async def page_csrf(client: Client, path: str = "/console/") -> str:
    """The session's CSRF token, read from a page's forms."""
    answer = await client.get(path)
    assert answer.status == 200, await answer.text()
    return csrf_of(await answer.text())


async def apoll(check: Callable[[], Awaitable[T | None]], timeout_s: float = 20.0) -> T:
    """``tests.conftest.poll`` for checks that await: until ``check`` returns a value, with a deadline."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = await check()
        if value is not None:
            return value
        assert time.monotonic() < deadline, "condition not reached before the deadline"
        await asyncio.sleep(0.05)


def row(page: str, attribute: str, name: str) -> str:
    """The HTML of the table row marked ``attribute="name"``."""
    match = re.search(rf'<tr {attribute}="{re.escape(html.escape(name))}">(.*?)</tr>', page, re.S)
    assert match is not None, f"no row {attribute}={name}"
    return match[1]


def figure(fragment: str, name: str) -> int:
    match = re.search(rf'data-{name}="(\d+)"', fragment)
    assert match is not None, f"no figure {name}"
    return int(match[1])


async def get(client: Client, path: str, status: int = 200) -> str:
    answer = await client.get(path)
    text = await answer.text()
    assert answer.status == status, text
    return text


async def post(client: Client, path: str, data: Any, status: int = 200) -> str:
    answer = await client.post(path, data=data)
    text = await answer.text()
    assert answer.status == status, text
    return text
