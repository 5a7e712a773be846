"""The ingress's one middleware: what every request gets whatever its handler (request id, JSON errors,
webhook metrics, connections closed while draining).

One middleware, not one per concern: aiohttp's chain costs each webhook a few microseconds a link.
"""

from __future__ import annotations

import logging
import time

from aiohttp import web
from aiohttp.typedefs import Handler
from redis.exceptions import RedisError

from relay.errors import IngressRefused, RedisUnavailable
from relay.infra.logs import REQUEST_ID_HEADER, bind, request_id_from
from relay.infra.metrics import UNKNOWN_SOURCE
from relay.ingress.answers import REFUSAL, described, error_response
from relay.ingress.state import CONFIG, METRICS, READINESS, STATS

# The logger's name is a field of every log line (README: Logs) that operators' queries select on; it is
# the name the ingress's lines had before this module was split out of ``relay.ingress.app``.
log = logging.getLogger("relay.ingress.app")


@web.middleware
async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every request: an id bound to its log lines and echoed back, errors answered as JSON, webhooks
    counted and timed, and while draining, connections closed after their answer."""
    started = time.perf_counter()
    request_id = request_id_from(request.headers.get(REQUEST_ID_HEADER))
    readiness = request.app[READINESS]
    readiness.in_flight += 1
    try:
        with bind(request_id=request_id, source=request.match_info.get("source")):
            try:
                response = await handler(request)
            except web.HTTPException as exc:
                if exc.status < 400:  # a redirect and the like
                    exc.headers[REQUEST_ID_HEADER] = request_id
                    raise
                response = _error_answer(request, exc)
            except Exception as exc:
                response = _error_answer(request, exc)
    finally:
        readiness.in_flight -= 1
    if readiness.draining:
        response.force_close()  # the load balancer's next request opens a connection to a ready process
    if not response.prepared:
        response.headers[REQUEST_ID_HEADER] = request_id
    source = request.match_info.get("source")
    if source is not None and request.method == "POST" and request.path.startswith("/hooks/"):
        metrics = request.app[METRICS]
        source = source if source in request.app[CONFIG].current.config.sources else UNKNOWN_SOURCE
        refusal = response.get(REFUSAL)
        if refusal is not None:
            metrics.events_received.labels(source, "refused", refusal).inc()
            request.app[STATS].count(source, f"refused:{refusal}")
        metrics.ingress_latency.labels(source).observe(time.perf_counter() - started)
    return response


def _error_answer(request: web.Request, exc: Exception) -> web.Response:
    """The JSON answer to a refusal, an unreachable Redis, aiohttp's own HTTP errors, or a bug."""
    if isinstance(exc, IngressRefused):
        # The reason is safe to log: refusals never carry a secret or an expected signature.
        log.warning(
            "refused %s %s: %s %s: %s",
            request.method,
            request.raw_path.partition("?")[0],  # as sent: no decoded line break, no query (tokens)
            exc.status,
            exc.code,
            exc.message,
            extra={"outcome": "refused", "status": exc.status, "error": exc.code},
        )
        return described(error_response(exc.status, exc.code, exc.message))
    if isinstance(exc, RedisUnavailable | RedisError):
        log.error("Redis unavailable: %s", exc, extra={"outcome": "unavailable", "status": 503})
        message = "the relay cannot store events right now; retry later"
        return described(error_response(503, "queue_unavailable", message))
    if isinstance(exc, web.HTTPException):
        code = exc.reason.lower().replace(" ", "_")
        return error_response(exc.status, code, exc.text or exc.reason)
    log.exception(
        "unexpected error handling %s %s",
        request.method,
        request.raw_path.partition("?")[0],
        extra={"outcome": "error", "status": 500},
    )
    message = "the relay could not handle this request; nothing was stored"
    return described(error_response(500, "internal_error", message))
