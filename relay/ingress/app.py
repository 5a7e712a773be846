"""The ingress app: its routes, and the cleanup context that owns its connections.

Only assembly: the webhook handler is in ``hooks``, the middleware in ``middleware``, the admin API in
``admin``, the probes in ``health``, and what they share of the app in ``state``. Events are stored by an
asyncio client in batches (``relay.queue.store.EventStore``); the rarer reads of the events and admin APIs
use redis-py's synchronous client (RQ's API is synchronous) on a bounded thread pool owned by the app, so
the event loop never blocks on Redis.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping
from concurrent.futures import ThreadPoolExecutor

from aiohttp import web
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from relay.infra.access import AdminToken
from relay.infra.metrics import RelayMetrics
from relay.infra.redis_client import connect, connect_async
from relay.ingress.admin import add_admin_routes
from relay.ingress.console import add_console_routes
from relay.ingress.guard import guarded
from relay.ingress.health import add_health_routes
from relay.ingress.hooks import receive_hook, show_event
from relay.ingress.middleware import middleware
from relay.ingress.reload import live_config
from relay.ingress.state import (
    CONFIG,
    EXECUTOR,
    METRICS,
    READINESS,
    REDIS,
    SETTINGS,
    STATS,
    STORE,
    ConfigSlot,
    Readiness,
)
from relay.mapping.config import RelayConfig
from relay.queue.stats import EventCounter
from relay.queue.store import EventStore
from relay.settings import Settings, secret_environment

REDIS_THREADS = 8


def create_app(
    settings: Settings, config: RelayConfig, environ: Mapping[str, str] | None = None
) -> web.Application:
    """The ingress app; its cleanup context owns the Redis pool and the thread pool.

    Sources' secrets are read from ``environ`` (default: the environment and ``.env``); a missing one
    raises ConfigError here, before the app serves anything.
    """
    # aiohttp's own limit is a safety net; read_body gives the JSON 413 first.
    app = web.Application(middlewares=[middleware], client_max_size=settings.max_body_bytes + 1)
    app[SETTINGS] = settings
    environ = secret_environment() if environ is None else environ
    live = live_config(settings, config, environ)
    app[CONFIG] = ConfigSlot(live, asyncio.Lock())
    app[METRICS] = RelayMetrics()
    app[METRICS].config_loaded(live.version.hash, live.version.loaded_at_s)
    app[READINESS] = Readiness()

    async def connections(app: web.Application) -> AsyncIterator[None]:
        # A blocking pool makes a burst of reads wait for a free connection instead of failing them.
        app[REDIS] = connect(
            settings,
            blocking_pool=True,
            max_connections=2 * REDIS_THREADS,
            timeout=5,
            socket_connect_timeout=2,
            socket_timeout=5,
        )
        app[EXECUTOR] = ThreadPoolExecutor(REDIS_THREADS, thread_name_prefix="relay-redis")
        # One batch at a time goes to Redis; the pool is for the odd reconnect. One retry, at once, takes a
        # pooled connection that Redis closed (a restart) out of the way without holding the sender back.
        async_redis = connect_async(
            settings,
            max_connections=4,
            socket_connect_timeout=2,
            socket_timeout=5,
            retry=Retry(NoBackoff(), retries=1),
        )
        app[STORE] = EventStore(async_redis, app[REDIS], settings)
        app[STATS] = EventCounter(async_redis)
        yield
        await app[STORE].close()
        await app[STATS].close()
        await async_redis.aclose()
        app[EXECUTOR].shutdown(wait=True)
        app[REDIS].close()

    app.cleanup_ctx.append(connections)
    app.router.add_post(r"/hooks/{source}", receive_hook)
    # What became of an event shows its source, routes and outcomes: behind the admin token, like the
    # admin API, and not served at all without one.
    admin_token = AdminToken(settings.admin_token)
    if admin_token.configured:
        app.router.add_get(r"/events/{event_id}", guarded(show_event, admin_token, "/events/..."))
    add_admin_routes(app, settings)
    add_console_routes(app, settings)
    add_health_routes(app)
    return app
