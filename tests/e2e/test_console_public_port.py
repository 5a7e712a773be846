"""On the public port of a real ``relay serve``, the console and the admin API give nothing without a
credential, and no console form acts without its session's CSRF token.

Every route is taken from the app's own router, so a page added later is covered without editing this test.
(``/events/...`` and ``/metrics`` are guarded by the access-control change, and tested with it.)
"""

from __future__ import annotations

import re
from collections.abc import Iterator

import httpx
import pytest
from pydantic import SecretStr
from redis import Redis

from relay import keys
from relay.ingress.app import create_app
from relay.mapping.config import RelayConfig
from relay.outcome.deadletters import failed_registry
from relay.settings import Settings
from tests.conftest import poll, watch_secrets
from tests.e2e.browser import Processes, start_relay

TOKEN = "console-public-port-admin-token-4e71"
watch_secrets(TOKEN)
PHONE = "+14155550123"
OPEN = {("GET", "/console/login"), ("POST", "/console/login")}  # logging in; static files hold no data either
_CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')


@pytest.fixture
def processes() -> Iterator[Processes]:
    processes = Processes()
    yield processes
    processes.stop()


def guarded_routes(settings: Settings, config: RelayConfig, **values: str) -> list[tuple[str, str]]:
    """Every (method, path) of the console and the admin API the app registers, ``{name}`` filled in."""
    app = create_app(settings, config, environ={})
    found = []
    for route in app.router.routes():
        path = route.resource.canonical if route.resource is not None else ""
        if route.method == "HEAD" or not path.startswith(("/console", "/admin")):
            continue
        if path.startswith("/console/static") or (route.method, path) in OPEN:
            continue
        found.append((route.method, re.sub(r"\{(\w+)[^}]*\}", lambda match: values[match[1]], path)))
    return sorted(set(found))


def test_logged_out_every_console_page_and_admin_route_answers_401_and_shows_nothing(
    redis: Redis, settings: Settings, config: RelayConfig, processes: Processes
) -> None:
    settings = settings.model_copy(update={"admin_token": SecretStr(TOKEN)})
    url = start_relay(processes, settings, worker=False)
    answer = httpx.post(f"{url}/hooks/misrouted", json={"id": PHONE})
    event_id = answer.json()["event_id"]
    job_id = f"{event_id}-not-deployed"
    routes = guarded_routes(settings, config, event_id=event_id, job_id=job_id)
    assert ("GET", f"/console/events/{event_id}") in routes and ("POST", "/console/pause") in routes
    assert ("POST", "/admin/pause") in routes
    with httpx.Client(base_url=url) as client:
        for method, path in routes:
            # A forged session cookie is no session.
            for cookies in ({}, {"relay_console": "forged-session"}):
                client.cookies.clear()
                client.cookies.update(cookies)
                answer = client.request(method, path, data={"kind": "route", "name": "callback"})
                assert answer.status_code == 401, (method, path, answer.status_code)
                assert event_id not in answer.text and PHONE not in answer.text, path
                if path.startswith("/admin"):
                    assert answer.headers["WWW-Authenticate"].startswith("Bearer")
                else:
                    assert 'action="/console/login"' in answer.text
    assert redis.hgetall(keys.paused_key("route")) == {}


def log_in(client: httpx.Client) -> str:
    """Log in through the form; the session's CSRF token."""
    form = client.get("/console/login")
    csrf = _CSRF.search(form.text)
    assert csrf is not None
    answer = client.post("/console/login", data={"token": TOKEN, "csrf_token": csrf[1], "next": "/console/"})
    assert answer.status_code == 303 and client.cookies.get("relay_console")
    page = client.get("/console/routes")
    own = _CSRF.search(page.text)
    assert page.status_code == 200 and own is not None
    return own[1]


def test_no_console_form_acts_with_a_missing_forged_or_other_sessions_csrf_token(
    redis: Redis, settings: Settings, config: RelayConfig, processes: Processes
) -> None:
    settings = settings.model_copy(update={"admin_token": SecretStr(TOKEN)})
    url = start_relay(processes, settings, worker=False)
    event_id = httpx.post(f"{url}/hooks/website-form", json={"form": "callback-request", "name": "x"}).json()[
        "event_id"
    ]
    job_id = f"{event_id}-callback"  # unmappable (no phone): a dead letter
    registry = failed_registry(redis, settings)
    poll(lambda: registry.get_job_count(cleanup=False) == 1 or None)
    posts = [
        path
        for method, path in guarded_routes(settings, config, event_id=event_id, job_id=job_id)
        if method == "POST" and path.startswith("/console")
    ]
    assert set(posts) >= {
        "/console/pause",
        "/console/dead-letters/replay",
        "/console/logout",
    }
    with httpx.Client(base_url=url) as other, httpx.Client(base_url=url) as client:
        others_csrf = log_in(other)
        own_csrf = log_in(client)
        for path in posts:
            fields = {"kind": "route", "name": "callback", "job_id": job_id, "action": "purge"}
            for csrf in (None, "forged-" + own_csrf[7:], others_csrf):
                data = fields if csrf is None else {**fields, "csrf_token": csrf}
                answer = client.post(path, data=data)
                assert answer.status_code == 403, (path, csrf, answer.status_code)
                assert answer.json()["error"] == "csrf_refused"
        # Nothing happened: no pause, the dead letter still there, the session still open.
        assert redis.hgetall(keys.paused_key("route")) == {}
        assert registry.get_job_ids(cleanup=False) == [job_id]
        assert client.get("/console/routes").status_code == 200
        # Its own token does act.
        answer = client.post(
            "/console/pause", data={"kind": "route", "name": "callback", "csrf_token": own_csrf}
        )
        assert answer.status_code == 200 and redis.hexists(keys.paused_key("route"), "callback")


def test_without_an_admin_token_the_console_and_admin_api_are_not_there(
    settings: Settings, config: RelayConfig, processes: Processes
) -> None:
    url = start_relay(processes, settings.model_copy(update={"admin_token": None}), worker=False)
    with_token = settings.model_copy(update={"admin_token": SecretStr(TOKEN)})
    routes = guarded_routes(with_token, config, event_id="evt_x", job_id="evt_x-callback")
    with httpx.Client(base_url=url) as client:
        for method, path in [*routes, ("GET", "/console/login"), ("GET", "/console/static/console.css")]:
            assert client.request(method, path).status_code == 404, (method, path)
