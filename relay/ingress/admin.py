"""The ingress's admin API: dead letters and pauses, behind ``Authorization: Bearer <RELAY_ADMIN_TOKEN>``.

Without ``RELAY_ADMIN_TOKEN`` the routes are not registered, so ``/admin/...`` answers 404 like any unknown
path. A replay maps events with the config in force: after fixing the config, reload it
(``POST /admin/config/reload``, which also passes SIGHUP to the other processes of ``--processes N``).
"""

from __future__ import annotations

import logging
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Handler
from pydantic import ValidationError

from relay.errors import ConfigError, DeadLetterError
from relay.infra.access import AdminToken
from relay.infra.supervisor import reload_siblings
from relay.ingress.answers import error_response, json_response
from relay.ingress.guard import guarded
from relay.ingress.reload import reload_config
from relay.ingress.state import CONFIG, REDIS, SETTINGS, in_thread
from relay.outcome.deadletters import (
    DeadLetterFilter,
    Target,
    list_dead_letters,
    parse_time,
    purge,
    show_dead_letter,
)
from relay.outcome.override import replay_many_suppressed
from relay.outcome.replay import replay_many
from relay.outcome.search import EventQuery, search_events
from relay.queue import pause
from relay.queue.jobs import relay_queue
from relay.settings import Settings

log = logging.getLogger(__name__)
BODY_HELP = (
    'the body must be one of {"job_ids": ["..."]}, {"filter": {"source": "...", ...}} or {"all": true}'
)


def _guarded(handler: Handler, expected: AdminToken) -> Handler:
    return guarded(handler, expected, "the admin API")


def _problems(exc: ValidationError) -> str:
    return "; ".join(
        f"{'.'.join(map(str, error['loc'])) or 'filter'}: {error['msg'].removeprefix('Value error, ')}"
        for error in exc.errors(include_url=False, include_input=False)
    )


def _filter(fields: dict[str, Any]) -> DeadLetterFilter:
    try:
        return DeadLetterFilter.model_validate(fields)
    except ValidationError as exc:
        raise web.HTTPBadRequest(text=f"invalid filter: {_problems(exc)}") from None


async def _target(request: web.Request) -> Target:
    """The dead letters a replay or purge request names; 400 for anything but the three shapes."""
    try:
        body = await request.json()
    except (ValueError, LookupError, RecursionError):  # not JSON, an unknown charset, nested too deeply
        raise web.HTTPBadRequest(text=f"not JSON: {BODY_HELP}") from None
    if not isinstance(body, dict) or len(body) != 1:
        raise web.HTTPBadRequest(text=BODY_HELP)
    [(key, value)] = body.items()
    if key == "all" and value is True:
        return DeadLetterFilter()
    if (
        key == "job_ids"
        and isinstance(value, list)
        and value
        and all(isinstance(v, str) and v for v in value)
    ):
        return [str(job_id) for job_id in value]
    if key == "filter" and isinstance(value, dict):
        selected = _filter(value)
        if selected.is_empty():
            raise web.HTTPBadRequest(text='an empty filter selects every dead letter: send {"all": true}')
        return selected
    raise web.HTTPBadRequest(text=BODY_HELP)


async def list_letters(request: web.Request) -> web.Response:
    """``GET /admin/dead-letters?source=&route=&phlo_id=&reason=&since=&until=&limit=``: newest first."""
    query = dict(request.query)
    raw_limit = query.pop("limit", None)
    selected = _filter(query)
    limit = None
    if raw_limit is not None:
        # isdigit() alone takes '²', and int() refuses more than 4300 digits: both were a 500.
        if not (raw_limit.isascii() and raw_limit.isdigit() and len(raw_limit) <= 9) or int(raw_limit) < 1:
            raise web.HTTPBadRequest(text="limit must be a positive integer")
        limit = int(raw_limit)
    app = request.app
    letters = await in_thread(request, list_dead_letters, app[REDIS], app[SETTINGS], selected, limit)
    return web.json_response(
        {"count": len(letters), "dead_letters": [letter.model_dump(mode="json") for letter in letters]}
    )


async def list_events(request: web.Request) -> web.Response:
    """``GET /admin/events?source=&route=&status=&since=&until=&source_event_id=&limit=&before=``: newest
    first; ``next_before`` is the ``before`` of the next page (null on the last)."""
    query = dict(request.query)
    unknown = sorted(set(request.query) - set(EventQuery.model_fields))
    if unknown:
        known = ", ".join(EventQuery.model_fields)
        return error_response(400, "invalid_filter", f"unknown filter {unknown[0]!r}: one of {known}")
    try:
        for name in ("since", "until"):
            if name in query:
                query[name] = parse_time(query[name])  # type: ignore[assignment]
        selected = EventQuery.model_validate(query)
    except ValueError as exc:  # parse_time's, and pydantic's ValidationError
        problems = _problems(exc) if isinstance(exc, ValidationError) else str(exc)
        return error_response(400, "invalid_filter", f"invalid filter: {problems}")
    page = await in_thread(request, search_events, request.app[REDIS], selected)
    body = page.model_dump(mode="json")
    return web.json_response({"count": len(page.events), **body})


async def show_letter(request: web.Request) -> web.Response:
    """``GET /admin/dead-letters/{job_id}``: the letter, its job's kwargs, its run with history, its event."""
    app, job_id = request.app, request.match_info["job_id"]
    try:
        detail = await in_thread(request, show_dead_letter, app[REDIS], app[SETTINGS], job_id)
    except DeadLetterError as exc:
        return error_response(404, "unknown_dead_letter", str(exc))
    return web.json_response(detail)


