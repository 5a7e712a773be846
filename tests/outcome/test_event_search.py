"""Event search: events stored through the real ingress, found through the index by every filter, paged
newest first, followed through status changes made by a real worker, and trimmed with the records."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from redis import Redis

from relay import keys
from relay.ingress.app import create_app
from relay.mapping.config import RelayConfig, parse_config
from relay.outcome.search import EventPage, EventQuery, search_events
from relay.queue import index, records
from relay.settings import Settings
from tests.conftest import TEST_CONFIG, Sandbox, drain_queue

Client = TestClient[web.Request, web.Application]
# A batching source: one request's events share their received time, so the cursor must order ties.
BULK_CONFIG = TEST_CONFIG.replace(
    "sources:\n",
    "sources:\n  bulk:\n    batch: events\n    event_id: {path: id}\n",
    1,
).replace(
    "routes:\n",
    "routes:\n  - name: bulk-call\n    source: bulk\n    phlo_id: 11111111-aaaa-4bbb-8ccc-000000000001\n"
    '    payload: {to: "+14155550100", ref: {path: id}}\n',
    1,
)


@pytest.fixture
def config() -> RelayConfig:
    return parse_config(BULK_CONFIG, "search-config.yaml")


async def post(client: Client, source: str, body: Any, headers: dict[str, str] | None = None) -> Any:
    response = await client.post(f"/hooks/{source}", json=body, headers=headers or {})
    assert response.status in (200, 202), await response.text()
    return await response.json()


def form(submission: str, **extra: Any) -> dict[str, Any]:
    return {"submission_id": submission, "form": "callback-request", "phone": "+14155550123", **extra}


def ids(page: EventPage) -> list[str]:
    return [view.event.event_id for view in page.events]


def find(redis: Redis, **filters: Any) -> list[str]:
    return ids(search_events(redis, EventQuery(**filters)))


@pytest.fixture
async def client(aiohttp_client: Any, settings: Settings, config: RelayConfig) -> Client:
    made: Client = await aiohttp_client(create_app(settings, config))
    return made


async def test_each_filter_and_their_combinations(client: Client, redis: Redis) -> None:
    started = time.time()
    plain = (await post(client, "website-form", form("sub-1")))["event_id"]
    big = (await post(client, "website-form", form("sub-2", company_size="500+")))["event_id"]
    ignored = (await post(client, "website-form", {"submission_id": "sub-3", "form": "newsletter"}))[
        "event_id"
    ]
    hubspot_body = {"properties": {"phone": {"value": "+14155550124"}}}
    hubspot = (await post(client, "hubspot-workflow", hubspot_body, {"X-Request-Id": "sub-1"}))["event_id"]
    middle = redis.zscore(keys.index_all_key(), ignored)
    assert middle is not None

    assert find(redis) == [hubspot, ignored, big, plain]
    assert find(redis, source="website-form") == [ignored, big, plain]
    assert find(redis, source="hubspot-workflow") == [hubspot]
    assert find(redis, source="nowhere") == []
    assert find(redis, route="sales-alert") == [big]
    assert find(redis, route="callback") == [big, plain]
    assert find(redis, status="ignored") == [ignored]
    assert find(redis, status="accepted") == [hubspot, big, plain]
    assert find(redis, status="queued") == [hubspot, big, plain]
    assert find(redis, status="succeeded") == []
    assert find(redis, source_event_id="sub-1") == [hubspot, plain]  # the same sender id in two sources
    assert find(redis, source_event_id="sub-1", source="website-form") == [plain]
    assert find(redis, since=middle) == [hubspot, ignored]
    assert find(redis, until=middle) == [ignored, big, plain]
    assert find(redis, since=middle, until=middle) == [ignored]
    assert find(redis, since=started - 3600, until=started - 1) == []
    assert find(redis, source="website-form", status="queued", since=middle) == []
    assert find(redis, source="website-form", route="callback", status="queued") == [big, plain]
    view = search_events(redis, EventQuery(source_event_id="sub-2")).events[0]
    assert view == records.read_event(redis, big)  # the whole event: its record and every run


async def test_pages_newest_first_with_the_cursor(client: Client, redis: Redis) -> None:
    batch = await post(client, "bulk", {"events": [{"id": f"b-{n}"} for n in range(7)]})
    one = (await post(client, "website-form", form("after-the-batch")))["event_id"]
    batched = [event["event_id"] for event in batch["events"]]
    # The batch's events share one time: newest first, then by event id, as the index orders them.
    expected = [one, *sorted(batched, reverse=True)]
    assert len({redis.zscore(keys.index_all_key(), event_id) for event_id in batched}) == 1
    seen, before, pages = [], None, 0
    while True:
        page = search_events(redis, EventQuery(limit=3, before=before))
        seen += ids(page)
        pages += 1
        if page.next_before is None:
            break
        assert page.next_before == seen[-1]
        before = page.next_before
    assert seen == expected
    assert pages == 3
    assert ids(search_events(redis, EventQuery(limit=8))) == expected
    assert search_events(redis, EventQuery(limit=8)).next_before is None
    # The same cursor in a filtered walk: the bulk route's set.
    first = search_events(redis, EventQuery(route="bulk-call", limit=4))
    rest = search_events(redis, EventQuery(route="bulk-call", limit=4, before=first.next_before))
    assert ids(first) + ids(rest) == expected[1:]
    # A run status set holds job ids: the same order and cursor.
    first = search_events(redis, EventQuery(status="queued", limit=5))
    rest = search_events(redis, EventQuery(status="queued", limit=5, before=first.next_before))
    assert ids(first) + ids(rest) == expected
    assert search_events(redis, EventQuery(before="evt_unknown")).events == []


async def test_duplicates_are_found_on_the_first_event(client: Client, redis: Redis) -> None:
    first = (await post(client, "website-form", form("sub-dup")))["event_id"]
    other = (await post(client, "website-form", form("sub-other")))["event_id"]
    for _ in range(2):
        repeat = await post(client, "website-form", form("sub-dup"))
        assert repeat["status"] == "duplicate"
        assert repeat["event_id"] == first
    assert find(redis, status="duplicate") == [first]
    [view] = search_events(redis, EventQuery(status="duplicate")).events
    assert view.duplicates == 2
    assert view.event.status.value == "accepted"  # the first event's record is unchanged
    assert records.read_event(redis, first) == view
    assert find(redis, source="website-form") == [other, first]  # no repeat is listed of its own


async def test_status_changes_move_runs_between_statuses(
    client: Client, redis: Redis, settings: Settings, sandbox: Sandbox
) -> None:
    delivered = (await post(client, "website-form", form("sub-ok")))["event_id"]
    refused = (await post(client, "misrouted", {"id": "m-1"}))["event_id"]
    assert find(redis, status="queued") == [refused, delivered]
    drain_queue(settings)  # the sandbox runs the known PHLO and refuses the unknown one (404)
    assert find(redis, status="succeeded") == [delivered]
    assert find(redis, status="dead_lettered") == [refused]
    assert find(redis, status="queued") == []
    assert redis.zcard(keys.index_status_key("queued")) == 0  # moved, not merely filtered out
    assert find(redis, status="running") == []
    assert find(redis, status="accepted") == [refused, delivered]
    [view] = search_events(redis, EventQuery(status="succeeded")).events
    assert view.runs[0].phlo_run_id is not None


async def test_an_ambiguous_run_is_found(client: Client, redis: Redis, settings: Settings) -> None:
    event_id = (await post(client, "website-form", form("sub-amb")))["event_id"]
    run = records.read_run(redis, event_id, f"{event_id}-callback")
    assert run is not None
    records.save_run(redis, event_id, run, settings.outcome_ttl_s, status=records.RunStatus.SUCCEEDED)
    assert find(redis, status="ambiguous") == []
    run = records.read_run(redis, event_id, f"{event_id}-callback")
    assert run is not None
    records.save_run(redis, event_id, run, settings.outcome_ttl_s, ambiguous=True)
    assert find(redis, status="ambiguous") == [event_id]
    assert find(redis, status="succeeded") == [event_id]


async def test_expired_events_are_skipped_and_old_entries_trimmed(
    client: Client, redis: Redis, settings: Settings
) -> None:
    gone = (await post(client, "website-form", form("sub-gone")))["event_id"]
    kept = (await post(client, "website-form", form("sub-kept")))["event_id"]
    redis.delete(keys.event_key(gone))  # what its record's expiry does
    assert find(redis) == [kept]
    assert find(redis, source="website-form") == [kept]
    assert find(redis, status="queued") == [kept]
    assert find(redis, source_event_id="sub-gone") == []
    # Each walk removed the entry it found without its record from the set it walked.
    assert redis.zscore(keys.index_all_key(), gone) is None
    assert redis.zscore(keys.index_sender_key("sub-gone"), gone) is None
    # Within the retention, the worker's pass removes nothing; past it, every entry.
    assert records.trim_index(redis, settings.outcome_ttl_s) == 0
    day_s = 86400
    removed = index.trim(redis, day_s, time.time() + 2 * day_s, records.INDEXED_STATUSES)
    assert removed >= 5
    assert find(redis) == []
    assert find(redis, status="queued") == []
    assert redis.keys(f"{keys.index_source_key('')}*") == []  # empty sets are gone
    assert redis.smembers(keys.index_sets_key()) == set()
    assert redis.ttl(keys.index_sender_key("sub-kept")) > settings.outcome_ttl_s - 60


async def test_documents_are_stored_compactly_and_older_ones_stay_readable(
    client: Client, redis: Redis
) -> None:
    long_form = form("sub-long", message="Please call me back about the quote. " * 20)
    event_id = (await post(client, "website-form", long_form))["event_id"]
    stored = redis.hget(keys.event_key(event_id), keys.DOCUMENT_FIELD)
    assert isinstance(stored, bytes)
    assert stored.startswith(b"z:")
    assert len(stored) < len(json.dumps(long_form)) / 3
    assert records.read_document(redis, event_id) == long_form
    short_id = (await post(client, "website-form", form("sub-short")))["event_id"]
    assert (
        redis.hget(keys.event_key(short_id), keys.DOCUMENT_FIELD)
        == json.dumps(form("sub-short"), separators=(",", ":")).encode()
    )
    # A record written before compaction holds its document as JSON text of any size.
    redis.hset(keys.event_key(short_id), keys.DOCUMENT_FIELD, json.dumps(long_form))
    assert records.read_document(redis, short_id) == long_form
