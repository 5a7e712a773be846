"""The admin bearer token in front of an aiohttp handler: the admin API, ``/events/...`` and ``/metrics``.

The check itself is ``relay.infra.access``, shared with the worker's metrics port.
"""

from __future__ import annotations

import logging

from aiohttp import web
from aiohttp.typedefs import Handler

from relay.infra.access import AdminToken
from relay.ingress.answers import error_response

log = logging.getLogger(__name__)


def guarded(handler: Handler, token: AdminToken, what: str) -> Handler:
    """``handler`` answering only a request that carries ``Authorization: Bearer <RELAY_ADMIN_TOKEN>``;
    401 JSON with WWW-Authenticate otherwise. ``what`` names the endpoint in the 401's message."""

    async def guard(request: web.Request) -> web.StreamResponse:
        refusal = token.refusal(request.headers.get("Authorization", ""), what)
        if refusal is None:
            return await handler(request)
        if refusal.wrong_token:
            log.warning("%s: wrong bearer token from %s", what, request.remote)
        response = error_response(refusal.status, refusal.code, refusal.message)
        response.headers["WWW-Authenticate"] = refusal.challenge
        return response

    return guard
