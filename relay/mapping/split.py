"""A parsed request to its events: split a batch, and find each event's id, type and duplicate key.

Senders batch (a HubSpot array, a Salesforce message of up to 100 notifications); each element becomes an
event of its own, mapped, queued, recorded and deduplicated on its own.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from relay.errors import MalformedBody
from relay.mapping.expressions import locate, search
from relay.mapping.parse import parse_body
from relay.mapping.sources import Source


@dataclass(frozen=True)
class IncomingEvent:
    """One event of a request, before mapping."""

    document: Any
    source_event_id: str | None
    event_type: str | None
    dedupe_id: str  # the sender's event id, or a digest of the event when the sender gives none


def digest(data: bytes) -> str:
    """The duplicate key of an event without an id of its own."""
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _canonical(document: Any) -> bytes:
    return json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def _batch_items(source: Source, document: Any) -> list[Any]:
    items = search(str(source.batch), document)
    if isinstance(items, list):
        return items
    if isinstance(items, dict):  # XML gives one element as an object, several as a list
        return [items]
    if items is None:
        raise MalformedBody(f"the body holds no events at {source.batch!r}")
    raise MalformedBody(f"events at {source.batch!r} must be a list or an object, not {type(items).__name__}")


def split_events(
    source: Source, document: Any, headers: Mapping[str, str], body: bytes
) -> list[IncomingEvent]:
    """The events a request carries: the whole document, or each element of the source's batch."""
    if source.batch is None:
        event_id = locate(source.event_id, document, headers)
        event_type = locate(source.event_type, document, headers)
        return [IncomingEvent(document, event_id, event_type, event_id or digest(body))]
    events = []
    for index, item in enumerate(_batch_items(source, document)):
        event_id = locate(source.event_id, item, headers)
        if event_id is not None and source.event_id is not None and source.event_id.header is not None:
            event_id = f"{event_id}:{index}"  # one delivery id for the whole request
        event_type = locate(source.event_type, item, headers)
        events.append(IncomingEvent(item, event_id, event_type, event_id or digest(_canonical(item))))
    return events


def read_events(source: Source, headers: Mapping[str, str], body: bytes) -> list[IncomingEvent]:
    """The events of a (verified) request: its body parsed by its Content-Type, then split; the ingress
    and ``relay map`` both read requests here. ``headers`` must look names up case-insensitively."""
    document = parse_body(
        headers.get("Content-Type"),
        body,
        json_fields=source.json_fields,
        form_document_field=source.form_document_field,
    )
    return split_events(source, document, headers, body)


def is_ping(source: Source, event: IncomingEvent) -> bool:
    """Whether the event is one the source answers without routing (GitHub's ping)."""
    return event.event_type is not None and event.event_type in source.ping_events
