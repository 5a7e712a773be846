"""Find events: by time, source, route, status and the sender's own event id, newest first, in pages.

The search walks the most selective set of the event index (``relay.queue.index``) newest first, within
[since, until] and below the cursor, in chunks, and verifies every filter against the records (pipelined):
what the index holds only ever narrows the walk, never decides what is shown.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

from pydantic import BaseModel, Field, field_validator
from redis import Redis

from relay import keys
from relay.queue import index
from relay.queue.jobs import job_id_for
from relay.queue.records import INDEXED_STATUSES, EventRecord, EventStatus, EventView, RunOutcome, RunStatus

# What ``--status`` takes: the statuses the index keeps, an event's, a run's, or ``ambiguous`` (a run whose
# request may have reached the runner more than once).
STATUSES = INDEXED_STATUSES
MAX_LIMIT = 500


class EventQuery(BaseModel):
    """Filters of an event search; every one given must hold. Times are epoch seconds (received)."""

    source: str | None = None
    route: str | None = None
    status: str | None = None
    since: float | None = None
    until: float | None = None
    source_event_id: str | None = None
    limit: int = Field(default=50, ge=1, le=MAX_LIMIT)
    before: str | None = None  # the cursor of the next page: ``EventPage.next_before`` of the previous one

    @field_validator("status")
    @classmethod
    def _known_status(cls, value: str | None) -> str | None:
        if value is not None and value not in STATUSES:
            raise ValueError(f"unknown status {value!r}: one of {', '.join(STATUSES)}")
        return value


class EventPage(BaseModel):
    """One page of a search, newest first; ``next_before`` is None on the last page."""

    events: list[EventView]
    next_before: str | None = None


def matches(view: EventView, query: EventQuery) -> bool:
    """Whether an event passes every filter of ``query`` but the cursor."""
    event = view.event
    if query.source is not None and event.source != query.source:
        return False
    if query.source_event_id is not None and event.source_event_id != query.source_event_id:
        return False
    if query.since is not None and event.received_at < query.since:
        return False
    if query.until is not None and event.received_at > query.until:
        return False
    if query.route is not None and query.route not in event.routes:
        return False
    if query.status == EventStatus.DUPLICATE:
        return view.duplicates > 0
    if query.status is None or query.status == event.status.value:
        return True
    if query.status == "ambiguous":
        return any(run.ambiguous for run in view.runs)
    return any(run.status.value == query.status for run in view.runs)


MAX_CHUNK = 1000  # index entries read per round trip as the walk goes on
RECORD_COST_RATIO = 8  # reading and checking an event's record against testing its id in a sorted set
RUN_STATUSES = frozenset((*(status.value for status in RunStatus), index.AMBIGUOUS))
RUN_STATUS_SETS = frozenset(keys.index_status_key(status) for status in RUN_STATUSES)


@dataclass(frozen=True)
class _Bounds:
    """Where a walk runs: scores (received_at) from ``lowest`` to ``highest``, and at ``highest`` only the
    events ordered before ``below`` (the cursor), if given."""

    lowest: float
    highest: float
    below: str | None = None


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _bounds(redis: Redis, query: EventQuery) -> _Bounds | None:
    """The walk's bounds; None when the cursor's event is no longer indexed (its page was the last)."""
    lowest = -math.inf if query.since is None else query.since
    highest = math.inf if query.until is None else query.until
    if query.before is None:
        return _Bounds(lowest, highest)
    score = redis.zscore(keys.index_all_key(), query.before)
    if score is None:
        return None
    if score > highest:
        return _Bounds(lowest, highest)
    return _Bounds(lowest, score, query.before)


def _candidates(query: EventQuery) -> list[str]:
    """The index sets that hold every event passing ``query`` (the sender's set alone when given)."""
    if query.source_event_id is not None:
        return [keys.index_sender_key(query.source_event_id)]
    sets = [keys.index_all_key()]
    if query.source is not None:
        sets.append(keys.index_source_key(query.source))
    if query.route is not None:
        sets.append(keys.index_route_key(query.route))
    if query.status is not None:
        sets.append(keys.index_status_key(query.status))
    return sets


def _chosen(redis: Redis, query: EventQuery, bounds: _Bounds) -> str:
    """The candidate set that is cheapest to walk: the fewest entries within the bounds, where an entry of
    an event set costs RECORD_COST_RATIO entries when a run status is asked for (the walk of a run status
    set filters the other sets in Redis; the walk of another must read every record to check the runs)."""
    sets = _candidates(query)
    if len(sets) == 1:
        return sets[0]
    with redis.pipeline(transaction=False) as pipe:
        for name in sets:
            pipe.zcount(name, bounds.lowest, bounds.highest)
        counts = pipe.execute()
    costs = [
        count * (RECORD_COST_RATIO if query.status in RUN_STATUSES and name not in RUN_STATUS_SETS else 1)
        for name, count in zip(sets, counts, strict=True)
    ]
    return min(zip(costs, range(len(sets)), sets, strict=True))[2]


def _walk(redis: Redis, name: str, bounds: _Bounds, first_chunk: int) -> Iterator[list[str]]:
    """The event ids of set ``name`` within ``bounds``, newest first, a chunk at a time (in a set of run
    statuses, an event with several runs there once)."""
    highest, skip, chunk, last_event = bounds.highest, 0, first_chunk, None
    while True:
        entries: list[tuple[bytes, float]] = redis.zrevrangebyscore(  # type: ignore[assignment]
            name, highest, bounds.lowest, start=skip, num=chunk, withscores=True
        )
        events = []
        for member, score in entries:
            event_id = index.event_of(_text(member))
            if event_id == last_event:
                continue
            last_event = event_id
            # Ties (one request's events share a time) order by event id, as the sorted set does.
            if bounds.below is not None and score == bounds.highest and event_id >= bounds.below:
                continue
            events.append(event_id)
        if events:
            yield events
        if len(entries) < chunk:
            return
        # The next chunk starts at the last score seen, after the entries already read at that score.
        last_score = entries[-1][1]
        at_last = sum(1 for _, each in entries if each == last_score)
        skip = skip + len(entries) if last_score == highest else at_last
        highest = last_score
        chunk = min(chunk * 2, MAX_CHUNK)


def _read(redis: Redis, event_ids: list[str]) -> list[tuple[str, EventRecord | None, int]]:
    """Each event's record (None when gone) and its count of repeats, in one round trip."""
    with redis.pipeline(transaction=False) as pipe:
        for event_id in event_ids:
            pipe.hmget(keys.event_key(event_id), [keys.EVENT_FIELD, keys.DUPLICATES_FIELD])
        replies = pipe.execute()
    return [
        (event_id, EventRecord.model_validate_json(raw) if raw else None, int(count or 0))
        for event_id, (raw, count) in zip(event_ids, replies, strict=True)
    ]


def _views(redis: Redis, found: list[tuple[EventRecord, int]]) -> list[EventView]:
    """The events with their runs (the documents left unread), in one round trip."""
    with redis.pipeline(transaction=False) as pipe:
        for record, _ in found:
            # An ignored event has no run; its placeholder field reads as nothing.
            fields = [keys.run_field(job_id_for(record.event_id, route)) for route in record.routes]
            pipe.hmget(keys.event_key(record.event_id), fields or [keys.run_field("")])
        replies = pipe.execute()
    views = []
    for (record, duplicates), raw_runs in zip(found, replies, strict=True):
        runs = [RunOutcome.model_validate_json(raw) for raw in raw_runs if raw]
        runs.sort(key=lambda run: run.route)
        views.append(EventView(event=record, runs=runs, duplicates=duplicates))
    return views


def _in_all(redis: Redis, sets: list[str], event_ids: list[str]) -> list[str]:
    """The events that are members of every one of ``sets`` (sets of event ids): a filter in Redis that
    spares reading the records of the events a second filter refuses."""
    if not sets:
        return event_ids
    with redis.pipeline(transaction=False) as pipe:
        for name in sets:
            pipe.zmscore(name, event_ids)
        replies = pipe.execute()
    return [event_id for event_id, *scores in zip(event_ids, *replies, strict=True) if None not in scores]


def _record_matches(record: EventRecord, duplicates: int, query: EventQuery) -> bool:
    """Whether the event's record passes the filters it alone decides (the runs' statuses wait)."""
    view = EventView(event=record, runs=[], duplicates=duplicates)
    if query.status in RUN_STATUSES:
        return matches(view, query.model_copy(update={"status": None}))
    return matches(view, query)


def search_events(redis: Redis, query: EventQuery) -> EventPage:
    """The events that pass ``query``, newest first, at most ``query.limit`` of them."""
    bounds = _bounds(redis, query)
    if bounds is None:
        return EventPage(events=[])
    name = _chosen(redis, query, bounds)
    others = [other for other in _candidates(query)[1:] if other != name and other not in RUN_STATUS_SETS]
    wanted = query.limit + 1  # one more tells whether there is a next page
    page: list[EventView] = []
    for walked in _walk(redis, name, bounds, wanted):
        event_ids = _in_all(redis, others, walked)
        gone, found = [], []
        for event_id, record, duplicates in _read(redis, event_ids) if event_ids else []:
            if record is None:
                gone.append(event_id)
            elif _record_matches(record, duplicates, query):
                found.append((record, duplicates))
        if name not in RUN_STATUS_SETS:  # (members of run status sets are job ids: trim takes those)
            index.forget(redis, name, gone)
        for view in _views(redis, found) if found else []:
            if matches(view, query):
                page.append(view)
        if len(page) >= wanted:
            break
    more = len(page) > query.limit
    page = page[: query.limit]
    return EventPage(events=page, next_before=page[-1].event.event_id if more else None)
