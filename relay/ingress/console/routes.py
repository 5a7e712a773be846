"""The console's Routes page: the config in force (secrets' variable names, never their values), pause
and resume per route, source and account, and reload of the config file."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from relay.errors import ConfigError
from relay.infra.supervisor import reload_siblings
from relay.ingress.console.render import page, render
from relay.ingress.reload import reload_config
from relay.ingress.state import CONFIG, REDIS, SETTINGS, in_thread
from relay.queue import pause
from relay.queue.jobs import relay_queue

log = logging.getLogger(__name__)
REASON_CHARS = 500
BY = "console"


@dataclass(frozen=True)
class Notice:
    """What the page says after an action: ``ok`` or ``error``, and the lines to show."""

    kind: str
    message: str
    details: tuple[str, ...] = ()


def _verification(scheme: Any) -> dict[str, Any]:
    """A verification as the page shows it: the scheme, where it reads, and the NAMES of its secrets."""
    shown: dict[str, Any] = {"scheme": scheme.scheme, "secrets": list(getattr(scheme, "secrets", []))}
    for name in ("header", "query", "algorithm", "timestamp_header"):
        value = getattr(scheme, name, None)
        if value:
            shown[name] = value
    if scheme.scheme == "ip-allow":
        shown["networks"] = [str(network) for network in scheme.networks]
    return shown


def _payload_value(value: Any) -> str:
    """A payload value as an operator reads it: a literal as JSON, a path with its default and need."""
    if isinstance(value, dict) and set(value) == {"value"}:
        return json.dumps(value["value"])
    if isinstance(value, dict) and "path" in value:
        text = f"path {value['path']}"
        if value.get("required"):
            text += ", required"
        if value.get("default") is not None:
            text += f", default {json.dumps(value['default'])}"
        return text
    return json.dumps(value)


def _locator(locator: Any) -> str:
    if locator is None:
        return ""
    return f"header {locator.header}" if locator.header else f"body {locator.path}"


async def _page(request: web.Request, notice: Notice | None = None, status: int = 200) -> web.StreamResponse:
    app = request.app
    live = app[CONFIG].current
    config, settings = live.config, app[SETTINGS]
    pauses = await in_thread(request, pause.list_paused, app[REDIS])
    paused = {(each.kind, each.name): each for each in pauses}
    sources = [
        {
            "name": name,
            "verify": [_verification(scheme) for scheme in source.verify],
            "event_id": _locator(source.event_id),
            "routes": [route.name for route in config.routes_for(name)],
            "pause": paused.get(("source", name)),
        }
        for name, source in sorted(config.sources.items())
    ]
    routes = [
        {
            "name": route.name,
            "source": route.source,
            "events": route.events,
            "when": route.when,
            "phlo_id": route.phlo_id,
            "account": route.account,
            "payload": {
                key: _payload_value(value)
                for key, value in route.model_dump(mode="json", warnings=False)["payload"].items()
            },
            "pause": paused.get(("route", route.name)),
        }
        for route in config.routes
    ]
    accounts = []
    for name in sorted(settings.account_names() | {route.account for route in config.routes}):
        account = settings.account(name)
        accounts.append(
            {
                "name": name,
                "configured": account is not None,
                "rate": f"{account.rate_limit} per {account.rate_window_s} s" if account else "",
                "routes": [route.name for route in config.routes if route.account == name],
                "pause": paused.get(("account", name)),
            }
        )
    known: set[tuple[str, object]] = {("source", s["name"]) for s in sources}
    known |= {("route", r["name"]) for r in routes} | {("account", a["name"]) for a in accounts}
    context = {
        "nav": "routes",
        "version": live.version,
        "config_path": str(settings.config_path),
        "sources": sources,
        "routes": routes,
        "accounts": accounts,
        "other_pauses": [each for each in pauses if (each.kind, each.name) not in known],
        "notice": notice,
    }
    return render(request, "routes.html", context, status=status)


@page("routes.html", nav="routes")
async def show_config(request: web.Request) -> web.StreamResponse:
    """``GET /console/routes``."""
    return await _page(request)


async def _scope(request: web.Request) -> tuple[str, str, str] | Notice:
    form = await request.post()
    kind, name, reason = form.get("kind"), form.get("name"), form.get("reason", "")
    if not isinstance(kind, str) or not isinstance(name, str) or not isinstance(reason, str):
        return Notice("error", "the form must give kind and name")
    problem = pause.check_scope(kind, name)
    if problem is not None:
        return Notice("error", problem)
    return kind, name, reason.strip()[:REASON_CHARS]


@page("routes.html", nav="routes")
async def pause_scope(request: web.Request) -> web.StreamResponse:
    """``POST /console/pause`` (kind, name, reason): hold its runs, unattempted, until resumed."""
    scope = await _scope(request)
    if isinstance(scope, Notice):
        return await _page(request, scope, status=400)
    kind, name, reason = scope
    new = await in_thread(request, pause.pause, request.app[REDIS], kind, name, reason, BY)
    log.info("console: paused %s %r", kind, name, extra={"pause_kind": kind, "pause_name": name})
    said = "paused" if new else "was paused already; its reason is updated"
    return await _page(request, Notice("ok", f"{kind} {name} {said}."))


@page("routes.html", nav="routes")
async def resume_scope(request: web.Request) -> web.StreamResponse:
    """``POST /console/resume`` (kind, name): lift the pause and queue every run it held."""
    scope = await _scope(request)
    if isinstance(scope, Notice):
        return await _page(request, scope, status=400)
    kind, name, _ = scope
    app = request.app
    queue = relay_queue(app[REDIS], app[SETTINGS])
    released = await in_thread(request, pause.resume, app[REDIS], queue, kind, name)
    if released is None:
        return await _page(request, Notice("error", f"{kind} {name} is not paused."), status=409)
    log.info("console: resumed %s %r, %d run(s) queued", kind, name, released)
    return await _page(request, Notice("ok", f"{kind} {name} resumed: {released} held run(s) queued."))


@page("routes.html", nav="routes")
async def reload(request: web.Request) -> web.StreamResponse:
    """``POST /console/reload``: check the config file in full and put it in force, or say why not."""
    old = request.app[CONFIG].current.version.hash
    try:
        live = await reload_config(request.app, "console")
    except ConfigError as exc:
        notice = Notice(
            "error",
            f"The config file has {len(exc.problems)} problem(s); version {old} stays in force.",
            tuple(str(problem) for problem in exc.problems),
        )
        return await _page(request, notice, status=422)
    reload_siblings()  # with --processes N, every other process reloads too
    message = f"Reloaded: version {live.version.hash} (was {old}), {len(live.config.routes)} route(s)."
    return await _page(request, Notice("ok", message))


def add_routes(router: web.UrlDispatcher) -> None:
    router.add_get("/console/routes", show_config)
    router.add_post("/console/pause", pause_scope)
    router.add_post("/console/resume", resume_scope)
    router.add_post("/console/reload", reload)
