"""The ingress: an aiohttp app that takes webhooks, maps them and answers once their runs are in Redis.

A request goes: verify the sender on the raw bytes (``verify``), parse (``parse``), split into events
(``events``), map each (``mapping``), store them with their duplicate check in one transaction (``enqueue``).

Events are stored by an asyncio client in batches (``enqueue.EventStore``); the rarer reads of the events
and admin APIs use redis-py's synchronous client (RQ's API is synchronous) on a bounded thread pool owned
by the app, so the event loop never blocks on Redis.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import logging
import time
from collections.abc import AsyncIterator, Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

import orjson
from aiohttp import web
from aiohttp.typedefs import Handler
from redis import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from relay.errors import BodyTooLarge, IngressRefused, RedisUnavailable, RequestTimeout, UnknownSource
from relay.infra.logs import DESCRIBED, REQUEST_ID_HEADER, bind, register_secrets, request_id_from
from relay.infra.metrics import UNKNOWN_SOURCE, RelayMetrics
from relay.infra.redis_client import connect, connect_async
from relay.ingress.origin import client_ip, public_url
from relay.ingress.verify import SourceVerifier, build_verifiers, source_secrets
from relay.mapping.config import RelayConfig, Source
from relay.mapping.parse import parse_body
from relay.mapping.routes import map_event
from relay.mapping.schemes import HookRequest
from relay.mapping.split import split_events
from relay.queue import records as outcome
from relay.queue.records import EventStatus
from relay.queue.store import EventStore, StoredEvent
from relay.settings import Settings, secret_environment

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass
class Readiness:
    """Whether the ingress is draining after SIGTERM (``/readyz`` then answers 503), and its requests."""

    draining: bool = False
    in_flight: int = 0

    async def until_idle(self) -> None:
        """Return once no request is being handled (the caller bounds the wait)."""
        while self.in_flight:  # noqa: ASYNC110 - polled: an Event per request would cost every request
            await asyncio.sleep(0.05)


SETTINGS = web.AppKey("settings", Settings)
CONFIG = web.AppKey("config", RelayConfig)
REDIS = web.AppKey("redis", Redis)
EXECUTOR = web.AppKey("executor", ThreadPoolExecutor)
VERIFIERS = web.AppKey("verifiers", dict[str, SourceVerifier])
STORE = web.AppKey("store", EventStore)
METRICS = web.AppKey("metrics", RelayMetrics)
READINESS = web.AppKey("readiness", Readiness)
REFUSAL = web.ResponseKey("relay_refusal", str)  # an error answer's code, kept for the metrics
REDIS_THREADS = 8
READ_CHUNK_BYTES = 64 * 1024
SALESFORCE_ACK = (
    '<soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/"><soapenv:Body>'
    '<notificationsResponse xmlns="http://soap.sforce.com/2005/09/outbound"><Ack>true</Ack>'
    "</notificationsResponse></soapenv:Body></soapenv:Envelope>"
)
EMPTY_TWIML = '<?xml version="1.0" encoding="UTF-8"?><Response></Response>'


def json_response(data: Any, status: int = 200) -> web.Response:
    """A JSON answer (orjson: the answer to every webhook is serialised on the hot path)."""
    return web.json_response(data, status=status, dumps=_dumps)


def _dumps(data: Any) -> str:
    return orjson.dumps(data).decode()


def error_response(status: int, code: str, message: str) -> web.Response:
    """Every error the relay answers: a JSON body saying what is wrong."""
    response = json_response({"error": code, "message": message}, status=status)
    response[REFUSAL] = code
    return response


@web.middleware
async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every request: an id bound to its log lines and echoed back, errors answered as JSON, webhooks
    counted and timed, and while draining, connections closed after their answer.

    One middleware, not one per concern: aiohttp's chain costs each webhook a few microseconds a link.
    """
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
        source = source if source in request.app[CONFIG].sources else UNKNOWN_SOURCE
        refusal = response.get(REFUSAL)
        if refusal is not None:
            metrics.events_received.labels(source, "refused", refusal).inc()
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


def described(response: web.Response) -> web.Response:
    """Mark a response whose request a log line already describes: it needs no access line."""
    response[DESCRIBED] = True
    return response


