"""Find events: by time, source, route, status and the sender's own event id, newest first, in pages.

INTERFACE STUB: this first version scans every event hash (O(events)); the indexed version replaces the
body of ``search_events`` and keeps its signature and models.
"""

from __future__ import annotations

from pydantic import BaseModel, Field, field_validator
from redis import Redis

from relay import keys
from relay.queue import records
from relay.queue.records import EventStatus, EventView, RunStatus

# What ``--status`` takes: an event's status, a run's status, or ``ambiguous`` (a run whose request may
# have reached the runner more than once).
STATUSES = (
    *(status.value for status in EventStatus),
    *(status.value for status in RunStatus),
    "ambiguous",
)
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
    if query.status is None or query.status == event.status.value:
        return True
    if query.status == "ambiguous":
        return any(run.ambiguous for run in view.runs)
    return any(run.status.value == query.status for run in view.runs)


def search_events(redis: Redis, query: EventQuery) -> EventPage:
    """The events that pass ``query``, newest first, at most ``query.limit`` of them."""
    views = []
    for key in redis.scan_iter(match=keys.event_key("*"), count=1000):
        event_id = (key.decode() if isinstance(key, bytes) else key).removeprefix(keys.event_key(""))
        view = records.read_event(redis, event_id)
        if view is not None and matches(view, query):
            views.append(view)
    views.sort(key=lambda view: (view.event.received_at, view.event.event_id), reverse=True)
    if query.before is not None:
        ids = [view.event.event_id for view in views]
        views = views[ids.index(query.before) + 1 :] if query.before in ids else []
    page = views[: query.limit]
    more = len(views) > query.limit
    return EventPage(events=page, next_before=page[-1].event.event_id if more and page else None)
