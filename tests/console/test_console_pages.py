"""The console's Overview, Dead letters and Routes pages against what Redis holds, and their forms (real
Redis, real `relay worker --burst`, real sandbox)."""

from __future__ import annotations

import re
from typing import Any

import pytest
from redis import Redis

from relay import keys
from relay.ingress.app import create_app
from relay.mapping.config import RelayConfig, parse_config
from relay.outcome.deadletters import failed_registry, list_dead_letters
from relay.queue import pause, stats
from relay.queue.gauges import read_queue_counts
from relay.queue.jobs import relay_queue
from relay.settings import Settings
from tests.conftest import KNOWN_PHLO, Sandbox, drain_queue, watch_secrets
from tests.console.support import Client, apoll, figure, get, log_in, page_csrf, post, row, with_token

NO_PHONE = {"submission_id": "sub-9", "form": "callback-request", "name": "Grace"}
CALLBACK = {"submission_id": "sub-1", "form": "callback-request", "phone": "+14155550123", "name": "Ada"}
OTHER_FORM = {"submission_id": "sub-2", "form": "newsletter"}
SIGNING_SECRET = "console-signing-secret-value-93f2"
watch_secrets(SIGNING_SECRET)


@pytest.fixture
async def client(aiohttp_client: Any, settings: Settings, config: RelayConfig) -> Client:
    made: Client = await aiohttp_client(create_app(with_token(settings), config))
    assert (await log_in(made)).status == 303
    return made


async def test_the_overview_shows_the_queue_accounts_sources_routes_and_a_chart_as_redis_holds_them(
    aiohttp_client: Any, settings: Settings, config: RelayConfig, redis: Redis, sandbox: Sandbox
) -> None:
    # A rate window of an hour: the workers' requests all stay in it while the test reads it.
    settings = with_token(settings, rate_window_s=3600.0)
    client: Client = await aiohttp_client(create_app(settings, config))
    assert (await log_in(client)).status == 303
    for body in (
        CALLBACK,
        CALLBACK,
        NO_PHONE,
        OTHER_FORM,
    ):  # accepted, duplicate, accepted (unmappable), ignored
        assert (await client.post("/hooks/website-form", json=body)).status in (200, 202)
    bad = await client.post(
        "/hooks/website-form", data=b"{not json", headers={"Content-Type": "application/json"}
    )
    assert bad.status == 400
    bad_reason = (await bad.json())["error"]
    assert (await client.post("/hooks/nowhere", json={})).status == 404
    assert (await client.post("/hooks/misrouted", json={"id": "m-1"})).status == 202
    queued = read_queue_counts(redis, settings)
    assert queued.queued == 2

    page = await get(client, "/console/")
    assert figure(page, "queued") == 2 and figure(page, "dead-letters") == 1  # the unmappable route
    drain_queue(settings)  # callback succeeds; the undeployed PHLO answers 404: dead-lettered

    async def settled() -> str | None:
        shown = await get(client, "/console/")
        form = row(shown, "data-source", "website-form")
        return shown if figure(form, "accepted") == 2 and figure(form, "refused") == 1 else None

    page = await apoll(settled)
    counts = read_queue_counts(redis, settings)
    assert (counts.queued, counts.running, counts.scheduled, counts.held) == (0, 0, 0, 0)
    assert figure(page, "queued") == 0 and figure(page, "dead-letters") == counts.dead_lettered == 2
    form = row(page, "data-source", "website-form")
    assert (figure(form, "duplicate"), figure(form, "ignored")) == (1, 1)
    assert f"<code>{bad_reason}</code>: 1" in form
    unknown = row(page, "data-source", "_unknown")
    assert figure(unknown, "refused") == 1 and "unknown_source" in unknown
    callback = row(page, "data-route", "callback")
    assert [figure(callback, name) for name in ("succeeded", "failed", "dead-lettered")] == [1, 0, 1]
    assert "phone" in callback  # its last error: the unmappable event's missing value
    undeployed = row(page, "data-route", "not-deployed")
    assert figure(undeployed, "dead-lettered") == 1
    assert "404" in undeployed
    assert stats.read_runs_by_day(redis)["not-deployed"]["dead_lettered"] == 1
    account = row(page, "data-account", "default")
    assert 'data-breaker="closed"' in account
    assert redis.zcard(keys.rate_key("default")) == figure(account, "window-used") == 2
    assert "2 / 300 per 3600.0 s" in account
    assert '<svg class="chart"' in page and page.count("<polyline") == 2
    points = re.findall(r'<polyline class="events" points="([^"]+)"', page)[0].split()
    assert len(points) == 60
    assert "events received: " in page and "run outcomes: 3 in the last 60 min" in page


