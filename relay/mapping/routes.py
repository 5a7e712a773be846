"""Event document to PHLO runs: match the source's routes, then build each payload with JMESPath."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from typing import Any

from relay.errors import MappingError, PhoneNumberInvalid
from relay.mapping.caps import resolve_cap
from relay.mapping.config import LiteralValue, PathValue, RegionPath, RelayConfig, RetryOverride, Route
from relay.mapping.expressions import is_missing, search
from relay.mapping.phones import region_of, to_e164
from relay.mapping.quiet_hours import run_window


@dataclass(frozen=True)
class PlannedRun:
    """One PHLO run an event should cause."""

    route: str
    phlo_id: str
    account: str
    payload: dict[str, Any]
    retry: RetryOverride | None = None
    window: dict[str, Any] | None = None  # quiet hours, its time zone resolved for this event
    cap: dict[str, Any] | None = None  # its frequency caps, as the job carries them (relay.mapping.caps)


@dataclass(frozen=True)
class UnmappedRun:
    """A route that matched an event but whose payload could not be built."""

    route: str
    phlo_id: str
    account: str
    reason: str


@dataclass(frozen=True)
class MappedEvent:
    """What an event maps to: runs to queue, and routes that matched but could not be mapped."""

    runs: list[PlannedRun] = field(default_factory=list)
    failures: list[UnmappedRun] = field(default_factory=list)

    @property
    def ignored(self) -> bool:
        """True when no route matched at all."""
        return not self.runs and not self.failures


def _is_json(value: Any) -> bool:
    """Whether the runner's request body can carry it, nested values included."""
    try:
        json.dumps(value, allow_nan=False)
    except ValueError:  # to_number('1e999'), to_number('NaN'): JSON has no such numbers
        return False
    except TypeError:  # `&a` evaluates to an expression reference, a JMESPath object
        return False
    return True


def unmatched_reason(route: Route, event_type: str | None, document: Any) -> str | None:
    """Why the route does not apply to the event (its event types, then its condition); None when it does."""
    if route.events is not None:
        if event_type is None:
            return f"the event has no type; the route wants {', '.join(route.events)}"
        if not any(fnmatchcase(event_type, pattern) for pattern in route.events):
            return f"event type {event_type!r} is not one of {', '.join(route.events)}"
    if route.when is not None and not search(route.when, document):
        return f"when {route.when!r} is false"
    return None


def route_matches(route: Route, event_type: str | None, document: Any) -> bool:
    """Whether the route applies: its event types (patterns) and its JMESPath condition."""
    return unmatched_reason(route, event_type, document) is None


def _region(spec: PathValue, document: Any) -> str | None:
    """The default region of a phone number: the config's code, or the event's with its fallback."""
    region = spec.default_region
    if isinstance(region, RegionPath):
        return region_of(search(region.path, document)) or region.default
    return region


def build_payload(route: Route, document: Any) -> dict[str, Any]:
    """The PHLO payload of one route; raises MappingError naming a required key that has no value, or a
    ``format: e164`` key whose value is not a valid phone number (by its shape, never the number)."""
    payload: dict[str, Any] = {}
    for key, spec in route.payload.items():
        if isinstance(spec, LiteralValue):
            value = spec.value
        else:
            value = search(spec.path, document)
            if spec.format is not None and isinstance(value, str) and not value.strip():
                value = None  # a phone field a form left blank is absent, not an invalid number
            if is_missing(value):
                if spec.default is not None:
                    value = spec.default
                elif spec.required:
                    raise MappingError(
                        route.name, f"required payload key {key!r}: path {spec.path!r} found no value"
                    )
            if spec.format == "e164" and value is not None:
                try:
                    value = to_e164(value, _region(spec, document))
                except PhoneNumberInvalid as exc:
                    raise MappingError(route.name, f"payload key {key!r}: {exc}") from None
        if not _is_json(value):
            raise MappingError(
                route.name,
                f"payload key {key!r} holds an infinity, a NaN or an expression reference (&...), "
                "which JSON cannot carry",
            )
        # Like plivo-python, keys without a value are not sent.
        if value is not None:
            payload[key] = value
    return payload


def plan_run(config: RelayConfig, route: Route, document: Any) -> PlannedRun:
    """One matching route's run: payload, quiet hours, caps; raises MappingError when it cannot be built."""
    payload = build_payload(route, document)
    account = config.accounts.get(route.account)
    account_limit = account.limit_per_recipient if account is not None else None
    limits = [("route", route.limit_per_recipient), ("account", account_limit)]
    cap = resolve_cap(route.name, route.account, limits, payload, document)
    window = run_window(route.deliver_between, document, payload)
    return PlannedRun(route.name, route.phlo_id, route.account, payload, route.retry, window, cap)


def map_event(config: RelayConfig, source: str, event_type: str | None, document: Any) -> MappedEvent:
    """Every run the event causes (fan-out), and the matching routes it could not be mapped for."""
    mapped = MappedEvent()
    for route in config.routes_for(source):
        if not route_matches(route, event_type, document):
            continue
        try:
            mapped.runs.append(plan_run(config, route, document))
        except MappingError as exc:
            mapped.failures.append(UnmappedRun(route.name, route.phlo_id, route.account, exc.message))
    return mapped
