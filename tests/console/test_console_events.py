"""The console's Events pages over HTTP: the list and its filters, each event's story (timeline, payload,
request id, config version), masking and revealing, against what Redis holds (real Redis, real
``relay worker --burst``, real sandbox)."""

from __future__ import annotations

import html
import json
import re
from typing import Any

from redis import Redis
from rq.job import Job
from rq.serializers import JSONSerializer

from relay.ingress.app import create_app
from relay.mapping.config import RelayConfig
from relay.queue import records
from relay.settings import Settings
from tests.conftest import Sandbox, drain_queue
from tests.console.support import Client, console_client, with_token

FORM = {"form": "callback-request", "name": "Ada", "company_size": "1-10"}
PHONE = "+14155550123"
MASKED_PHONE = "+1415*****23"


async def send(client: Client, body: dict[str, Any], source: str = "website-form", **headers: str) -> str:
    answer = await client.post(f"/hooks/{source}", json=body, headers=headers)
    assert answer.status in (200, 202), await answer.text()
    event_id: str = (await answer.json())["event_id"]
    return event_id


def cells(page: str, css_class: str) -> list[str]:
    """The text of each element with ``css_class`` (tags stripped, entities decoded)."""
    found = re.findall(rf'class="[^"]*\b{css_class}\b[^"]*"[^>]*>(.*?)</', page, flags=re.S)
    return [html.unescape(re.sub(r"<[^>]+>", "", text)).strip() for text in found]


async def get(client: Client, path: str, status: int = 200) -> str:
    answer = await client.get(path)
    text = await answer.text()
    assert answer.status == status, text
    return text


async def test_the_list_finds_events_by_every_filter_newest_first_in_pages(
    aiohttp_client: Any, settings: Settings, config: RelayConfig, redis: Redis
) -> None:
    client = await console_client(aiohttp_client, settings, config)
    ids = [await send(client, {**FORM, "phone": PHONE, "submission_id": f"sub-{n}"}) for n in range(3)]
    misrouted = await send(client, {"id": "m-1"}, source="misrouted")

    page = await get(client, "/console/events")
    assert re.findall(r'data-event-id="(evt_\w+)"', page) == [misrouted, *reversed(ids)]

    page = await get(client, "/console/events?source_event_id=sub-1")
    assert re.findall(r'data-event-id="(evt_\w+)"', page) == [ids[1]]
    assert f'href="/console/events/{ids[1]}"' in page

    page = await get(client, "/console/events?source=misrouted&route=not-deployed&status=queued&since=1h")
    assert re.findall(r'data-event-id="(evt_\w+)"', page) == [misrouted]
    page = await get(client, "/console/events?route=callback&until=2000-01-01T00:00:00Z")
    assert "No event matches." in page

    # Pages of one, newest first, each linking to the next.
    seen, path = [], "/console/events?source=website-form&limit=1"
    while path:
        page = await get(client, html.unescape(path))
        seen += re.findall(r'data-event-id="(evt_\w+)"', page)
        older = re.search(r'href="([^"]+)" id="older"', page)
        path = older[1] if older else ""
    assert seen == list(reversed(ids))


async def test_a_bad_filter_is_shown_with_what_is_wrong(
    aiohttp_client: Any, settings: Settings, config: RelayConfig
) -> None:
    client = await console_client(aiohttp_client, settings, config)
    page = await get(client, "/console/events?status=lost", status=400)
    assert "unknown status &#39;lost&#39;" in page
    page = await get(client, "/console/events?since=yesterday-ish", status=400)
    assert "since: &#39;yesterday-ish&#39; is not a time" in page
    page = await get(client, "/console/events?limit=0", status=400)
    assert "limit" in cells(page, "error")[0]


