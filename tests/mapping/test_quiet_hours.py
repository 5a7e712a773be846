"""Quiet hours' arithmetic and config: windows across DST days and midnight, time zones from the event or
the number, and the schema's refusals."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from relay.errors import ConfigError
from relay.mapping.config import parse_config
from relay.mapping.quiet_hours import DeliverBetween, resolve_window, zone_of_number
from relay.mapping.routes import map_event
from relay.mapping.windows import Window, first_instant_reading, parse_hhmm, spread_offset_s, zone_named

NY, LONDON = "America/New_York", "Europe/London"
EXAMPLES = Path(__file__).resolve().parents[2] / "config" / "examples"


def utc(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def window(start: str, end: str, zone: str) -> Window:
    found = zone_named(zone)
    assert found is not None
    return Window(parse_hhmm(start), parse_hhmm(end), found)


# 2026: New York springs forward on 8 March (02:00 EST -> 03:00 EDT) and falls back on 1 November (02:00
# EDT -> 01:00 EST); London on 29 March (01:00 GMT -> 02:00 BST) and 25 October (02:00 BST -> 01:00 GMT).
# (window, zone, now in UTC, the window it is in or else the next one: opening and closing in UTC, inside)
CASES: list[tuple[str, str, str, str, str, str, bool]] = [
    # An ordinary day: 02:00 EST is night; the opening is 08:00 EST, the end is exclusive, the start not.
    ("08:00", "21:00", NY, "2026-01-15 07:00", "2026-01-15 13:00", "2026-01-16 02:00", False),
    ("08:00", "21:00", NY, "2026-07-15 12:00", "2026-07-15 12:00", "2026-07-16 01:00", True),
    ("08:00", "21:00", NY, "2026-07-16 01:00", "2026-07-16 12:00", "2026-07-17 01:00", False),
    ("08:00", "21:00", NY, "2026-07-16 00:59", "2026-07-15 12:00", "2026-07-16 01:00", True),
    # Spring forward: 08:00 is 08:00 EDT that day, and the window (13 h of clock) lasts 13 h.
    ("08:00", "21:00", NY, "2026-03-08 07:30", "2026-03-08 12:00", "2026-03-09 01:00", False),
    # No 02:30 on 8 March: the window opens when the clock jumps to 03:00 EDT (07:00 UTC).
    ("02:30", "21:00", NY, "2026-03-08 06:00", "2026-03-08 07:00", "2026-03-09 01:00", False),
    ("02:30", "21:00", NY, "2026-03-08 07:00", "2026-03-08 07:00", "2026-03-09 01:00", True),
    # A night window ending in the gap closes at the jump too: 22:00 EST to 03:00 EDT is 4 h.
    ("22:00", "02:30", NY, "2026-03-08 06:59", "2026-03-08 03:00", "2026-03-08 07:00", True),
    ("22:00", "02:30", NY, "2026-03-08 07:00", "2026-03-09 02:00", "2026-03-09 06:30", False),
    # Fall back: 01:30 happens twice on 1 November; the window opens at the first (EDT, 05:30 UTC).
    ("01:30", "21:00", NY, "2026-11-01 04:00", "2026-11-01 05:30", "2026-11-02 02:00", False),
    ("01:30", "21:00", NY, "2026-11-01 06:15", "2026-11-01 05:30", "2026-11-02 02:00", True),
    # An overnight window ending at 01:30 closes at the first 01:30 and does not reopen in the repeated
    # hour: at 01:15 EST (06:15 UTC) it is closed until 22:00 EST.
    ("22:00", "01:30", NY, "2026-11-01 05:00", "2026-11-01 02:00", "2026-11-01 05:30", True),
    ("22:00", "01:30", NY, "2026-11-01 06:15", "2026-11-02 03:00", "2026-11-02 06:30", False),
    # London: 08:00 BST on its spring day; no 01:30 that day, so a 01:30 window opens at 02:00 BST.
    ("08:00", "21:00", LONDON, "2026-03-29 00:30", "2026-03-29 07:00", "2026-03-29 20:00", False),
    ("01:30", "06:00", LONDON, "2026-03-29 00:30", "2026-03-29 01:00", "2026-03-29 05:00", False),
    # London falls back: the first 01:30 (BST, 00:30 UTC); an overnight window spans the extra hour.
    ("01:30", "21:00", LONDON, "2026-10-24 23:00", "2026-10-25 00:30", "2026-10-25 21:00", False),
    ("22:00", "06:00", LONDON, "2026-10-25 03:00", "2026-10-24 21:00", "2026-10-25 06:00", True),
    # Overnight on an ordinary day: 07:00 EST is after it closed; 23:30 EST is inside it.
    ("22:00", "06:00", NY, "2026-01-15 12:00", "2026-01-16 03:00", "2026-01-16 11:00", False),
    ("22:00", "06:00", NY, "2026-01-16 04:30", "2026-01-16 03:00", "2026-01-16 11:00", True),
    ("22:00", "06:00", NY, "2026-01-16 10:59", "2026-01-16 03:00", "2026-01-16 11:00", True),
    # A zone east of UTC whose local day is ahead of UTC's.
    ("08:00", "21:00", "Asia/Tokyo", "2026-01-15 20:00", "2026-01-15 23:00", "2026-01-16 12:00", False),
]


@pytest.mark.parametrize(("start", "end", "zone", "now", "opens", "closes", "inside"), CASES)
def test_the_window_a_moment_is_in_or_the_next_one(
    start: str, end: str, zone: str, now: str, opens: str, closes: str, inside: bool
) -> None:
    spec = window(start, end, zone)
    at = utc(now)
    current = spec.current(at)
    assert (current is not None) is inside
    found = current if current is not None else spec.next_interval(at)
    assert found == (utc(opens), utc(closes))


@pytest.mark.parametrize(
    ("zone", "day", "start", "end", "hours"),
    [
        (NY, date(2026, 3, 8), "00:00", "06:00", 5),  # an hour of clock never happens
        (NY, date(2026, 11, 1), "00:00", "06:00", 7),  # an hour of clock happens twice
        (LONDON, date(2026, 3, 29), "00:00", "06:00", 5),
        (LONDON, date(2026, 10, 25), "00:00", "06:00", 7),
        (NY, date(2026, 11, 1), "08:00", "21:00", 13),
    ],
)
def test_a_window_lasts_the_time_that_passes_not_the_clock_hours(
    zone: str, day: date, start: str, end: str, hours: int
) -> None:
    opens, closes = window(start, end, zone).interval(day)
    assert closes - opens == timedelta(hours=hours)


def test_a_skipped_time_reads_as_the_jump_and_a_repeated_one_as_its_first_occurrence() -> None:
    ny = zone_named(NY)
    assert ny is not None
    assert first_instant_reading(datetime(2026, 3, 8, 2, 30), ny) == utc("2026-03-08 07:00")
    assert first_instant_reading(datetime(2026, 3, 8, 2, 0), ny) == utc("2026-03-08 07:00")
    assert first_instant_reading(datetime(2026, 3, 8, 3, 0), ny) == utc("2026-03-08 07:00")
    assert first_instant_reading(datetime(2026, 11, 1, 1, 30), ny) == utc("2026-11-01 05:30")


def test_spread_offsets_are_per_run_stable_and_within_the_spread_and_half_the_window() -> None:
    offsets = [spread_offset_s(f"event-{n}-callback", 600, 13 * 3600) for n in range(200)]
    assert all(0 <= offset < 600 for offset in offsets)
    assert len(set(offsets)) == 200  # no two runs wake at the same second-fraction
    assert max(offsets) - min(offsets) > 500  # spread over the span, not bunched
    assert spread_offset_s("event-1-callback", 600, 13 * 3600) == offsets[1]
    assert all(spread_offset_s(f"e{n}", 3600, 600) < 300 for n in range(50))  # half a 10-minute window
    assert spread_offset_s("e", 0, 600) == 0


@pytest.mark.parametrize(
    ("name", "known"),
    [(NY, True), (LONDON, True), ("UTC", True), ("Mars/Olympus", False), ("", False),
     ("../etc/passwd", False), ("/etc/localtime", False), (" America/New_York", False)],
)  # fmt: skip
def test_zone_names_are_iana_names(name: str, known: bool) -> None:
    assert (zone_named(name) is not None) is known


# --- the time zone of a run: from the event, the number, or the default ------------------------------------

SPEC = DeliverBetween.model_validate(
    {"start": "08:00", "end": "21:00", "timezone": {"path": "contact.tz", "default": NY},
     "infer_from_number": "to"}
)  # fmt: skip


@pytest.mark.parametrize(
    ("document", "payload", "zone", "zone_from"),
    [
        ({"contact": {"tz": "Europe/Paris"}}, {"to": "+14155550123"}, "Europe/Paris", "event"),
        ({"contact": {"tz": " Asia/Tokyo "}}, {}, "Asia/Tokyo", "event"),
        ({"contact": {}}, {"to": "+442079460958"}, LONDON, "number"),
        ({"contact": {"tz": "Somewhere/Else"}}, {"to": "+33142685300"}, "Europe/Paris", "number"),
        ({"contact": {"tz": 5}}, {"to": "+442079460958"}, LONDON, "number"),
        ({}, {}, NY, "default"),
        ({}, {"to": "not a number"}, NY, "default"),
        ({}, {"to": "(415) 555-0123"}, NY, "default"),  # not E.164: not normalised, not guessed
        ({}, {"to": "+61491570156"}, NY, "default"),  # an Australian mobile: several zones
        ([], {"to": 14155550123}, NY, "default"),
    ],
)
def test_the_time_zone_comes_from_the_event_then_the_number_then_the_default(
    document: Any, payload: dict[str, Any], zone: str, zone_from: str
) -> None:
    resolved = resolve_window(SPEC, document, payload)
    assert (resolved["timezone"], resolved["zone_from"]) == (zone, zone_from)
    assert resolved["start"] == "08:00" and resolved["past_max_age"] == "deliver"


def test_a_number_whose_region_has_one_zone_names_it() -> None:
    assert zone_of_number("+442079460958") == LONDON
    assert zone_of_number("+81312345678") == "Asia/Tokyo"
    assert zone_of_number("+12125550123") == NY  # area code 212: New York
    assert zone_of_number("+999") is None
    assert zone_of_number(None) is None


def test_a_fixed_zone_is_used_unless_the_number_names_one() -> None:
    fixed = DeliverBetween(start="08:00", end="21:00", timezone=LONDON)
    assert resolve_window(fixed, {}, {"to": "+12125550123"})["timezone"] == LONDON
    inferred = fixed.model_copy(update={"infer_from_number": "to"})
    assert resolve_window(inferred, {}, {"to": "+12125550123"})["timezone"] == NY
    assert resolve_window(inferred, {}, {})["zone_from"] == "fixed"


# --- the config ------------------------------------------------------------------------------------------

CONFIG = """
sources:
  forms:
    event_id: {path: id}
