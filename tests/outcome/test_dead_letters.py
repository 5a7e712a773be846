"""Dead letters end to end: made by real deliveries and mappings, then listed, shown, replayed and purged
through the library, `relay dlq` and the admin API (real Redis, real `relay worker --burst`, real sandbox)."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from pydantic import SecretStr
from redis import Redis
from rq.job import Job
from rq.serializers import JSONSerializer

from relay import keys
from relay.dev.redis_server import free_port
from relay.errors import DeadLetterError
from relay.ingress.app import create_app
from relay.mapping.config import RelayConfig, parse_config
from relay.outcome.deadletters import (
    DeadLetter,
    DeadLetterFilter,
    list_dead_letters,
    purge,
    show_dead_letter,
)
from relay.outcome.replay import ReplayResult, replay, replay_many
from relay.queue import records as outcome
from relay.queue.jobs import relay_queue
from relay.queue.records import RunOutcome
from relay.settings import Settings
from tests.conftest import (
    KNOWN_PHLO,
    TEST_CONFIG,
    UNKNOWN_PHLO,
    Sandbox,
    assert_sdk_request,
    clean_environment,
    drain_queue,
    send_raw,
    watch_secrets,
)

Client = TestClient[web.Request, web.Application]
TOKEN = "admin-token-for-tests-7c1e"
watch_secrets(TOKEN)
MISROUTED = {"id": "m-1"}
NO_PHONE = {"submission_id": "sub-9", "form": "callback-request", "name": "Grace", "mobile": "+14155550177"}


def fixed_config_text() -> str:
    """TEST_CONFIG after an operator's fix: the PHLO is deployed (and sends the event's id); `to` falls
    back to the form's `mobile` field."""
    text = TEST_CONFIG
    broken = [
        (f'phlo_id: {UNKNOWN_PHLO}\n    payload: {{to: "+14155550100"}}',
         f'phlo_id: {KNOWN_PHLO}\n    payload: {{to: "+14155550100", ref: {{path: id}}}}'),
        ("to: {path: phone, required: true}", 'to: {path: "phone || mobile", required: true}'),
    ]  # fmt: skip
    for old, new in broken:
        assert text.count(old) == 1
        text = text.replace(old, new)
    return text


@pytest.fixture
def fixed_config() -> RelayConfig:
    return parse_config(fixed_config_text(), "fixed.yaml")


@dataclass
class Letters:
    """The dead letters of a test: a run the runner refused (404), and a route that could not be mapped."""

    client: Client
    misrouted: str  # job id
    misrouted_event: str
    unmappable: str
    unmappable_event: str
    started_at: float


async def post(client: Client, source: str, body: Any) -> dict[str, Any]:
    response = await client.post(f"/hooks/{source}", json=body)
    assert response.status == 202
    data: dict[str, Any] = await response.json()
    return data


@pytest.fixture
async def letters(
    aiohttp_client: Any, settings: Settings, config: RelayConfig, sandbox: Sandbox, redis: Redis
) -> Letters:
    started_at = time.time()
    client = await aiohttp_client(create_app(settings, config))
    unmapped = await post(client, "website-form", NO_PHONE)
    assert [dead["route"] for dead in unmapped["dead_lettered"]] == ["callback"]
    misrouted = await post(client, "misrouted", MISROUTED)
    drain_queue(settings)  # the runner does not know the PHLO: 404, dead-lettered at once
    assert [run["status"] for run in sandbox.runs()] == [404]
    sandbox.reset()
    made = Letters(
        client=client,
        misrouted=misrouted["jobs"][0]["job_id"],
        misrouted_event=misrouted["event_id"],
        unmappable=f"{unmapped['event_id']}-callback",
        unmappable_event=unmapped["event_id"],
        started_at=started_at,
    )
    assert ids(list_dead_letters(redis, settings)) == [made.misrouted, made.unmappable]
    return made


def ids(letters: list[DeadLetter]) -> list[str]:
    return [letter.job_id for letter in letters]


def the_run(redis: Redis, event_id: str) -> RunOutcome:
    view = outcome.read_event(redis, event_id)
    assert view is not None
    [run] = view.runs
    return run


