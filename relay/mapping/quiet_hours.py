"""A route's quiet hours (``deliver_between:``): its schema, and the window a run carries in its job.

The time zone is resolved when the event is mapped, from the event (a path, with a default), from the
region of the run's phone number when that region has a single zone, or fixed; the job carries the result
(``window`` kwarg), so a worker judges the window without the event's document.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import phonenumbers
from phonenumbers import timezone as number_zones
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    field_validator,
    model_validator,
)

from relay.mapping.expressions import Expression, check_expression, is_missing, search
from relay.mapping.windows import parse_hhmm, zone_named

UNKNOWN_ZONE = "Etc/Unknown"  # what phonenumbers answers for a number it cannot place


def _check_zone(name: str) -> str:
    if zone_named(name) is None:
        raise ValueError(f"{name!r} is not an IANA time zone (such as America/New_York)")
    return name


class ZoneFromEvent(BaseModel):
    """The time zone read from the event; ``default`` when it holds none (or no zone of that name)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    path: Expression
    default: Annotated[str, AfterValidator(_check_zone)]

    @field_validator("path")
    @classmethod
    def _compiles(cls, path: str) -> str:
        return check_expression(path)


def _zone_kind(raw: Any) -> str:
    return "event" if isinstance(raw, dict | ZoneFromEvent) else "fixed"


# One error for a bad zone, not one per shape it might have been.
Zone = Annotated[
    Annotated[str, Tag("fixed")] | Annotated[ZoneFromEvent, Tag("event")], Discriminator(_zone_kind)
]


class DeliverBetween(BaseModel):
    """``deliver_between:``: the local hours in which a route's runs may be delivered."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    start: str = Field(description="local time HH:MM the window opens")
    end: str = Field(description="local time HH:MM it closes; before start: an overnight window")
    timezone: Zone = Field(description="an IANA name, or {path, default}")
    infer_from_number: str | None = Field(
        default=None,
        description="payload key of an E.164 number whose region has one zone: used when the event names "
        "no zone",
    )
    past_max_age: Literal["expire", "deliver"] = Field(
        default="deliver",
        description="a run whose window opens after its maximum age: expire it, or deliver it then",
    )
    spread_s: int = Field(
        default=600, ge=0, le=6 * 3600, description="released runs start spread over this much of the window"
    )

    @field_validator("start", "end")
    @classmethod
    def _is_a_time(cls, value: str) -> str:
        parse_hhmm(value)
        return value

    @field_validator("timezone")
    @classmethod
    def _is_a_zone(cls, value: str | ZoneFromEvent) -> str | ZoneFromEvent:
        return _check_zone(value) if isinstance(value, str) else value

    @model_validator(mode="after")
    def _not_empty(self) -> DeliverBetween:
        if self.start == self.end:
            raise ValueError("start and end are equal: the window would be empty (or every hour; omit it)")
        return self


def zone_of_number(number: Any) -> str | None:
    """The one time zone of an E.164 number's region, or None (not a number, or a region of several)."""
    if not isinstance(number, str) or not number.startswith("+"):
        return None
    try:
        parsed = phonenumbers.parse(number, None)
    except phonenumbers.NumberParseException:
        return None
    zones = number_zones.time_zones_for_number(parsed)
    if len(zones) != 1 or zones[0] == UNKNOWN_ZONE or zone_named(zones[0]) is None:
        return None
    return str(zones[0])


def run_window(spec: DeliverBetween | None, document: Any, payload: dict[str, Any]) -> dict[str, Any] | None:
    """The window a run's job carries (None: its route has no quiet hours)."""
    return None if spec is None else resolve_window(spec, document, payload)


def resolve_window(spec: DeliverBetween, document: Any, payload: dict[str, Any]) -> dict[str, Any]:
    """The window a run's job carries: hours, the zone for this event and where it came from."""
    zone, zone_from = None, "fixed"
    if isinstance(spec.timezone, ZoneFromEvent):
        found = search(spec.timezone.path, document)
        if not is_missing(found) and isinstance(found, str) and zone_named(found.strip()) is not None:
            zone, zone_from = found.strip(), "event"
    if zone is None and spec.infer_from_number is not None:
        inferred = zone_of_number(payload.get(spec.infer_from_number))
        if inferred is not None:
            zone, zone_from = inferred, "number"
    if zone is None:
        if isinstance(spec.timezone, ZoneFromEvent):
            zone, zone_from = spec.timezone.default, "default"
        else:
            zone = spec.timezone
    return {
        "start": spec.start,
        "end": spec.end,
        "timezone": zone,
        "zone_from": zone_from,
        "past_max_age": spec.past_max_age,
        "spread_s": spec.spread_s,
    }
