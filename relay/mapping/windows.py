"""Delivery windows (quiet hours): when, in a contact's own time zone, a run may reach their phone.

A window is a local start and end time in an IANA time zone. Each local day's window opens at the first
instant the zone's clock reads ``start`` or later and closes at the first instant after that it reads
``end`` or later; an end before the start is an overnight window (22:00-06:00 runs into the next day).
So on a spring-forward day a window starting at 02:30 (a time that does not exist) opens when the clock
jumps to 03:00, and on a fall-back day a window starting or ending at 01:30 (a time that happens twice)
opens or closes at its first occurrence; a window that has closed does not reopen in the repeated hour.

zoneinfo gives the offsets (``fold`` picks between the two readings of a repeated time) but not the
instants of transitions, so the one case that needs them (a start or end in a gap) is found by bisection.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

TIME_PATTERN = re.compile(r"^([01]\d|2[0-3]):([0-5]\d)$")


def parse_hhmm(text: str) -> time:
    """``"08:00"`` as a time; ValueError naming the expected shape otherwise."""
    match = TIME_PATTERN.match(text)
    if match is None:
        raise ValueError(f"{text!r} is not a time of day as HH:MM (00:00 to 23:59)")
    return time(int(match[1]), int(match[2]))


def zone_named(name: str) -> ZoneInfo | None:
    """The IANA time zone of that name (from the system or the ``tzdata`` package), or None."""
    if not isinstance(name, str) or not name or name != name.strip() or ".." in name or name.startswith("/"):
        return None  # ZoneInfo would raise ValueError on some, or read a path
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, IsADirectoryError, UnicodeEncodeError):
        return None


def _local(at: datetime, zone: ZoneInfo) -> datetime:
    """The zone's wall-clock reading at ``at``, without a zone."""
    return at.astimezone(zone).replace(tzinfo=None)


def first_instant_reading(wall: datetime, zone: ZoneInfo) -> datetime:
    """The first instant (UTC) at which the zone's clock reads ``wall`` or later (naive ``wall``)."""
    earlier = wall.replace(tzinfo=zone, fold=0).astimezone(UTC)  # a repeated time: its first occurrence
    if _local(earlier, zone) == wall:
        return earlier
    # ``wall`` is skipped (a spring-forward gap): the answer is the transition, between the two readings.
    low = wall.replace(tzinfo=zone, fold=1).astimezone(UTC)  # before the transition: reads earlier
    high = earlier  # after the transition: reads later
    while high - low > timedelta(seconds=1):
        middle = low + (high - low) / 2
        if _local(middle, zone) >= wall:
            high = middle
        else:
            low = middle
    return high.replace(microsecond=0)


@dataclass(frozen=True)
class Window:
    """A daily delivery window in a time zone."""

    start: time
    end: time
    zone: ZoneInfo

    @property
    def overnight(self) -> bool:
        return self.end <= self.start

    def interval(self, day: date) -> tuple[datetime, datetime]:
        """The window that opens on local ``day``: its opening and closing instants (UTC)."""
        opens = first_instant_reading(datetime.combine(day, self.start), self.zone)
        end_day = day + timedelta(days=1) if self.overnight else day
        closes = first_instant_reading(datetime.combine(end_day, self.end), self.zone)
        return opens, closes

    def current(self, at: datetime) -> tuple[datetime, datetime] | None:
        """The window ``at`` is in (opening, closing), or None when ``at`` is outside every window."""
        today = _local(at, self.zone).date()
        for day in (today - timedelta(days=1), today):
            opens, closes = self.interval(day)
            if opens <= at < closes:
                return opens, closes
        return None

    def next_interval(self, at: datetime) -> tuple[datetime, datetime]:
        """The first window that opens after ``at``."""
        day = _local(at, self.zone).date() - timedelta(days=1)
        while True:
            opens, closes = self.interval(day)
            if opens > at:
                return opens, closes
            day += timedelta(days=1)


def spread_offset_s(key: str, spread_s: float, window_s: float) -> float:
    """A run's own delay after its window opens: the same for a key every time, spread over ``spread_s``.

    At most half the window, so a short window keeps room to deliver what it released.
    """
    span_s = max(0.0, min(spread_s, window_s / 2))
    if span_s <= 0:
        return 0.0
    # Not hash(): it differs per process (PYTHONHASHSEED), and every worker must agree.
    digest = int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "big")
    return round(digest / 2**64 * span_s, 3)
