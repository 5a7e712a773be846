"""What the console shows of sender-controlled values: phone numbers and e-mail addresses masked, server side,
unless the operator asked to reveal them; times in UTC.

Masking reuses the log lines' rule (``relay.infra.logs.mask_pii``: ``+1415*****23``, ``a***@example.com``),
so that a number looks the same on a page and in a log line. Escaping is not done here: autoescaping
templates do it for every value.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlencode

from relay.infra.logs import mask_pii

REVEAL_PARAM = "reveal"


def shown(value: Any, reveal: bool) -> Any:
    """``value`` with every string in it (keys of mappings too) masked, unless ``reveal``; an integer of 7
    to 15 digits is masked as a phone number (shown as text)."""
    if reveal:
        return value
    if isinstance(value, str):
        return mask_pii(value)
    if isinstance(value, int) and not isinstance(value, bool) and 7 <= len(str(abs(value))) <= 15:
        # A phone number sent as a JSON number: masked as the same digits with a plus would be.
        return mask_pii(f"+{abs(value)}").removeprefix("+")
    if isinstance(value, dict):
        return {shown(key, False): shown(item, False) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [shown(item, False) for item in value]
    return value


def revealed(query: dict[str, str]) -> bool:
    """Whether a page's query asks for unmasked values (``?reveal=1``)."""
    return query.get(REVEAL_PARAM) == "1"


def with_reveal(path: str, query: dict[str, str], reveal: bool) -> str:
    """The link to ``path`` with ``query``, revealing or masking."""
    params = {key: value for key, value in query.items() if key != REVEAL_PARAM and value}
    if reveal:
        params[REVEAL_PARAM] = "1"
    return f"{path}?{urlencode(params)}" if params else path


def utc(epoch_s: float | None) -> str:
    """A time as the console prints it: ``2026-12-03 16:40:12.345 UTC``."""
    if epoch_s is None:
        return ""
    return datetime.fromtimestamp(epoch_s, UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3] + " UTC"
