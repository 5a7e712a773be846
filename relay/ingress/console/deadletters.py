"""The console's Dead letters page: a filtered list; replay and purge, one or in bulk, each confirmed.

Every action goes list -> confirmation page (what exactly will be replayed or purged) -> POST with the
CSRF token -> results. The confirmation of one letter is a link (a GET that changes nothing); a selection
of checkboxes posts to the confirmation. No JavaScript.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any
from urllib.parse import urlencode

from aiohttp import web
from multidict import MultiMapping
from pydantic import ValidationError
from redis import Redis

from relay.errors import DeadLetterError
from relay.ingress.console.render import Context, page, render
from relay.ingress.state import CONFIG, REDIS, SETTINGS, in_thread
from relay.outcome.deadletters import (
    DeadLetter,
    DeadLetterFilter,
    Target,
    dead_job,
    letter_of,
    list_dead_letters,
    purge,
)
from relay.outcome.replay import replay_many
from relay.settings import Settings

FILTER_FIELDS = ("source", "route", "phlo_id", "reason", "since", "until")
ACTIONS = ("replay", "purge")
DEFAULT_LIMIT = 200
MAX_IDS = 1000


def _filter_fields(values: MultiMapping[Any]) -> dict[str, str]:
    fields = {}
    for name in FILTER_FIELDS:
        value = values.get(name)
        if isinstance(value, str) and value.strip():
            fields[name] = value.strip()
    return fields


def _filter(fields: Mapping[str, str]) -> DeadLetterFilter:
    try:
        return DeadLetterFilter.model_validate(fields)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(map(str, error['loc']))}: {error['msg'].removeprefix('Value error, ')}"
            for error in exc.errors(include_url=False, include_input=False)
        )
        raise ValueError(f"invalid filter: {problems}") from None


def _limit(raw: str | None) -> int:
    if raw is None or not raw.strip():
        return DEFAULT_LIMIT
    if not (raw.isascii() and raw.isdigit() and len(raw) <= 6) or int(raw) < 1:
        raise ValueError("limit must be a positive integer")
    return int(raw)


def _selection(
    values: MultiMapping[Any], action: Any = None
) -> tuple[str, Target, dict[str, str], list[str]]:
    """The action (``action``, else the form's) and what it takes: the ``job_id`` values, or
    (``scope=filter``) the filter's letters."""
    action = values.get("action") if action is None else action
    if action not in ACTIONS:
        raise ValueError("choose replay or purge")
    if values.get("scope") == "filter":
        fields = _filter_fields(values)
        return str(action), _filter(fields), fields, []
    job_ids = [value for value in values.getall("job_id", []) if isinstance(value, str) and value]
    if not job_ids:
        raise ValueError("no dead letter was selected: tick at least one, or act on the whole filter")
    if len(job_ids) > MAX_IDS:
        raise ValueError(f"at most {MAX_IDS} dead letters at once: use the filter")
    return str(action), job_ids, {}, job_ids


def _letters_named(redis: Redis, settings: Settings, job_ids: list[str]) -> list[DeadLetter]:
    """The dead letters of these job ids that are still dead letters."""
    letters = []
    for job_id in job_ids:
        try:
            letters.append(letter_of(dead_job(redis, settings, job_id)))
        except DeadLetterError:
            continue
    return letters


@page("deadletters.html", nav="dead-letters")
async def list_letters(request: web.Request) -> Context | web.StreamResponse:
    """``GET /console/dead-letters?source=&route=&phlo_id=&reason=&since=&until=&limit=``: newest first."""
    fields = _filter_fields(request.query)
    try:
        selected, limit = _filter(fields), _limit(request.query.get("limit"))
    except ValueError as exc:
        context = {"letters": [], "fields": fields, "limit": DEFAULT_LIMIT, "error": str(exc)}
        return render(request, "deadletters.html", {"nav": "dead-letters", **context}, status=400)
    app = request.app
    letters: list[DeadLetter] = await in_thread(
        request, list_dead_letters, app[REDIS], app[SETTINGS], selected, limit + 1
    )
    return {
        "letters": letters[:limit],
        "more": len(letters) > limit,
        "fields": fields,
        "filter_query": urlencode(fields),
        "limit": limit,
        "error": None,
    }


@page("deadletters_confirm.html", nav="dead-letters")
async def confirm(request: web.Request) -> Context | web.StreamResponse:
    """``GET|POST /console/dead-letters/confirm``: what an action would take, and a button to do it."""
    values = await request.post() if request.method == "POST" else request.query
    try:
        action, target, fields, job_ids = _selection(values)
    except ValueError as exc:
        return render(request, "deadletters_done.html", {"nav": "dead-letters", "error": str(exc)}, 400)
    app = request.app
    if isinstance(target, DeadLetterFilter):
        letters = await in_thread(request, list_dead_letters, app[REDIS], app[SETTINGS], target)
    else:
        letters = await in_thread(request, _letters_named, app[REDIS], app[SETTINGS], job_ids)
    found = {letter.job_id for letter in letters}
    missing = [job_id for job_id in job_ids if job_id not in found]
    return {"action": action, "letters": letters, "missing": missing, "fields": fields, "max_ids": MAX_IDS}


async def _act(request: web.Request, action: str) -> Context | web.StreamResponse:
    values = await request.post()
    try:
        _, target, fields, _ = _selection(values, action)
    except ValueError as exc:
        return render(request, "deadletters_done.html", {"nav": "dead-letters", "error": str(exc)}, 400)
    app = request.app
    context: dict[str, Any] = {"action": action, "fields": fields, "error": None}
    if action == "replay":
        results = await in_thread(
            request, replay_many, app[REDIS], app[SETTINGS], app[CONFIG].current.config, target
        )
        context["results"] = results
        context["done"] = sum(result.replayed for result in results)
    else:
        context["done"] = await in_thread(request, purge, app[REDIS], app[SETTINGS], target)
    return context


@page("deadletters_done.html", nav="dead-letters")
async def replay_letters(request: web.Request) -> Context | web.StreamResponse:
    """``POST /console/dead-letters/replay``: map again with the config in force and queue; per letter."""
    return await _act(request, "replay")


@page("deadletters_done.html", nav="dead-letters")
async def purge_letters(request: web.Request) -> Context | web.StreamResponse:
    """``POST /console/dead-letters/purge``: delete for good (the runs' outcomes note the purge)."""
    return await _act(request, "purge")


def add_routes(router: web.UrlDispatcher) -> None:
    router.add_get("/console/dead-letters", list_letters)
    router.add_get("/console/dead-letters/confirm", confirm)
    router.add_post("/console/dead-letters/confirm", confirm)
    router.add_post("/console/dead-letters/replay", replay_letters)
    router.add_post("/console/dead-letters/purge", purge_letters)
