"""The webhook's way through the ingress: ``POST /hooks/{source}`` verified, parsed, split, mapped, stored
and answered; and ``GET /events/{event_id}``, what became of it.

A request goes: verify the sender on the raw bytes (``relay.ingress.verify``), parse the body and
split it into events (``relay.mapping.split``, ``relay.mapping.parse``), map each
(``relay.mapping.routes``), store them with their duplicate check in one transaction
(``relay.queue.store``), answer once every run is in Redis.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from aiohttp import web

from relay.errors import BodyTooLarge, RequestTimeout, UnknownSource
from relay.infra.logs import bound
from relay.infra.metrics import DeadLetterReason
from relay.ingress.answers import described, error_response, json_response
from relay.ingress.checks.request import HookRequest
from relay.ingress.origin import client_ip, public_url
from relay.ingress.state import CONFIG, METRICS, REDIS, SETTINGS, STATS, STORE, in_thread
from relay.mapping.routes import map_event
from relay.mapping.sources import Source
from relay.mapping.split import is_ping, read_events
from relay.queue import records
from relay.queue.records import EventStatus
from relay.queue.store import StoredEvent
from relay.settings import Settings

# The logger's name is a field of every log line (README: Logs) that operators' queries select on; it is
# the name the ingress's lines had before this module was split out of ``relay.ingress.app``.
log = logging.getLogger("relay.ingress.app")
READ_CHUNK_BYTES = 64 * 1024
SALESFORCE_ACK = (
    '<soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/"><soapenv:Body>'
    '<notificationsResponse xmlns="http://soap.sforce.com/2005/09/outbound"><Ack>true</Ack>'
    "</notificationsResponse></soapenv:Body></soapenv:Envelope>"
)
EMPTY_TWIML = '<?xml version="1.0" encoding="UTF-8"?><Response></Response>'


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
    settings, live = request.app[SETTINGS], request.app[CONFIG].current  # read once: a reload may come
    config = live.config
    source_name = request.match_info["source"]
    source = config.sources.get(source_name)
    if source is None:
        raise UnknownSource(f"no source named {source_name!r} is configured")
    body = await read_body(request, settings.max_body_bytes, settings.body_read_timeout_s)
    live.verifiers[source_name].verify(_hook_request(request, settings, body))
    incoming = [event for event in read_events(source, request.headers, body) if not is_ping(source, event)]
    if not incoming:
        request.app[METRICS].events_received.labels(source_name, "ping", "").inc()
        request.app[STATS].count(source_name, "ping")
        return json_response({"status": "ping", "message": "verified; nothing to run"})
    events = [(event, map_event(config, source_name, event.event_type, event.document)) for event in incoming]
    window_s = settings.dedupe_window_s if source.dedupe_window_s is None else source.dedupe_window_s
    stored = await request.app[STORE].store(
        source_name, events, window_s, live.version.hash, request_id=bound("request_id")
    )
    metrics = request.app[METRICS]
    for event in stored:
        metrics.events_received.labels(source_name, event.record.status.value, "").inc()
        request.app[STATS].count(source_name, event.record.status.value)
        for run in event.runs:
            metrics.runs_enqueued.labels(run.route).inc()
        for run in event.dead_letters:
            metrics.dead_letters.labels(run.route, DeadLetterReason.UNMAPPABLE).inc()
            request.app[STATS].count_dead_letter(run.route, run.last_error)
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
    """``GET /events/{event_id}``: the event and the outcome of each of its runs (the app serves it behind
    the admin token only)."""
    event_id = request.match_info["event_id"]
    view = await in_thread(request, records.read_event, request.app[REDIS], event_id)
    if view is None:
        return error_response(404, "unknown_event", f"no event {event_id!r} (never received, or expired)")
    return json_response(view.model_dump(mode="json"))
