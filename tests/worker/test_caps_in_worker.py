"""Frequency caps through the ingress, `relay worker` and the runner sandbox: a retried run is counted once,
an account's cap spans its routes, a dead letter keeps its place and its replay its cap, and the admin API's
replay past the cap.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any

from pydantic import SecretStr
from redis import Redis
from rq.job import Job
from rq.serializers import JSONSerializer

from relay import keys
from relay.ingress.app import create_app
from relay.mapping.caps import recipient_hash
from relay.mapping.config import parse_config
from relay.outcome.override import replay_suppressed
from relay.outcome.replay import ReplayResult, replay
from relay.queue.jobs import relay_queue
from relay.queue.records import read_event
from relay.settings import Settings
from tests.conftest import ADMIN_HEADERS, ALERT_PHLO, KNOWN_PHLO, Sandbox, drain_queue, with_admin_token

PHONE = "+14155550123"
TOKEN = "caps-admin-token-7f1d"
CONFIG = f"""
sources:
  forms: {{event_id: {{path: ref}}}}
accounts:
  default:
    limit_per_recipient: {{max: 1, per: 7d}}
routes:
  - name: call
    source: forms
    when: "kind == 'call' || kind == 'both'"
    phlo_id: {KNOWN_PHLO}
    payload: {{to: {{path: phone, required: true}}}}
    limit_per_recipient: {{max: 1, per: 24h}}
  - name: sms
    source: forms
    when: "kind == 'both'"
    phlo_id: {ALERT_PHLO}
    payload: {{to: {{path: phone, required: true}}}}
