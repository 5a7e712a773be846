"""`relay events list` and `GET /admin/events`: the event search from the command line and the admin API,
on events stored through the real ingress (real Redis)."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from pydantic import SecretStr

from relay.ingress.app import create_app
from relay.mapping.config import RelayConfig
from relay.settings import Settings
from tests.conftest import clean_environment, watch_secrets

Client = TestClient[web.Request, web.Application]
TOKEN = "admin-token-for-search-tests-51d0"
watch_secrets(TOKEN)


def bearer(token: str = TOKEN) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def form(submission: str, **extra: Any) -> dict[str, Any]:
    return {"submission_id": submission, "form": "callback-request", "phone": "+14155550123", **extra}


@pytest.fixture
async def client(aiohttp_client: Any, settings: Settings, config: RelayConfig) -> Client:
    with_token = settings.model_copy(update={"admin_token": SecretStr(TOKEN)})
    made: Client = await aiohttp_client(create_app(with_token, config))
    return made


@pytest.fixture
async def stored(client: Client) -> list[str]:
    """Three events, oldest first: two website forms (one ignored) and a HubSpot one."""
    bodies = [
        ("website-form", form("sub-1"), {}),
        ("website-form", {"submission_id": "sub-2", "form": "newsletter"}, {}),
        ("hubspot-workflow", {"properties": {"phone": {"value": "+14155550124"}}}, {"X-Request-Id": "hs-3"}),
    ]
    made = []
    for source, body, headers in bodies:
        response = await client.post(f"/hooks/{source}", json=body, headers=headers)
        assert response.status in (200, 202)
        made.append((await response.json())["event_id"])
    return made


def relay_events(settings: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "relay", "events", "list", *args],
        env=clean_environment(**settings.as_environment()),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


async def test_cli_lists_with_filters_and_pages(stored: list[str], settings: Settings) -> None:
    first, ignored, hubspot = stored
    listed = relay_events(settings, "--json")
    assert listed.returncode == 0, listed.stderr
    page = json.loads(listed.stdout)
    assert [view["event"]["event_id"] for view in page["events"]] == [hubspot, ignored, first]
    assert page["next_before"] is None

    found = relay_events(settings, "--source-event-id", "hs-3", "--json")
    assert [view["event"]["event_id"] for view in json.loads(found.stdout)["events"]] == [hubspot]

    table = relay_events(settings, "--source", "website-form", "--status", "queued", "--since", "1h")
    assert table.returncode == 0, table.stderr
    header, row, summary = table.stdout.splitlines()
    assert header.split() == ["RECEIVED", "EVENT", "SOURCE", "SENDER", "ID", "TYPE", "STATUS", "RUNS"]
    assert first in row and "sub-1" in row and "callback:queued" in row and "callback-request" in row
    assert summary == "1 event(s), newest first"

    paged = relay_events(settings, "--limit", "2")
    assert paged.stdout.splitlines()[-1] == f"2 event(s), newest first; next page: --before {ignored}"
    rest = relay_events(settings, "--limit", "2", "--before", ignored, "--json")
    assert [view["event"]["event_id"] for view in json.loads(rest.stdout)["events"]] == [first]

    assert relay_events(settings, "--until", "1h").stdout.strip() == "0 event(s), newest first"


async def test_cli_refuses_bad_filters(settings: Settings) -> None:
    for args in (["--status", "lost"], ["--since", "yesterday"], ["--limit", "0"]):
        refused = relay_events(settings, *args)
        assert refused.returncode == 2
        assert "error" in refused.stderr
    too_many = relay_events(settings, "--limit", "501")
    assert too_many.returncode == 2
    assert "less than or equal to 500" in too_many.stderr


async def test_admin_api_lists_with_filters(client: Client, stored: list[str]) -> None:
    first, ignored, hubspot = stored
    response = await client.get("/admin/events", headers=bearer())
    assert response.status == 200
    body = await response.json()
    assert body["count"] == 3
    assert [view["event"]["event_id"] for view in body["events"]] == [hubspot, ignored, first]
    assert body["next_before"] is None

    query = {"source": "website-form", "status": "ignored", "since": "1h", "until": "9999999999"}
    body = await (await client.get("/admin/events", params=query, headers=bearer())).json()
    assert [view["event"]["event_id"] for view in body["events"]] == [ignored]

    body = await (await client.get("/admin/events?source_event_id=hs-3", headers=bearer())).json()
    assert body["events"][0]["runs"][0]["route"] == "hubspot-sms"

    body = await (await client.get("/admin/events?limit=2", headers=bearer())).json()
    assert (body["count"], body["next_before"]) == (2, ignored)
    params = {"limit": "2", "before": ignored}
    body = await (await client.get("/admin/events", params=params, headers=bearer())).json()
    assert [view["event"]["event_id"] for view in body["events"]] == [first]
    body = await (await client.get("/admin/events?route=callback&status=queued", headers=bearer())).json()
    assert [view["event"]["event_id"] for view in body["events"]] == [first]


async def test_admin_api_refuses_bad_filters_and_missing_tokens(client: Client, stored: list[str]) -> None:
    for params, says in [
        ({"status": "lost"}, "unknown status 'lost'"),
        ({"since": "yesterday"}, "'yesterday' is not a time"),
        ({"limit": "0"}, "limit"),
        ({"limit": "many"}, "limit"),
        ({"limit": "501"}, "limit"),
        ({"sorce": "website-form"}, "unknown filter 'sorce'"),
    ]:
        response = await client.get("/admin/events", params=params, headers=bearer())
        assert response.status == 400, params
        body = await response.json()
        assert body["error"] == "invalid_filter"
        assert says in body["message"]
    for headers in [{}, bearer("wrong-token-0001"), {"Authorization": f"Basic {TOKEN}"}]:
        response = await client.get("/admin/events", headers=headers)
        assert response.status == 401
        assert (await response.json())["error"] == "unauthorized"


async def test_admin_api_is_off_without_a_token(
    aiohttp_client: Any, settings: Settings, config: RelayConfig
) -> None:
    client = await aiohttp_client(create_app(settings, config))
    assert (await client.get("/admin/events", headers=bearer())).status == 404