def history(run: RunOutcome) -> list[tuple[str, str | None]]:
    return [(step.status.value, step.note) for step in run.history]


# -- list and show ------------------------------------------------------------------------------------


async def test_list_names_each_dead_letter_with_its_reason_newest_first(
    letters: Letters, redis: Redis, settings: Settings
) -> None:
    refused, unmapped = list_dead_letters(redis, settings)
    assert (refused.job_id, refused.event_id, refused.source, refused.route, refused.phlo_id) == (
        letters.misrouted, letters.misrouted_event, "misrouted", "not-deployed", UNKNOWN_PHLO
    )  # fmt: skip
    assert "HTTP 404" in refused.reason and "\n" not in refused.reason
    assert refused.attempts == 1
    assert (unmapped.job_id, unmapped.event_id, unmapped.source, unmapped.route, unmapped.phlo_id) == (
        letters.unmappable, letters.unmappable_event, "website-form", "callback", KNOWN_PHLO
    )  # fmt: skip
    assert "required payload key 'to'" in unmapped.reason
    assert unmapped.attempts == 0
    assert letters.started_at <= unmapped.failed_at <= refused.failed_at <= time.time()


async def test_list_filters_on_every_field(letters: Letters, redis: Redis, settings: Settings) -> None:
    refused, unmapped = list_dead_letters(redis, settings)

    def listed(**fields: Any) -> list[str]:
        limit = fields.pop("limit", None)
        return ids(list_dead_letters(redis, settings, DeadLetterFilter(**fields), limit))

    both, only_refused, only_unmapped = [refused.job_id, unmapped.job_id], [refused.job_id], [unmapped.job_id]
    assert listed(source="misrouted") == only_refused
    assert listed(source="website-form") == only_unmapped
    assert listed(route="callback") == only_unmapped
    assert listed(phlo_id=UNKNOWN_PHLO) == only_refused
    assert listed(reason="http 404") == only_refused  # any case
    assert listed(reason="REQUIRED PAYLOAD KEY") == only_unmapped
    assert listed(since=refused.failed_at) == only_refused
    assert listed(until=unmapped.failed_at) == only_unmapped
    assert listed(since="1h", until=time.time() + 1) == both
    assert listed(until="1h") == []
    before_both = datetime.fromtimestamp(unmapped.failed_at - 1, UTC)
    assert listed(since=before_both.isoformat().replace("+00:00", "Z")) == both  # ISO-8601
    assert listed(until=before_both.replace(tzinfo=None).isoformat()) == []  # naive: UTC
    assert listed(since=str(refused.failed_at)) == only_refused  # epoch seconds as text
    with pytest.raises(ValueError, match="is not a time"):
        DeadLetterFilter.model_validate({"since": "last tuesday"})
    assert listed(source="misrouted", route="callback") == []
    assert listed(limit=1) == only_refused
    assert listed(reason="payload key", limit=1) == only_unmapped  # the limit counts matches only


async def test_show_gives_the_payload_the_run_history_and_the_event(
    letters: Letters, redis: Redis, settings: Settings
) -> None:
    refused = show_dead_letter(redis, settings, letters.misrouted)
    assert refused["job_id"] == letters.misrouted and refused["attempts"] == 1
    assert refused["job"]["function"] == "relay.worker.job.deliver"
    assert refused["job"]["kwargs"]["payload"] == {"to": "+14155550100"}
    assert refused["job"]["kwargs"]["phlo_id"] == UNKNOWN_PHLO
    assert refused["run"]["status"] == "dead_lettered"
    assert refused["run"]["http_status"] == 404
    [step] = refused["run"]["history"]
    assert step["status"] == "dead_lettered" and "HTTP 404" in step["error"]
    assert refused["event"]["event_id"] == letters.misrouted_event
    assert refused["event"]["source_event_id"] == "m-1"

    unmapped = show_dead_letter(redis, settings, letters.unmappable)
    assert unmapped["job"]["function"] == "relay.worker.job.unmappable"
    assert "required payload key 'to'" in unmapped["job"]["kwargs"]["reason"]
    assert unmapped["event"]["source"] == "website-form"

    with pytest.raises(DeadLetterError, match="no dead letter"):
        show_dead_letter(redis, settings, "evt_nope-callback")


