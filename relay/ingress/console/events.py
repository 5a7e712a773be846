"""The console's Events pages: the list with its filters, paged newest first, and each event's story.

Both pages mask phone numbers and e-mail addresses in every sender-controlled value unless the operator
follows the "Reveal" link (``?reveal=1``); every value is escaped by the templates' autoescaping.
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import quote

from aiohttp import web
from pydantic import ValidationError

from relay.ingress.console.render import Context, page, render
from relay.ingress.console.shown import revealed, shown, utc, with_reveal
from relay.ingress.state import CONFIG, REDIS, SETTINGS, in_thread
from relay.outcome.deadletters import parse_time
from relay.outcome.search import MAX_LIMIT, STATUSES, EventPage, EventQuery, search_events
from relay.outcome.story import EventStory, RunStory, StepKind, read_story
from relay.queue.records import EventView

LIST_PATH = "/console/events"
FILTERS = ("source", "route", "status", "since", "until", "source_event_id", "limit")
TIME_FILTERS = ("since", "until")
STEP_LABELS = {
    StepKind.QUEUED: "queued",
    StepKind.ATTEMPT_FAILED: "attempt failed, retry scheduled",
    StepKind.AMBIGUOUS: "no answer (may have run): retry",
    StepKind.WAITING: "waiting",
    StepKind.PAUSED: "held by a pause",
    StepKind.REPLAYED: "replayed: queued again",
    StepKind.SUCCEEDED: "succeeded",
    StepKind.DEAD_LETTERED: "dead-lettered",
    StepKind.PURGED: "purged",
    StepKind.RUNNING: "running",
    StepKind.HELD: "held: outside its quiet hours",
    StepKind.EXPIRED: "expired unsent: its window opened after its maximum age",
    StepKind.SUPPRESSED: "suppressed: over a frequency cap",
}


def event_path(event_id: str) -> str:
    return f"{LIST_PATH}/{quote(event_id, safe='')}"


def _problems(exc: ValidationError) -> str:
    return "; ".join(
        f"{'.'.join(map(str, error['loc'])) or 'filter'}: {error['msg'].removeprefix('Value error, ')}"
        for error in exc.errors(include_url=False, include_input=False)
    )


def parse_filters(params: dict[str, str]) -> EventQuery:
    """The search a list page's query asks for; ValueError saying what is wrong."""
    fields: dict[str, Any] = {name: params[name].strip() for name in FILTERS if params.get(name, "").strip()}
    for name in TIME_FILTERS:
        if name in fields:
            try:
                fields[name] = parse_time(fields[name])
            except ValueError as exc:
                raise ValueError(f"{name}: {exc}") from None
    if params.get("before"):
        fields["before"] = params["before"]
    try:
        return EventQuery.model_validate(fields)
    except ValidationError as exc:
        raise ValueError(_problems(exc)) from None


def _row(view: EventView, reveal: bool) -> dict[str, Any]:
    event = view.event
    return {
        "event_id": event.event_id,
        "link": with_reveal(event_path(event.event_id), {}, reveal),
        "received": utc(event.received_at),
        "source": event.source,
        "source_event_id": shown(event.source_event_id, reveal),
        "event_type": shown(event.event_type, reveal),
        "status": event.status.value,
        "runs": [
            {"route": run.route, "status": run.status.value, "ambiguous": run.ambiguous} for run in view.runs
        ],
    }


@page("events.html", nav="events")
async def list_events(request: web.Request) -> Context | web.StreamResponse:
    """``GET /console/events?source=&route=&status=&since=&until=&source_event_id=&limit=&before=``."""
    params = dict(request.query)
    reveal = revealed(params)
    config = request.app[CONFIG].current.config
    context: dict[str, Any] = {
        "nav": "events",
        "filters": {name: params.get(name, "") for name in FILTERS},
        "statuses": STATUSES,
        "max_limit": MAX_LIMIT,
        "sources": sorted(config.sources),
        "routes": sorted(route.name for route in config.routes),
        "reveal": reveal,
        "reveal_link": with_reveal(LIST_PATH, params, True),
        "mask_link": with_reveal(LIST_PATH, params, False),
        "rows": [],
        "next_link": None,
        "first_link": None,
        "problem": None,
    }
    try:
        query = parse_filters(params)
    except ValueError as exc:
        return render(request, "events.html", {**context, "problem": str(exc)}, status=400)
    try:
        found: EventPage = await in_thread(request, search_events, request.app[REDIS], query)
    except ValueError as exc:  # a cursor (``before``) the search cannot read
        return render(request, "events.html", {**context, "problem": str(exc)}, status=400)
    context["rows"] = [_row(view, reveal) for view in found.events]
    filters = {name: params.get(name, "") for name in FILTERS}
    if found.next_before is not None:
        context["next_link"] = with_reveal(LIST_PATH, {**filters, "before": found.next_before}, reveal)
    if query.before is not None:
        context["first_link"] = with_reveal(LIST_PATH, filters, reveal)
    return context


def _run_view(story: RunStory, reveal: bool) -> dict[str, Any]:
    run = story.run
    return {
        "run": shown(run.model_dump(mode="json", exclude={"history"}), reveal),
        "timeline": [shown(step.model_dump(mode="json"), reveal) for step in story.timeline],
        "payload_state": story.payload_state.value,
        "payload": json.dumps(shown(story.payload, reveal), indent=2, ensure_ascii=False, sort_keys=True),
        "dead_letter": story.dead_letter,
    }


@page("event.html", nav="events")
async def show_event_page(request: web.Request) -> Context | web.StreamResponse:
    """``GET /console/events/{event_id}``: the record, and per run its timeline and payload."""
    event_id = request.match_info["event_id"]
    params = dict(request.query)
    reveal = revealed(params)
    story: EventStory | None = await in_thread(
        request, read_story, request.app[REDIS], request.app[SETTINGS], event_id
    )
    if story is None:
        context = {"nav": "events", "event_id": event_id, "list_link": LIST_PATH}
        return render(request, "event_missing.html", context, status=404)
    event = story.event
    runs = [_run_view(run, reveal) for run in story.runs]
    for view in runs:
        view["dead_letter_link"] = with_reveal(
            "/console/dead-letters", {"source": event.source, "route": view["run"]["route"]}, False
        )
        # The confirmation page of replaying this one letter (a GET that changes nothing).
        view["replay_link"] = with_reveal(
            "/console/dead-letters/confirm", {"action": "replay", "job_id": view["run"]["job_id"]}, False
        )
    path = event_path(event.event_id)
    sender_id = event.source_event_id or ""
    # A link carrying the sender's id would show it unmasked in the address: only when revealed or harmless.
    sender_link = None
    if sender_id and (reveal or shown(sender_id, False) == sender_id):
        sender_link = with_reveal(LIST_PATH, {"source": event.source, "source_event_id": sender_id}, reveal)
    return {
        "event": shown(event.model_dump(mode="json"), reveal),
        "received": utc(event.received_at),
        "config_in_force": request.app[CONFIG].current.version.hash,
        "runs": runs,
        "utc": utc,
        "labels": {kind.value: label for kind, label in STEP_LABELS.items()},
        "reveal": reveal,
        "reveal_link": with_reveal(path, {}, True),
        "mask_link": with_reveal(path, {}, False),
        "list_link": LIST_PATH,
        "sender_link": sender_link,
    }


def add_routes(router: web.UrlDispatcher) -> None:
    router.add_get(LIST_PATH, list_events)
    # Any segment, braces too (aiohttp's default pattern refuses them): an unknown id gets the console's 404.
    router.add_get(LIST_PATH + "/{event_id:[^/]+}", show_event_page)