async def _dead_letters(client: Client, settings: Settings, redis: Redis) -> tuple[str, str]:
    """Two dead letters: the unmappable route of a form without a phone, and a run the runner refused."""
    unmapped = await (await client.post("/hooks/website-form", json=NO_PHONE)).json()
    misrouted = await (await client.post("/hooks/misrouted", json={"id": "m-1"})).json()
    drain_queue(settings)
    unmappable, refused = f"{unmapped['event_id']}-callback", misrouted["jobs"][0]["job_id"]
    assert {letter.job_id for letter in list_dead_letters(redis, settings)} == {unmappable, refused}
    return unmappable, refused


async def test_dead_letters_are_listed_filtered_and_replayed_one_after_a_confirmation(
    client: Client, settings: Settings, redis: Redis, sandbox: Sandbox
) -> None:
    unmappable, refused = await _dead_letters(client, settings, redis)
    page = await get(client, "/console/dead-letters")
    assert [m for m in re.findall(r'<tr data-job-id="([^"]+)"', page)] == [
        letter.job_id for letter in list_dead_letters(redis, settings)
    ]
    refused_row = row(page, "data-job-id", refused)
    assert "not-deployed" in refused_row and "misrouted" in refused_row and "404" in refused_row
    filtered = await get(client, "/console/dead-letters?route=not-deployed")
    assert re.findall(r'<tr data-job-id="([^"]+)"', filtered) == [refused]
    assert 'value="not-deployed"' in filtered  # the filter stays in its form
    bad = await get(client, "/console/dead-letters?since=yesterday-ish", status=400)
    assert "invalid filter: since" in bad

    # One letter: its link shows a confirmation (a GET changes nothing), whose form replays it.
    confirm = await get(client, f"/console/dead-letters/confirm?action=replay&job_id={refused}")
    assert "Replay 1 dead letter?" in confirm and refused in confirm
    assert redis.zscore(failed_registry(redis, settings).key, refused) is not None
    missing = await post(client, "/console/dead-letters/replay", {"job_id": refused}, status=403)
    assert "csrf_refused" in missing
    assert redis.zscore(failed_registry(redis, settings).key, refused) is not None
    token = re.search(r'name="csrf_token" value="([^"]+)"', confirm)[1]  # type: ignore[index]
    done = await post(client, "/console/dead-letters/replay", {"job_id": refused, "csrf_token": token})
    assert "Replayed 1 of 1." in done
    assert redis.zscore(failed_registry(redis, settings).key, refused) is None
    assert refused.encode() in redis.lrange(relay_queue(redis, settings).key, 0, -1)
    assert [letter.job_id for letter in list_dead_letters(redis, settings)] == [unmappable]


async def test_dead_letters_are_purged_in_bulk_by_selection_and_by_filter(
    client: Client, settings: Settings, redis: Redis, sandbox: Sandbox
) -> None:
    unmappable, refused = await _dead_letters(client, settings, redis)
    token = await page_csrf(client, "/console/dead-letters")
    # Ticked boxes: the confirmation lists them, then the purge takes exactly those.
    confirm = await post(
        client,
        "/console/dead-letters/confirm",
        {"csrf_token": token, "action": "purge", "job_id": [refused, "no-such-job"]},
    )
    assert "Purge 1 dead letter?" in confirm and "no-such-job" in confirm  # named as not a dead letter
    assert re.findall(r'<input type="hidden" name="job_id" value="([^"]+)"', confirm) == [refused]
    done = await post(client, "/console/dead-letters/purge", {"csrf_token": token, "job_id": refused})
    assert "Purged 1." in done
    assert [letter.job_id for letter in list_dead_letters(redis, settings)] == [unmappable]
    # The whole filter.
    confirm = await post(
        client,
        "/console/dead-letters/confirm",
        {"csrf_token": token, "action": "purge", "scope": "filter", "source": "website-form"},
    )
    assert "Purge 1 dead letter?" in confirm and unmappable in confirm and "source=website-form" in confirm
    done = await post(client, "/console/dead-letters/purge", {"csrf_token": token, "job_id": unmappable})
    assert "Purged 1." in done
    assert list_dead_letters(redis, settings) == []
    assert "No dead letters" in await get(client, "/console/dead-letters")
    nothing = await post(
        client, "/console/dead-letters/confirm", {"csrf_token": token, "action": "purge"}, 400
    )
    assert "no dead letter was selected" in nothing