"""


async def post(client: Any, ref: str, kind: str = "call", **extra: Any) -> str:
    response = await client.post("/hooks/forms", json={"ref": ref, "kind": kind, "phone": PHONE, **extra})
    assert response.status == 202, await response.text()
    event_id: str = (await response.json())["event_id"]
    return event_id


def statuses(redis: Redis, event_id: str) -> dict[str, str]:
    view = read_event(redis, event_id)
    assert view is not None
    return {run.route: run.status.value for run in view.runs}


async def test_a_retried_run_is_counted_once_and_the_next_event_is_suppressed_naming_it(
    aiohttp_client: Any, settings: Settings, sandbox: Sandbox, redis: Redis
) -> None:
    app = create_app(with_admin_token(settings), parse_config(CONFIG, "caps.yaml"))  # reads /events/{id}
    client = await aiohttp_client(app)
    first = await post(client, "r-1")
    sandbox.fail(500, 1)  # its first attempt fails; the retry passes its cap again and succeeds
    drain_queue(settings)
    view = read_event(redis, first)
    assert view is not None
    [run] = view.runs
    assert (run.status, run.attempts) == ("succeeded", 2)
    route_key = keys.cap_key("route", "call", recipient_hash(PHONE))
    assert redis.zrange(route_key, 0, -1) == [f"{first} {run.job_id}".encode()]

    second = await post(client, "r-2")
    drain_queue(settings)
    view = read_event(redis, second)
    assert view is not None
    [suppressed] = view.runs
    assert suppressed.status == "suppressed" and suppressed.collided_with is not None
    assert (suppressed.collided_with.job_id, suppressed.collided_with.kind) == (run.job_id, "route")
    assert len(sandbox.runs()) == 2  # the failed attempt and the success: nothing for the second event
    # Through the event API too.
    shown = await (await client.get(f"/events/{second}", headers=ADMIN_HEADERS)).json()
    assert shown["runs"][0]["collided_with"]["event_id"] == first


async def test_an_accounts_cap_spans_its_routes(
    aiohttp_client: Any, settings: Settings, sandbox: Sandbox, redis: Redis
) -> None:
    client = await aiohttp_client(create_app(settings, parse_config(CONFIG, "caps.yaml")))
    event_id = await post(client, "r-1", kind="both")  # a call and an SMS to one number
    drain_queue(settings)
    assert sorted(statuses(redis, event_id).values()) == ["succeeded", "suppressed"]
    view = read_event(redis, event_id)
    assert view is not None
    [suppressed] = [run for run in view.runs if run.status == "suppressed"]
    assert suppressed.collided_with is not None
    assert (suppressed.collided_with.kind, suppressed.collided_with.name) == ("account", "default")
    assert len(sandbox.runs()) == 1


async def test_a_dead_letter_keeps_its_place_under_the_cap_and_its_replay_passes_through_it(
    aiohttp_client: Any, settings: Settings, sandbox: Sandbox, redis: Redis
) -> None:
    config = parse_config(CONFIG, "caps.yaml")
    client = await aiohttp_client(create_app(settings, config))
    sandbox.fail(400, 1)  # refused: a dead letter, but counted once admitted (an attempt may reach a phone)
    refused = await post(client, "r-1")
    drain_queue(settings)
    assert statuses(redis, refused) == {"call": "dead_lettered"}
    later = await post(client, "r-2")
    drain_queue(settings)
    view = read_event(redis, later)
    assert view is not None and view.runs[0].collided_with is not None
    assert view.runs[0].collided_with.job_id == f"{refused}-call"
    # Replayed, the dead letter is mapped again with its cap, and passes through its own place.
    assert replay(redis, settings, config, f"{refused}-call").replayed
    job = Job.fetch(f"{refused}-call", connection=redis, serializer=JSONSerializer)
    assert [scope["kind"] for scope in job.kwargs["cap"]["scopes"]] == ["route", "account"]
    drain_queue(settings)
    assert statuses(redis, refused) == {"call": "succeeded"}
    assert redis.zcard(keys.cap_key("route", "call", recipient_hash(PHONE))) == 1


async def test_the_admin_api_replays_a_suppressed_run_only_past_its_cap(
    aiohttp_client: Any, settings: Settings, sandbox: Sandbox, redis: Redis
) -> None:
    admin = settings.model_copy(update={"admin_token": SecretStr(TOKEN)})
    client = await aiohttp_client(create_app(admin, parse_config(CONFIG, "caps.yaml")))
    auth = {"Authorization": f"Bearer {TOKEN}"}
    first, second = await post(client, "r-1"), await post(client, "r-2")
    drain_queue(settings)
    job_id = f"{second}-call"
    if statuses(redis, second) == {"call": "succeeded"}:  # the worker may take either first
        job_id = f"{first}-call"
    assert (await client.post("/admin/runs/replay", json={"job_ids": [job_id]})).status == 401
    for body, says in (
        ({"job_ids": [job_id]}, '"override_cap": true'),
        ({"job_ids": [job_id], "override_cap": "yes"}, '"override_cap": true'),
        ({"job_ids": [], "override_cap": True}, "the body must be"),
        ({"override_cap": True}, "the body must be"),
    ):
        refused = await client.post("/admin/runs/replay", json=body, headers=auth)
        assert refused.status == 400
        assert says in (await refused.json())["message"]
    body = {"job_ids": [job_id, "evt_nope-call"], "override_cap": True}
    answer = await (await client.post("/admin/runs/replay", json=body, headers=auth)).json()
    assert (answer["replayed"], answer["not_replayed"]) == (1, 1)
    assert answer["results"][1]["reason"] == "no such run (never queued, or expired)"
    drain_queue(settings)
    assert statuses(redis, first) == statuses(redis, second) == {"call": "succeeded"}
    assert len(sandbox.runs()) == 2


async def test_two_replays_of_one_suppressed_run_at_once_queue_it_once(
    aiohttp_client: Any, settings: Settings, sandbox: Sandbox, redis: Redis
) -> None:
    config = parse_config(CONFIG, "caps.yaml")
    client = await aiohttp_client(create_app(settings, config))
    events = [await post(client, "r-1"), await post(client, "r-2")]
    drain_queue(settings)
    [job_id] = [f"{event}-call" for event in events if statuses(redis, event) == {"call": "suppressed"}]
    start = threading.Barrier(2)

    def replay_it() -> ReplayResult:
        start.wait()
        return replay_suppressed(redis, settings, config, job_id)

    results = await asyncio.gather(*(asyncio.to_thread(replay_it) for _ in range(2)))
    assert sorted(result.replayed for result in results) == [False, True]
    assert next(result.reason for result in results if not result.replayed) in (
        "already replayed",
        "not suppressed: it is queued",
    )
    assert relay_queue(redis, settings).job_ids == [job_id]
    drain_queue(settings)
    assert len(sandbox.runs()) == 2
