"""``relay events list``: find events by time, source, route, status and the sender's id, newest first."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from pydantic import ValidationError
from redis import Redis

from relay.cli.arguments import positive_int, time_arg
from relay.cli.records import _when, _with_redis
from relay.outcome.search import MAX_LIMIT, STATUSES, EventQuery, search_events
from relay.queue.records import EventView
from relay.settings import Settings


def _runs(view: EventView) -> str:
    runs = [f"{run.route}:{run.status.value}{'(ambiguous)' if run.ambiguous else ''}" for run in view.runs]
    return " ".join(runs) or "-"


def _row(view: EventView) -> list[str]:
    event = view.event
    status = event.status.value + (f" +{view.duplicates} dup" if view.duplicates else "")
    return [
        _when(event.received_at),
        event.event_id,
        event.source,
        event.source_event_id or "-",
        event.event_type or "-",
        status,
        _runs(view),
    ]


def _table(rows: list[list[str]]) -> str:
    header = ["RECEIVED", "EVENT", "SOURCE", "SENDER ID", "TYPE", "STATUS", "RUNS"]
    widths = [max(len(row[column]) for row in [header, *rows]) for column in range(len(header))]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in [header, *rows]
    )


def _query(args: argparse.Namespace) -> EventQuery:
    fields: dict[str, Any] = {
        "source": args.source,
        "route": args.route,
        "status": args.status,
        "since": args.since,
        "until": args.until,
        "source_event_id": args.source_event_id,
        "limit": args.limit,
        "before": args.before,
    }
    return EventQuery.model_validate({name: value for name, value in fields.items() if value is not None})


@_with_redis
def events_list(redis: Redis, settings: Settings, args: argparse.Namespace) -> int:
    try:
        query = _query(args)
    except ValidationError as exc:
        problems = "; ".join(error["msg"] for error in exc.errors(include_url=False))
        print(f"error: {problems}", file=sys.stderr)
        return 2
    page = search_events(redis, query)
    if args.json:
        print(json.dumps(page.model_dump(mode="json"), indent=2))
        return 0
    if page.events:
        print(_table([_row(view) for view in page.events]))
    more = f"; next page: --before {page.next_before}" if page.next_before else ""
    print(f"{len(page.events)} event(s), newest first{more}")
    return 0


def add_events_list(events_commands: Any) -> None:
    """Add ``list`` to the ``relay events`` commands."""
    listing = events_commands.add_parser("list", help="find events, newest first")
    listing.add_argument("--source", help="only events of this source")
    listing.add_argument("--route", help="only events with a run of this route")
    listing.add_argument(
        "--status", choices=STATUSES, help="the event's status, or any of its runs' statuses"
    )
    when = "ISO-8601, epoch seconds, or a duration ago: 30m, 2h, 7d"
    listing.add_argument("--since", type=time_arg, help=f"received at or after ({when})")
    listing.add_argument("--until", type=time_arg, help=f"received at or before ({when})")
    listing.add_argument("--source-event-id", help="only events carrying this id of the sender's")
    listing.add_argument(
        "--limit", type=positive_int, default=50, help=f"at most this many (default 50, at most {MAX_LIMIT})"
    )
    listing.add_argument("--before", metavar="EVENT_ID", help="the next page: events listed after this one")
    listing.add_argument("--json", action="store_true", help="print JSON: {events, next_before}")
    listing.set_defaults(handler=events_list)
