"""``relay map``: what the ingress would make of a request, without Redis, network or workers.

The request goes the ingress's way (``relay.mapping.split.read_events``, ``relay.mapping.routes``, and with
``--verify`` the source's verifier); the report says, per event, every route of the config, whether it
matched and why not, and the payload each matched route would send or why it would be dead-lettered.
"""

from __future__ import annotations

import json
from typing import Any

from relay.errors import BodyTooLarge, UnknownSource
from relay.ingress.checks.request import HookRequest
from relay.ingress.verify import SourceVerifier
from relay.mapping.config import RelayConfig
from relay.mapping.routes import map_event, unmatched_reason
from relay.mapping.sources import Source
from relay.mapping.split import IncomingEvent, is_ping, read_events


def _routes(config: RelayConfig, source_name: str, event: IncomingEvent) -> list[dict[str, Any]]:
    mapped = map_event(config, source_name, event.event_type, event.document)
    runs = {run.route: run for run in mapped.runs}
    failures = {failure.route: failure for failure in mapped.failures}
    verdicts: list[dict[str, Any]] = []
    for route in config.routes:
        verdict: dict[str, Any] = {"route": route.name, "phlo_id": route.phlo_id, "matched": False}
        if route.source != source_name:
            verdict["reason"] = f"the route is for source {route.source!r}"
        elif route.name in runs:
            verdict.update(matched=True, payload=runs[route.name].payload)
            if runs[route.name].window is not None:
                verdict["window"] = runs[route.name].window  # quiet hours, in the zone resolved
            if runs[route.name].cap is not None:  # the caps it is counted under, its recipient by hash
                verdict["caps"] = runs[route.name].cap["scopes"]  # type: ignore[index]
        elif route.name in failures:
            verdict.update(matched=True, dead_letter=failures[route.name].reason)
        else:
            verdict["reason"] = unmatched_reason(route, event.event_type, event.document)
        verdicts.append(verdict)
    return verdicts


def _event(config: RelayConfig, source_name: str, source: Source, event: IncomingEvent) -> dict[str, Any]:
    ping = is_ping(source, event)
    return {
        "event_id": event.source_event_id,
        "dedupe_id": event.dedupe_id,
        "event_type": event.event_type,
        "ping": ping,  # answered 200 without routing
        "routes": [] if ping else _routes(config, source_name, event),
    }


def dry_run(
    config: RelayConfig,
    source_name: str,
    request: HookRequest,
    verifier: SourceVerifier | None,
    max_body_bytes: int,
) -> dict[str, Any]:
    """The report of one request; raises the IngressRefused the ingress would answer with."""
    source = config.sources.get(source_name)
    if source is None:
        raise UnknownSource(f"no source named {source_name!r} is configured")
    if len(request.body) > max_body_bytes:
        raise BodyTooLarge(f"body of {len(request.body)} bytes is over the limit of {max_body_bytes}")
    if verifier is not None:
        verifier.verify(request)
    events = [
        _event(config, source_name, source, event)
        for event in read_events(source, request.headers, request.body)
    ]
    runs = sum(1 for event in events for route in event["routes"] if "payload" in route)
    return {"source": source_name, "verified": verifier is not None, "events": events, "runs": runs}


def _route_lines(route: dict[str, Any]) -> list[str]:
    if "payload" in route:
        caps = [
            f"    capped: {cap['max']} per {cap['per_s']} s per recipient ({cap['kind']} {cap['name']}, "
            f"recipient sha256 {cap['recipient'][:12]}...)"
            for cap in route.get("caps", [])
        ]
        lines = [
            f"  {route['route']}: matched, runs PHLO {route['phlo_id']} with",
            f"    {json.dumps(route['payload'])}",
            *caps,
        ]
        if "window" in route:
            window = route["window"]
            lines.append(
                f"    only between {window['start']} and {window['end']} {window['timezone']} "
                f"(zone from {window['zone_from']}; past max age: {window['past_max_age']})"
            )
        return lines
    if "dead_letter" in route:
        return [f"  {route['route']}: matched, dead-lettered: {route['dead_letter']}"]
    return [f"  {route['route']}: not matched: {route['reason']}"]


def render(report: dict[str, Any]) -> str:
    """The report as text for a person."""
    lines = [f"source {report['source']}: signature {'verified' if report['verified'] else 'not checked'}"]
    for number, event in enumerate(report["events"], start=1):
        event_id = event["event_id"] or f"none (duplicates are keyed on {event['dedupe_id']})"
        lines.append(f"event {number} of {len(report['events'])}: id {event_id}, type {event['event_type']}")
        if event["ping"]:
            lines.append("  a ping: answered 200 without routing")
        for route in event["routes"]:
            lines += _route_lines(route)
    lines.append(f"{report['runs']} run(s) would be queued")
    return "\n".join(lines)
