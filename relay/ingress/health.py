"""What load balancers and Prometheus ask the ingress: ``/healthz``, ``/readyz`` and ``/metrics``.

The probes answer anyone. ``/metrics`` takes the admin token as a bearer, answers anyone with
``RELAY_METRICS_PUBLIC=true``, and is not served (404) with neither (``relay.infra.access``).

``/healthz`` answers while the process runs. ``/readyz`` answers 200 only while the ingress can take
webhooks: its config is loaded (the answer names its version) and Redis answers; after SIGTERM it answers
503 ``draining`` so that the load balancer stops sending before the ingress closes its port
(``relay.infra.serving.serve_ingress``).
"""

from __future__ import annotations

import asyncio

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from redis.exceptions import RedisError

from relay.infra.access import Access, AdminToken, metrics_access
from relay.ingress.answers import json_response
from relay.ingress.guard import guarded
from relay.ingress.state import CONFIG, METRICS, READINESS, REDIS, SETTINGS, STORE, in_thread
from relay.queue.gauges import scrape_registry

READY_PING_TIMEOUT_S = 1.0
SCRAPE = web.AppKey("scrape", CollectorRegistry)


async def healthz(request: web.Request) -> web.Response:
    """``GET /healthz``: the process is alive."""
    return json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    """``GET /readyz``: 200 when webhooks can be taken, else 503 with the reason."""
    app = request.app
    live = app[CONFIG].current
    checks = {
        "config": f"{len(live.config.sources)} source(s), {len(live.config.routes)} route(s)",
        "config_version": live.version.as_json(),
    }
    if app[READINESS].draining:
        return json_response({"status": "draining", **checks}, status=503)
    try:
        async with asyncio.timeout(READY_PING_TIMEOUT_S):
            await app[STORE].ping()
    except (RedisError, TimeoutError) as exc:
        reason = type(exc).__name__
        return json_response({"status": "unready", "redis": f"unreachable: {reason}", **checks}, status=503)
    return json_response({"status": "ready", "redis": "ok", **checks})


async def metrics(request: web.Request) -> web.Response:
    """``GET /metrics``: Prometheus text: this host's relay processes' counters and the queue's state."""
    body = await in_thread(request, generate_latest, request.app[SCRAPE])
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


def add_health_routes(app: web.Application) -> None:
    """Register the probes, and the metrics endpoint as RELAY_METRICS_PUBLIC and RELAY_ADMIN_TOKEN say."""
    settings = app[SETTINGS]
    app[SCRAPE] = scrape_registry(app[METRICS], lambda: app[REDIS], settings)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    access = metrics_access(settings)
    if access is Access.OPEN:
        app.router.add_get("/metrics", metrics)
    elif access is Access.BEARER:
        app.router.add_get("/metrics", guarded(metrics, AdminToken(settings.admin_token), "/metrics"))