async def replay_letters(request: web.Request) -> web.Response:
    """``POST /admin/dead-letters/replay``: map again with the current config and queue; one result each."""
    target, app = await _target(request), request.app
    results = await in_thread(
        request, replay_many, app[REDIS], app[SETTINGS], app[CONFIG].current.config, target
    )
    replayed = sum(result.replayed for result in results)
    return web.json_response(
        {
            "replayed": replayed,
            "not_replayed": len(results) - replayed,
            "results": [result.model_dump(mode="json") for result in results],
        }
    )


async def purge_letters(request: web.Request) -> web.Response:
    """``POST /admin/dead-letters/purge``: delete them for good (run outcomes stay, noting the purge)."""
    target, app = await _target(request), request.app
    purged = await in_thread(request, purge, app[REDIS], app[SETTINGS], target)
    return web.json_response({"purged": purged})


async def reload(request: web.Request) -> web.Response:
    """``POST /admin/config/reload``: check the config file in full and put it in force; 422 lists why not."""
    try:
        live = await reload_config(request.app, "admin API")
    except ConfigError as exc:
        body = {
            "error": "invalid_config",
            "message": f"the config file has {len(exc.problems)} problem(s); the config in force stays",
            "config_version": request.app[CONFIG].current.version.as_json(),
            "problems": [str(problem) for problem in exc.problems],
        }
        return json_response(body, status=422)
    reload_siblings()  # with --processes N, every other process reloads too
    return json_response(
        {
            "reloaded": True,
            "config_version": live.version.as_json(),
            "sources": len(live.config.sources),
            "routes": len(live.config.routes),
        }
    )


async def _scope(request: web.Request) -> tuple[str, str, dict[str, Any]]:
    """The kind and name a pause or resume names (and the whole body); 400 when either is missing or wrong."""
    try:
        body = await request.json()
    except (ValueError, LookupError, RecursionError):
        body = None
    if not isinstance(body, dict) or not all(isinstance(body.get(key), str) for key in ("kind", "name")):
        raise web.HTTPBadRequest(text='the body must be {"kind": "route|account|source", "name": "...", ...}')
    problem = pause.check_scope(body["kind"], body["name"])
    if problem is not None:
        raise web.HTTPBadRequest(text=problem)
    return body["kind"], body["name"], body


async def list_pauses(request: web.Request) -> web.Response:
    """``GET /admin/paused``: every pause with who, when, why and how many runs it holds."""
    pauses = await in_thread(request, pause.list_paused, request.app[REDIS])
    return web.json_response({"paused": [each.model_dump() for each in pauses]})


async def pause_scope(request: web.Request) -> web.Response:
    """``POST /admin/pause`` {kind, name, reason, by}: hold its runs, unattempted, until resumed."""
    kind, name, body = await _scope(request)
    reason, by = body.get("reason", ""), body.get("by", "admin API")
    if not isinstance(reason, str) or not isinstance(by, str):
        raise web.HTTPBadRequest(text="reason and by must be strings")
    new = await in_thread(request, pause.pause, request.app[REDIS], kind, name, reason, by)
    return web.json_response({"kind": kind, "name": name, "paused": True, "was_paused": not new})


async def resume_scope(request: web.Request) -> web.Response:
    """``POST /admin/resume`` {kind, name}: lift the pause and queue every run it held."""
    kind, name, _ = await _scope(request)
    app = request.app
    queue = relay_queue(app[REDIS], app[SETTINGS])
    released = await in_thread(request, pause.resume, app[REDIS], queue, kind, name)
    if released is None:
        return error_response(404, "not_paused", f"{kind} {name!r} is not paused")
    return web.json_response({"kind": kind, "name": name, "resumed": True, "released": released})


async def replay_runs(request: web.Request) -> web.Response:
    """``POST /admin/runs/replay`` {job_ids, override_cap: true}: queue suppressed runs past their cap."""
    try:
        body = await request.json()
    except (ValueError, LookupError, RecursionError):
        body = None
    job_ids = body.get("job_ids") if isinstance(body, dict) else None
    if not (isinstance(job_ids, list) and job_ids and all(isinstance(v, str) and v for v in job_ids)):
        raise web.HTTPBadRequest(text='the body must be {"job_ids": ["..."], "override_cap": true}')
    if body.get("override_cap") is not True:
        raise web.HTTPBadRequest(text='a suppressed run is sent only past its cap: add "override_cap": true')
    app = request.app
    config = app[CONFIG].current.config
    results = await in_thread(request, replay_many_suppressed, app[REDIS], app[SETTINGS], config, job_ids)
    replayed = sum(result.replayed for result in results)
    return web.json_response(
        {
            "replayed": replayed,
            "not_replayed": len(results) - replayed,
            "results": [result.model_dump(mode="json") for result in results],
        }
    )


def add_admin_routes(app: web.Application, settings: Settings) -> None:
    """Register the admin API on the ingress app when RELAY_ADMIN_TOKEN is set (and not empty)."""
    expected = AdminToken(settings.admin_token)
    if not expected.configured:
        return
    app.router.add_get("/admin/dead-letters", _guarded(list_letters, expected))
    app.router.add_post("/admin/dead-letters/replay", _guarded(replay_letters, expected))
    app.router.add_post("/admin/dead-letters/purge", _guarded(purge_letters, expected))
    app.router.add_get("/admin/dead-letters/{job_id}", _guarded(show_letter, expected))
    app.router.add_post("/admin/config/reload", _guarded(reload, expected))
    app.router.add_get("/admin/paused", _guarded(list_pauses, expected))
    app.router.add_get("/admin/events", _guarded(list_events, expected))
    app.router.add_post("/admin/pause", _guarded(pause_scope, expected))
    app.router.add_post("/admin/resume", _guarded(resume_scope, expected))
    app.router.add_post("/admin/runs/replay", _guarded(replay_runs, expected))