SIGNED_CONFIG = f"""
sources:
  signed-form:
    verify: {{scheme: hmac, header: X-Signature, secrets: [CONSOLE_FORM_SECRET, CONSOLE_FORM_SECRET_OLD]}}
    event_id: {{path: id}}
routes:
  - name: signed-call
    source: signed-form
    phlo_id: {KNOWN_PHLO}
    payload: {{to: {{path: phone, required: true}}, from: "+14155550100"}}
"""


async def test_the_routes_page_shows_the_config_with_secret_names_only_and_pauses_resumes_and_reloads(
    aiohttp_client: Any, settings: Settings, redis: Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    environ = {"CONSOLE_FORM_SECRET": SIGNING_SECRET, "CONSOLE_FORM_SECRET_OLD": SIGNING_SECRET + "-old"}
    for name, value in environ.items():
        monkeypatch.setenv(name, value)  # for the reload, which reads the environment
    settings.config_path.write_text(SIGNED_CONFIG, encoding="utf-8")
    config = parse_config(SIGNED_CONFIG, str(settings.config_path))
    client: Client = await aiohttp_client(create_app(with_token(settings), config, environ))
    assert (await log_in(client)).status == 303
    page = await get(client, "/console/routes")
    assert SIGNING_SECRET not in page
    source = row(page, "data-source", "signed-form")
    assert '<code class="secret-name">CONSOLE_FORM_SECRET</code>' in source
    assert '<code class="secret-name">CONSOLE_FORM_SECRET_OLD</code>' in source
    route = row(page, "data-route", "signed-call")
    assert KNOWN_PHLO in route and "signed-form" in route
    version = re.search(r'id="config-version">([0-9a-f]+)<', page)[1]  # type: ignore[index]
    token = await page_csrf(client, "/console/routes")

    paused = await post(
        client,
        "/console/pause",
        {"csrf_token": token, "kind": "route", "name": "signed-call", "reason": "PHLO fix"},
    )
    assert "route signed-call paused." in paused
    [state] = pause.list_paused(redis)
    assert (state.kind, state.name, state.reason, state.by) == ("route", "signed-call", "PHLO fix", "console")
    assert 'data-paused="route:signed-call"' in row(paused, "data-route", "signed-call")
    for kind, name in (("source", "signed-form"), ("account", "default")):
        await post(client, "/console/pause", {"csrf_token": token, "kind": kind, "name": name})
    assert {(each.kind, each.name) for each in pause.list_paused(redis)} == {
        ("route", "signed-call"),
        ("source", "signed-form"),
        ("account", "default"),
    }
    forged = await post(client, "/console/pause", {"csrf_token": "x", "kind": "route", "name": "other"}, 403)
    assert "csrf_refused" in forged
    wrong = await post(client, "/console/pause", {"csrf_token": token, "kind": "planet", "name": "x"}, 400)
    assert "kind must be one of" in wrong
    for kind, name in (("route", "signed-call"), ("source", "signed-form"), ("account", "default")):
        resumed = await post(client, "/console/resume", {"csrf_token": token, "kind": kind, "name": name})
        assert f"{kind} {name} resumed: 0 held run(s) queued." in resumed
    assert pause.list_paused(redis) == []
    again = await post(
        client, "/console/resume", {"csrf_token": token, "kind": "route", "name": "signed-call"}, 409
    )
    assert "is not paused" in again

    # Reload: an invalid file is refused with its problems, and the version in force stays.
    settings.config_path.write_text(SIGNED_CONFIG.replace("phlo_id:", "phlo:"), encoding="utf-8")
    refused = await post(client, "/console/reload", {"csrf_token": token}, status=422)
    assert f"version {version} stays in force" in refused and "phlo" in refused
    fixed = SIGNED_CONFIG.replace('"+14155550100"', '"+14155550111"')
    settings.config_path.write_text(fixed, encoding="utf-8")
    reloaded = await post(client, "/console/reload", {"csrf_token": token})
    new_version = re.search(r'id="config-version">([0-9a-f]+)<', reloaded)[1]  # type: ignore[index]
    assert new_version != version and f"Reloaded: version {new_version} (was {version})" in reloaded
    assert "+14155550111" in row(reloaded, "data-route", "signed-call")
