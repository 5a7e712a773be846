"""The console's Events pages (helper B2 owns this module: replace it whole)."""

from __future__ import annotations

from aiohttp import web

from relay.ingress.console.render import Context, page


@page("events.html", nav="events")
async def list_events(request: web.Request) -> Context:
    """``GET /console/events``."""
    return {}


def add_routes(router: web.UrlDispatcher) -> None:
    router.add_get("/console/events", list_events)