routes:
  - name: call
    source: forms
    phlo_id: abc
    payload:
      to: {path: phone}
    deliver_between: %s
"""


def test_a_route_with_quiet_hours_maps_to_runs_carrying_their_window() -> None:
    spec = (
        '{start: "08:00", end: "21:00", timezone: {path: tz, default: America/Chicago}, past_max_age: expire}'
    )
    config = parse_config(CONFIG % spec, "routes.yaml")
    [run] = map_event(config, "forms", None, {"id": "1", "phone": "+15555550100", "tz": "Europe/Berlin"}).runs
    assert run.window == {
        "start": "08:00", "end": "21:00", "timezone": "Europe/Berlin", "zone_from": "event",
        "past_max_age": "expire", "spread_s": 600,
    }  # fmt: skip
    [plain] = map_event(parse_config(CONFIG % "null", "r.yaml"), "forms", None, {"id": "1"}).runs
    assert plain.window is None


@pytest.mark.parametrize(
    ("spec", "says"),
    [
        ('{start: "8am", end: "21:00", timezone: UTC}', "'8am' is not a time of day as HH:MM"),
        ('{start: "08:00", end: "24:00", timezone: UTC}', "'24:00' is not a time of day"),
        ('{start: "08:00", end: "21:00", timezone: "Mars/Base"}', "'Mars/Base' is not an IANA time zone"),
        ('{start: "08:00", end: "21:00", timezone: {path: tz, default: EST5}}', "'EST5' is not an IANA"),
        ('{start: "08:00", end: "21:00", timezone: {path: "a[", default: UTC}}', "invalid JMESPath"),
        ('{start: "08:00", end: "08:00", timezone: UTC}', "start and end are equal"),
        ('{start: "08:00", end: "21:00", timezone: UTC, past_max_age: drop}', "'expire' or 'deliver'"),
        (
            '{start: "08:00", end: "21:00", timezone: UTC, infer_from_number: phone}',
            "'phone' is not a payload",
        ),
        ('{start: "08:00", end: "21:00", timezone: UTC, quiet: true}', "Extra inputs are not permitted"),
        ('{start: "08:00", end: "21:00"}', "Field required"),
    ],
)
def test_bad_quiet_hours_are_refused_naming_the_route_and_field(spec: str, says: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(CONFIG % spec, "routes.yaml")
    [problem] = info.value.problems
    assert problem.location.startswith("route 'call' (routes[0])"), problem
    assert "deliver_between" in problem.location or "deliver_between" in problem.message, problem
    assert says in problem.message, problem


def test_relay_map_shows_the_window_and_where_its_zone_came_from() -> None:
    mapped = subprocess.run(
        [sys.executable, "-m", "relay", "map", "typeform", str(EXAMPLES / "samples" / "typeform.json"),
         "--config", str(EXAMPLES / "typeform.yaml")],
        env={key: value for key, value in os.environ.items() if not key.startswith(("RELAY_", "PLIVO_"))},
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert mapped.returncode == 0, mapped.stderr
    # The sample's +1 415 number is in one zone; the form's hidden fields name none.
    assert "only between 09:00 and 20:00 America/Los_Angeles (zone from number; past max age: expire)" in (
        mapped.stdout
    )