async def test_an_events_page_tells_its_whole_story_as_redis_holds_it(
    aiohttp_client: Any, settings: Settings, config: RelayConfig, redis: Redis, sandbox: Sandbox
) -> None:
    client = await console_client(aiohttp_client, settings, config)
    body = {**FORM, "phone": PHONE, "submission_id": "sub-story", "name": "ada@example.com"}
    event_id = await send(client, body, **{"X-Request-Id": "req-story-1"})
    sandbox.fail(503, 1)  # the first attempt fails, the retry succeeds
    drain_queue(settings)

    view = records.read_event(redis, event_id)
    assert view is not None and view.event.request_id == "req-story-1"
    [run] = view.runs
    assert run.status.value == "succeeded" and run.phlo_run_id
    job = Job.fetch(run.job_id, connection=redis, serializer=JSONSerializer)

    page = await get(client, f"/console/events/{event_id}")
    assert cells(page, "mono")[0] == event_id
    assert f'id="request-id">{view.event.request_id}<' in page
    assert f'id="config-version">{view.event.config_version}<' in page
    kinds = re.findall(r'data-kind="(\w+)"', page)
    assert kinds == ["queued", "attempt_failed", "succeeded"]
    assert cells(page, "phlo-run-id") == [run.phlo_run_id]
    assert cells(page, "runner-message") == [run.message]
    assert re.search(r'<td class="num">1</td>\s*<td class="num">503</td>', page)
    # The payload, masked: the phone and the e-mail address hidden.
    [payload] = cells(page, "payload")
    masked = dict(job.kwargs["payload"], to=MASKED_PHONE, name="a***@example.com", **{"from": "+1415*****00"})
    assert json.loads(payload) == masked
    assert PHONE not in page and "ada@example.com" not in page

    revealed = await get(client, f"/console/events/{event_id}?reveal=1")
    assert json.loads(cells(revealed, "payload")[0]) == job.kwargs["payload"]
    assert job.kwargs["payload"]["to"] == PHONE
    assert 'id="mask"' in revealed


async def test_an_unmappable_run_shows_its_dead_letter_and_no_payload(
    aiohttp_client: Any, settings: Settings, config: RelayConfig, redis: Redis
) -> None:
    client = await console_client(aiohttp_client, settings, config)
    event_id = await send(client, {**FORM, "submission_id": "sub-nophone"})
    page = await get(client, f"/console/events/{event_id}")
    assert re.findall(r'data-kind="(\w+)"', page) == ["dead_lettered"]
    assert "required payload key &#39;to&#39;" in page
    assert "no payload was built" in page
    assert 'href="/console/dead-letters?source=website-form&amp;route=callback"' in page
    replay = f'href="/console/dead-letters/confirm?action=replay&amp;job_id={event_id}-callback"'
    assert replay in page
    confirm = await get(client, html.unescape(replay.removeprefix('href="').removesuffix('"')))
    assert f'data-job-id="{event_id}-callback"' in confirm


async def test_the_sender_id_and_type_are_masked_in_the_list_unless_revealed(
    aiohttp_client: Any, settings: Settings, config: RelayConfig
) -> None:
    client = await console_client(aiohttp_client, settings, config)
    event_id = await send(client, {**FORM, "phone": PHONE, "submission_id": PHONE})
    page = await get(client, "/console/events")
    assert cells(page, "sender-id") == [MASKED_PHONE] and PHONE not in page
    page = await get(client, "/console/events?reveal=1")
    assert cells(page, "sender-id") == [PHONE]
    assert f'href="/console/events/{event_id}?reveal=1"' in page


async def test_an_unknown_event_is_a_404_page(
    aiohttp_client: Any, settings: Settings, config: RelayConfig
) -> None:
    client = await console_client(aiohttp_client, settings, config)
    page = await get(client, "/console/events/evt_nothing", status=404)
    assert "never received, or expired" in page


async def test_without_a_session_the_events_pages_answer_401_with_the_login_form(
    aiohttp_client: Any, settings: Settings, config: RelayConfig
) -> None:
    client = await aiohttp_client(create_app(with_token(settings), config))
    event_id = await send(client, {**FORM, "phone": PHONE, "submission_id": "sub-anon"})
    for path in ("/console/events", f"/console/events/{event_id}", f"/console/events/{event_id}?reveal=1"):
        page = await get(client, path, status=401)
        assert 'action="/console/login"' in page and event_id not in page and PHONE not in page