# -- replay -------------------------------------------------------------------------------------------


async def test_replay_after_a_fix_maps_the_stored_event_with_the_new_config(
    letters: Letters, redis: Redis, settings: Settings, fixed_config: RelayConfig, sandbox: Sandbox
) -> None:
    result = replay(redis, settings, fixed_config, letters.misrouted)
    assert result == ReplayResult(job_id=letters.misrouted, replayed=True, new_phlo_id=KNOWN_PHLO)
    assert ids(list_dead_letters(redis, settings)) == [letters.unmappable]
    queued = the_run(redis, letters.misrouted_event)
    assert (queued.status.value, queued.phlo_id) == ("queued", KNOWN_PHLO)
    assert "404" in (queued.last_error or "")  # the failure that led here stays visible until it passes

    drain_queue(settings)

    [run] = sandbox.runs()  # the new PHLO, with the payload the new config builds from the stored event
    assert_sdk_request(run, KNOWN_PHLO, {"to": "+14155550100", "ref": "m-1"})
    done = the_run(redis, letters.misrouted_event)
    assert done.job_id == letters.misrouted  # same event, same job id
    assert (done.status.value, done.attempts, done.phlo_run_id) == ("succeeded", 2, run["api_id"])
    assert history(done) == [("dead_lettered", None), ("queued", "replayed"), ("succeeded", None)]
    assert [step.attempt for step in done.history] == [1, None, 2]
    assert ids(list_dead_letters(redis, settings)) == [letters.unmappable]


async def test_replay_of_an_unmappable_route_after_a_fix_delivers_it(
    letters: Letters, redis: Redis, settings: Settings, fixed_config: RelayConfig, sandbox: Sandbox
) -> None:
    [result] = replay_many(redis, settings, fixed_config, DeadLetterFilter(route="callback"))
    assert (result.job_id, result.replayed) == (letters.unmappable, True)
    drain_queue(settings)
    [run] = sandbox.runs()
    assert_sdk_request(run, KNOWN_PHLO, {"from": "+14155550100", "to": "+14155550177", "name": "Grace"})
    done = the_run(redis, letters.unmappable_event)
    assert (done.job_id, done.status.value, done.attempts) == (letters.unmappable, "succeeded", 1)
    assert history(done) == [("queued", "replayed"), ("succeeded", None)]
    assert Job.fetch(letters.unmappable, connection=redis, serializer=JSONSerializer).func_name == (
        "relay.worker.job.deliver"
    )


async def test_a_route_that_still_cannot_be_mapped_stays_dead_lettered_with_the_reason(
    letters: Letters, redis: Redis, settings: Settings, config: RelayConfig
) -> None:
    result = replay(redis, settings, config, letters.unmappable)
    assert not result.replayed
    assert result.reason is not None and "still cannot be mapped" in result.reason
    assert "required payload key 'to'" in result.reason
    assert ids(list_dead_letters(redis, settings, DeadLetterFilter(route="callback"))) == [letters.unmappable]
    assert relay_queue(redis, settings).count == 0
    run = the_run(redis, letters.unmappable_event)
    assert run.status.value == "dead_lettered"
    assert (run.history[-1].note or "").startswith("replay: still cannot be mapped: required payload key")


async def test_a_replayed_run_the_runner_still_refuses_is_dead_lettered_again(
    letters: Letters, redis: Redis, settings: Settings, config: RelayConfig, sandbox: Sandbox
) -> None:
    assert replay(redis, settings, config, letters.misrouted).replayed  # nothing fixed: it maps, as before
    drain_queue(settings)
    assert [run["status"] for run in sandbox.runs()] == [404]
    [again] = list_dead_letters(redis, settings, DeadLetterFilter(source="misrouted"))
    assert (again.job_id, again.attempts) == (letters.misrouted, 2)
    assert "HTTP 404" in again.reason
    run = the_run(redis, letters.misrouted_event)
    assert history(run) == [("dead_lettered", None), ("queued", "replayed"), ("dead_lettered", None)]


