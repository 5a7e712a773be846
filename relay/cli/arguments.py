"""Argument types the commands share: positive counts, points in time and headers."""

from __future__ import annotations

import argparse

from relay.outcome.deadletters import parse_time


def positive_int(text: str) -> int:
    """A whole number of at least 1."""
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive integer")
    return int(text)


def header_arg(text: str) -> tuple[str, str]:
    """A header given as ``Name: value``."""
    name, colon, value = text.partition(":")
    if not colon or not name.strip() or name != name.strip():
        raise argparse.ArgumentTypeError(f"{text!r} is not a header: write 'Name: value'")
    return name, value.strip()


def time_arg(text: str) -> float:
    """Epoch seconds from ISO-8601, epoch seconds or a duration ago (``30m``, ``2h``, ``7d``)."""
    try:
        return parse_time(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
