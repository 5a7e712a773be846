"""The console's Dead letters page: a filtered list; replay and purge, one or in bulk, each confirmed."""

from __future__ import annotations

from aiohttp import web

from relay.ingress.console.render import Context, page


@page("deadletters.html", nav="dead-letters")
async def list_letters(request: web.Request) -> Context:
    """``GET /console/dead-letters``."""
    return {}


def add_routes(router: web.UrlDispatcher) -> None:
    router.add_get("/console/dead-letters", list_letters)