async def in_thread(request: web.Request, func: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Run blocking Redis work on the app's thread pool, in the request's context (its log fields)."""
    loop = asyncio.get_running_loop()
    # run_in_executor does not carry contextvars over to the thread, as asyncio.to_thread does.
    work = functools.partial(contextvars.copy_context().run, func, *args, **kwargs)
    return await loop.run_in_executor(request.app[EXECUTOR], work)


async def read_body(request: web.Request, max_bytes: int, timeout_s: float) -> bytes:
    """The whole body, refusing it as soon as it passes ``max_bytes`` (declared or actual), or when all of
    it has not arrived within ``timeout_s``: aiohttp has no read timeout, and a sender dripping a byte at a
    time would hold its connection and buffer for ever."""
    if request.content_length is not None and request.content_length > max_bytes:
        raise BodyTooLarge(f"body of {request.content_length} bytes is over the limit of {max_bytes}")
    body = bytearray()
    try:
        async with asyncio.timeout(timeout_s):  # for the whole body: a per-read timeout lets a drip through
            async for chunk in request.content.iter_chunked(READ_CHUNK_BYTES):
                body += chunk
                if len(body) > max_bytes:
                    raise BodyTooLarge(f"body is over the limit of {max_bytes} bytes")
    except TimeoutError:
        raise RequestTimeout(f"the body did not arrive within {timeout_s:g} s") from None
    return bytes(body)


def _event_body(stored: StoredEvent) -> dict[str, Any]:
    return {
        "event_id": stored.record.event_id,
        "source_event_id": stored.record.source_event_id,
        "status": stored.record.status.value,
        "jobs": [{"route": run.route, "phlo_id": run.phlo_id, "job_id": run.job_id} for run in stored.runs],
        "dead_lettered": [{"route": run.route, "reason": run.last_error} for run in stored.dead_letters],
    }


def _answer(source: Source, stored: list[StoredEvent]) -> web.Response:
    """202 when anything was queued, else 200; in the shape the sender expects."""
    if source.reply == "salesforce-ack":  # anything but this envelope makes Salesforce send it again
        return web.Response(text=SALESFORCE_ACK, content_type="text/xml")
    if source.reply == "twiml":  # Twilio's messaging and voice webhooks want TwiML: here, do nothing
        return web.Response(text=EMPTY_TWIML, content_type="text/xml")
    status = 202 if any(event.record.status is EventStatus.ACCEPTED for event in stored) else 200
    if source.batch is not None:
        return json_response({"events": [_event_body(event) for event in stored]}, status=status)
    return json_response(_event_body(stored[0]), status=status)


def _hook_request(request: web.Request, settings: Settings, body: bytes) -> HookRequest:
    proxies = settings.trusted_proxies
    return HookRequest(
        method=request.method,
        url=public_url(request, settings.public_url, proxies),
        headers=request.headers,
        body=body,
        client_ip=client_ip(request, proxies),
    )


async def receive_hook(request: web.Request) -> web.Response:
    """``POST /hooks/{source}``: verify, parse, map, store; 202 once every run is queued."""
    settings, config = request.app[SETTINGS], request.app[CONFIG]
    source_name = request.match_info["source"]
    source = config.sources.get(source_name)
    if source is None:
        raise UnknownSource(f"no source named {source_name!r} is configured")
    body = await read_body(request, settings.max_body_bytes, settings.body_read_timeout_s)
    request.app[VERIFIERS][source_name].verify(_hook_request(request, settings, body))
    document = parse_body(
        request.headers.get("Content-Type"),
        body,
        json_fields=source.json_fields,
        form_document_field=source.form_document_field,
    )
    incoming = [
        event
        for event in split_events(source, document, request.headers, body)
        if event.event_type is None or event.event_type not in source.ping_events
    ]
    if not incoming:
        request.app[METRICS].events_received.labels(source_name, "ping", "").inc()
        return json_response({"status": "ping", "message": "verified; nothing to run"})
    events = [(event, map_event(config, source_name, event.event_type, event.document)) for event in incoming]
    window_s = settings.dedupe_window_s if source.dedupe_window_s is None else source.dedupe_window_s
    stored = await request.app[STORE].store(source_name, events, window_s)
    metrics = request.app[METRICS]
    for event in stored:
        metrics.events_received.labels(source_name, event.record.status.value, "").inc()
        for run in event.runs:
            metrics.runs_enqueued.labels(run.route).inc()
        for run in event.dead_letters:
            metrics.dead_letters.labels(run.route, "unmappable").inc()
        log.info(
            "event %s from %s: %s, %d run(s) queued, %d dead-lettered",
            event.record.event_id,
            source_name,
            event.record.status.value,
            len(event.runs),
            len(event.dead_letters),
            extra={
                "event_id": event.record.event_id,
                "outcome": event.record.status.value,
                "source_event_id": event.record.source_event_id,
                "runs": len(event.runs),
                "dead_lettered": len(event.dead_letters),
            },
        )
    return described(_answer(source, stored))


async def show_event(request: web.Request) -> web.Response:
    """``GET /events/{event_id}``: the event and the outcome of each of its runs."""
    event_id = request.match_info["event_id"]
    view = await in_thread(request, outcome.read_event, request.app[REDIS], event_id)
    if view is None:
        return error_response(404, "unknown_event", f"no event {event_id!r} (never received, or expired)")
    return json_response(view.model_dump(mode="json"))


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
    app[CONFIG] = config
    app[METRICS] = RelayMetrics()
    app[READINESS] = Readiness()
    environ = secret_environment() if environ is None else environ
    app[VERIFIERS] = build_verifiers(config.sources, environ, str(settings.config_path))
    register_secrets(source_secrets(config.sources, environ))  # never in a log line

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
        yield
        await app[STORE].close()
        await async_redis.aclose()
        app[EXECUTOR].shutdown(wait=True)
        app[REDIS].close()

    app.cleanup_ctx.append(connections)
    app.router.add_post(r"/hooks/{source}", receive_hook)
    app.router.add_get(r"/events/{event_id}", show_event)
    from relay.ingress.admin import (
        add_admin_routes,  # here: relay.ingress.admin and relay.ingress.health import this module
    )
    from relay.ingress.health import add_health_routes

    add_admin_routes(app, settings)
    add_health_routes(app)
    return app
