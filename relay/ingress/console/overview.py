"""The console's Overview: the queue, the accounts' breakers and rate limits, sources, routes, a chart."""

from __future__ import annotations

from aiohttp import web

from relay.ingress.console.render import Context, page


@page("overview.html", nav="overview")
async def show_overview(request: web.Request) -> Context:
    """``GET /console/``."""
    return {}


def add_routes(router: web.UrlDispatcher) -> None:
    router.add_get("/console/", show_overview)
    router.add_get("/console", show_overview)
