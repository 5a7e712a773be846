"""The console's Routes page: the config in force; pause and resume; reload."""

from __future__ import annotations

from aiohttp import web

from relay.ingress.console.render import Context, page


@page("routes.html", nav="routes")
async def show_config(request: web.Request) -> Context:
    """``GET /console/routes``."""
    return {}


def add_routes(router: web.UrlDispatcher) -> None:
    router.add_get("/console/routes", show_config)