async def test_a_replay_needs_the_route_in_the_config_for_the_same_source(
    letters: Letters, redis: Redis, settings: Settings, config: RelayConfig
) -> None:
    without = config.model_copy(update={"routes": [r for r in config.routes if r.name != "not-deployed"]})
    with pytest.raises(DeadLetterError, match="route 'not-deployed' is no longer in the config"):
        replay(redis, settings, without, letters.misrouted)
    moved = config.model_copy(
        update={
            "routes": [
                route.model_copy(update={"source": "typeform"}) if route.name == "not-deployed" else route
                for route in config.routes
            ]
        }
    )
    [result] = replay_many(redis, settings, moved, [letters.misrouted])
    assert not result.replayed
    assert "source 'typeform', not 'misrouted'" in (result.reason or "")
    assert ids(list_dead_letters(redis, settings)) == [letters.misrouted, letters.unmappable]


async def test_concurrent_replays_of_one_dead_letter_queue_it_once(
    letters: Letters, redis: Redis, settings: Settings, fixed_config: RelayConfig, sandbox: Sandbox
) -> None:
    racers = 8
    start = threading.Barrier(racers)
    outcomes: list[ReplayResult | DeadLetterError] = []
    lock = threading.Lock()

    def race() -> None:
        client = Redis.from_url(settings.redis_url)
        start.wait()
        try:
            done: ReplayResult | DeadLetterError = replay(client, settings, fixed_config, letters.misrouted)
        except DeadLetterError as exc:
            done = exc
        finally:
            client.close()
        with lock:
            outcomes.append(done)

    threads = [threading.Thread(target=race) for _ in range(racers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert len(outcomes) == racers
    winners = [done for done in outcomes if isinstance(done, ReplayResult) and done.replayed]
    assert len(winners) == 1
    losers = [done.reason if isinstance(done, ReplayResult) else str(done) for done in outcomes]
    assert all("already replayed" in (reason or "") for reason in losers if reason is not None)
    assert relay_queue(redis, settings).get_job_ids() == [letters.misrouted]
    assert history(the_run(redis, letters.misrouted_event)).count(("queued", "replayed")) == 1
    drain_queue(settings)
    assert len(sandbox.runs()) == 1


# -- purge --------------------------------------------------------------------------------------------


async def test_purge_deletes_dead_letters_and_notes_it_in_the_run(
    letters: Letters, redis: Redis, settings: Settings, fixed_config: RelayConfig
) -> None:
    assert purge(redis, settings, [letters.misrouted]) == 1
    assert ids(list_dead_letters(redis, settings)) == [letters.unmappable]
    assert not Job.exists(letters.misrouted, connection=redis)
    run = the_run(redis, letters.misrouted_event)  # the outcome stays, saying what happened
    assert run.status.value == "dead_lettered"
    assert history(run)[-1] == ("dead_lettered", "purged")
    assert purge(redis, settings, [letters.misrouted]) == 0
    with pytest.raises(DeadLetterError, match="no dead letter"):
        replay(redis, settings, fixed_config, letters.misrouted)
    assert purge(redis, settings, DeadLetterFilter()) == 1
    assert list_dead_letters(redis, settings) == []


async def test_a_purge_keeps_the_event_for_the_outcome_ttl_from_then(
    letters: Letters, redis: Redis, settings: Settings
) -> None:
    # Regression: a purge appended to the run's history without refreshing the event's TTL, as every
    # other write of a record does: the note could vanish with the event long before outcome_ttl_s.
    event_key = keys.event_key(letters.misrouted_event)
    redis.expire(event_key, 120)  # an event near the end of its time
    assert purge(redis, settings, [letters.misrouted]) == 1
    assert settings.outcome_ttl_s - 5 < redis.ttl(event_key) <= settings.outcome_ttl_s


# -- relay dlq ----------------------------------------------------------------------------------------


def dlq(settings: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "relay", "dlq", *args],
        env=clean_environment(**settings.as_environment()),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


async def test_cli_list_and_show(letters: Letters, settings: Settings) -> None:
    listed = dlq(settings, "list")
    assert listed.returncode == 0, listed.stderr
    lines = listed.stdout.splitlines()
    assert letters.misrouted in lines[0] and "HTTP 404" in lines[0] and "attempts 1" in lines[0]
    assert letters.unmappable in lines[1] and "website-form -> callback" in lines[1]
    assert lines[2] == "2 dead letter(s)"

    as_json = dlq(settings, "list", "--json", "--source", "misrouted", "--since", "2h")
    assert as_json.returncode == 0, as_json.stderr
    [letter] = json_of(as_json.stdout)
    assert (letter["job_id"], letter["phlo_id"]) == (letters.misrouted, UNKNOWN_PHLO)
    assert json_of(dlq(settings, "list", "--json", "--until", "30m").stdout) == []
    assert [item["job_id"] for item in json_of(dlq(settings, "list", "--json", "--limit", "1").stdout)] == [
        letters.misrouted
    ]
    bad_time = dlq(settings, "list", "--since", "yesterday-ish")
    assert bad_time.returncode == 2 and "is not a time" in bad_time.stderr

    shown = dlq(settings, "show", letters.unmappable)
    assert shown.returncode == 0, shown.stderr
    detail = json_of(shown.stdout)
    assert detail["route"] == "callback" and detail["job"]["kwargs"]["route"] == "callback"
    assert detail["run"]["status"] == "dead_lettered"
    missing = dlq(settings, "show", "evt_nope-callback")
    assert missing.returncode == 1 and "no dead letter" in missing.stderr


async def test_cli_replay(letters: Letters, settings: Settings, redis: Redis, tmp_path: Path) -> None:
    nothing = dlq(settings, "replay")
    assert nothing.returncode == 2 and "exactly one" in nothing.stderr
    both = dlq(settings, "replay", letters.misrouted, "--all")
    assert both.returncode == 2

    still_broken = dlq(settings, "replay", letters.unmappable)  # the settings' config is the original
    assert still_broken.returncode == 1
    assert f"{letters.unmappable}: not replayed: still cannot be mapped" in still_broken.stdout

    fixed_path = tmp_path / "fixed.yaml"
    fixed_path.write_text(fixed_config_text(), encoding="utf-8")
    fixed = settings.model_copy(update={"config_path": fixed_path})
    replayed = dlq(fixed, "replay", "--source", "website-form")
    assert replayed.returncode == 0, replayed.stderr
    assert replayed.stdout.splitlines() == [
        f"{letters.unmappable}: replayed (PHLO {KNOWN_PHLO})",
        "1 of 1 dead letter(s) replayed",
    ]
    assert ids(list_dead_letters(redis, settings)) == [letters.misrouted]

    broken_path = tmp_path / "broken.yaml"
    broken_path.write_text("routes: [", encoding="utf-8")
    unreadable = dlq(settings.model_copy(update={"config_path": broken_path}), "replay", "--all")
    assert unreadable.returncode == 2 and "config errors" in unreadable.stderr
    assert ids(list_dead_letters(redis, settings)) == [letters.misrouted]


async def test_cli_purge_needs_yes(letters: Letters, settings: Settings, redis: Redis) -> None:
    refused = dlq(settings, "purge", "--all")
    assert refused.returncode == 2 and "--yes" in refused.stderr
    assert len(list_dead_letters(redis, settings)) == 2
    one = dlq(settings, "purge", letters.unmappable, "--yes")
    assert (one.returncode, one.stdout.strip()) == (0, "purged 1 dead letter(s)")
    again = dlq(settings, "purge", letters.unmappable, "--yes")
    assert again.returncode == 1 and "not dead letters" in again.stderr
    rest = dlq(settings, "purge", "--all", "--yes")
    assert (rest.returncode, rest.stdout.strip()) == (0, "purged 1 dead letter(s)")
    assert list_dead_letters(redis, settings) == []


async def test_cli_says_when_redis_does_not_answer(settings: Settings) -> None:
    nowhere = settings.model_copy(update={"redis_url": f"redis://127.0.0.1:{free_port()}/0"})
    for args in [("list",), ("show", "evt_x-callback"), ("purge", "--all", "--yes")]:
        result = dlq(nowhere, *args)
        assert result.returncode == 1
        assert "Redis did not answer" in result.stderr


def json_of(text: str) -> Any:
    return json.loads(text)


# -- admin API ----------------------------------------------------------------------------------------


def bearer(token: str = TOKEN) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def admin_client(aiohttp_client: Any, settings: Settings, config: RelayConfig) -> Client:
    with_token = settings.model_copy(update={"admin_token": SecretStr(TOKEN)})
    client: Client = await aiohttp_client(create_app(with_token, config))
    return client


async def test_admin_api_is_off_without_a_token(
    letters: Letters, aiohttp_client: Any, settings: Settings, config: RelayConfig
) -> None:
    for method, path in [("GET", "/admin/dead-letters"), ("POST", "/admin/dead-letters/replay")]:
        response = await letters.client.request(method, path, headers=bearer(), json={"all": True})
        assert response.status == 404
        assert (await response.json())["error"] == "not_found"
    blank = settings.model_copy(update={"admin_token": SecretStr("")})
    client = await aiohttp_client(create_app(blank, config))
    assert (await client.get("/admin/dead-letters", headers={"Authorization": "Bearer "})).status == 404


async def test_admin_api_refuses_a_missing_or_wrong_token(
    letters: Letters, aiohttp_client: Any, settings: Settings, fixed_config: RelayConfig, redis: Redis
) -> None:
    client = await admin_client(aiohttp_client, settings, fixed_config)
    for headers in [{}, bearer("wrong-token-0001"), {"Authorization": f"Basic {TOKEN}"}, bearer(TOKEN + "x")]:
        for method, path in [
            ("GET", "/admin/dead-letters"),
            ("GET", f"/admin/dead-letters/{letters.misrouted}"),
            ("POST", "/admin/dead-letters/replay"),
            ("POST", "/admin/dead-letters/purge"),
        ]:
            response = await client.request(method, path, headers=headers, json={"all": True})
            assert response.status == 401
            assert response.headers["WWW-Authenticate"].startswith("Bearer")
            body = await response.json()
            assert body["error"] == "unauthorized"
            assert "wrong-token" not in body["message"] and TOKEN not in body["message"]
    assert len(list_dead_letters(redis, settings)) == 2  # nothing replayed or purged


async def test_admin_api_lists_and_shows(letters: Letters, aiohttp_client: Any, settings: Settings) -> None:
    client = await admin_client(aiohttp_client, settings, parse_config(TEST_CONFIG, "test.yaml"))

    async def listed(query: str) -> list[str]:
        response = await client.get(f"/admin/dead-letters{query}", headers=bearer())
        assert response.status == 200
        body = await response.json()
        assert body["count"] == len(body["dead_letters"])
        return [letter["job_id"] for letter in body["dead_letters"]]

    assert await listed("") == [letters.misrouted, letters.unmappable]
    assert await listed("?source=website-form") == [letters.unmappable]
    assert await listed(f"?phlo_id={UNKNOWN_PHLO}&reason=404") == [letters.misrouted]
    assert await listed("?route=callback&since=1h") == [letters.unmappable]
    assert await listed("?until=1h") == []
    assert await listed("?limit=1") == [letters.misrouted]
    for query in ["?since=soon", "?limit=0", "?colour=red"]:
        response = await client.get(f"/admin/dead-letters{query}", headers=bearer())
        assert response.status == 400
        assert (await response.json())["error"] == "bad_request"

    shown = await client.get(f"/admin/dead-letters/{letters.misrouted}", headers=bearer())
    assert shown.status == 200
    detail = await shown.json()
    assert detail["job"]["kwargs"]["payload"] == {"to": "+14155550100"}
    assert [step["status"] for step in detail["run"]["history"]] == ["dead_lettered"]
    assert detail["event"]["event_id"] == letters.misrouted_event
    missing = await client.get("/admin/dead-letters/evt_nope-callback", headers=bearer())
    assert missing.status == 404
    assert (await missing.json())["error"] == "unknown_dead_letter"


async def test_admin_api_replays_and_purges(
    letters: Letters,
    aiohttp_client: Any,
    settings: Settings,
    fixed_config: RelayConfig,
    redis: Redis,
    sandbox: Sandbox,
) -> None:
    client = await admin_client(aiohttp_client, settings, fixed_config)
    for body in [{}, {"all": False}, {"filter": {}}, {"job_ids": []}, {"job_ids": [1]}, [letters.misrouted],
                 {"job_ids": [letters.misrouted], "all": True}, {"filter": {"colour": "red"}}]:  # fmt: skip
        response = await client.post("/admin/dead-letters/replay", headers=bearer(), json=body)
        assert response.status == 400, body
        assert (await response.json())["error"] == "bad_request"
    not_json = await client.post("/admin/dead-letters/purge", headers=bearer(), data=b"all")
    assert not_json.status == 400
    assert len(list_dead_letters(redis, settings)) == 2

    response = await client.post(
        "/admin/dead-letters/replay", headers=bearer(), json={"job_ids": [letters.misrouted, "evt_nope-x"]}
    )
    assert response.status == 200
    body = await response.json()
    assert (body["replayed"], body["not_replayed"]) == (1, 1)
    assert body["results"][0] == {
        "job_id": letters.misrouted, "replayed": True, "reason": None, "new_phlo_id": KNOWN_PHLO
    }  # fmt: skip
    assert "no dead letter" in body["results"][1]["reason"]
    drain_queue(settings)
    [run] = sandbox.runs()
    assert_sdk_request(run, KNOWN_PHLO, {"to": "+14155550100", "ref": "m-1"})

    response = await client.post(
        "/admin/dead-letters/purge", headers=bearer(), json={"filter": {"route": "x"}}
    )
    assert (await response.json()) == {"purged": 0}
    response = await client.post("/admin/dead-letters/purge", headers=bearer(), json={"all": True})
    assert response.status == 200
    assert (await response.json()) == {"purged": 1}
    assert list_dead_letters(redis, settings) == []
    assert history(the_run(redis, letters.unmappable_event))[-1] == ("dead_lettered", "purged")


async def test_admin_api_refuses_a_token_that_is_not_utf8(
    aiohttp_client: Any, settings: Settings, config: RelayConfig
) -> None:
    """Regression: a bearer token with a byte that is not UTF-8 failed to encode before the comparison:
    an unauthenticated request got a 500 instead of a 401."""
    client = await admin_client(aiohttp_client, settings, config)
    assert client.port is not None
    response = await send_raw(
        client.port,
        b"GET /admin/dead-letters HTTP/1.1\r\nHost: relay\r\nAuthorization: Bearer "
        + TOKEN.encode()
        + b"\xff\r\nConnection: close\r\n\r\n",
    )
    assert response.status == 401
    assert response.json()["error"] == "unauthorized"


@pytest.mark.parametrize(
    ("method", "path", "content_type", "body", "message"),
    [
        ("POST", "/admin/dead-letters/purge", "application/json", b"[" * 100_000, "not JSON"),
        ("POST", "/admin/dead-letters/replay", "application/json; charset=klingon", b"{}", "not JSON"),
        ("GET", "/admin/dead-letters?limit=" + "9" * 5000, None, b"", "limit must be a positive integer"),
        ("GET", "/admin/dead-letters?limit=%C2%B2", None, b"", "limit must be a positive integer"),
    ],
    ids=["deep-json", "unknown-charset", "huge-limit", "superscript-limit"],
)
async def test_admin_api_answers_bad_input_with_400_not_500(
    aiohttp_client: Any,
    settings: Settings,
    config: RelayConfig,
    method: str,
    path: str,
    content_type: str | None,
    body: bytes,
    message: str,
) -> None:
    """Regression: RecursionError, LookupError and int()'s digit limit escaped the handlers as 500s."""
    client = await admin_client(aiohttp_client, settings, config)
    headers = bearer() | ({"Content-Type": content_type} if content_type else {})
    response = await client.request(method, path, headers=headers, data=body)
    assert response.status == 400
    answer = await response.json()
    assert answer["error"] == "bad_request"
    assert message in answer["message"]
