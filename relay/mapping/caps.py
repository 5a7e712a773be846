"""Frequency caps: ``limit_per_recipient`` of a route or an account, and a run's cap resolved at mapping time.

A cap allows ``max`` runs to one recipient in any ``per`` seconds. The recipient is a value of the event (a
JMESPath ``key.path``) or, by default, the payload's ``to`` as the route built it (normalised, when the route
normalises it). Only its SHA-256 travels in the job and names Redis keys, so the worker needs no document
and no phone number is ever stored or logged by the cap. The worker's check is ``relay.queue.caps``.
"""

from __future__ import annotations

import hashlib
import json
import re
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator

from relay.errors import MappingError
from relay.mapping.expressions import Expression, check_expression, is_missing, search

DEFAULT_KEY = "to"  # the payload key a cap counts by when it names no key
MAX_PER_S = 366 * 86400
_DURATION = re.compile(r"^\s*(\d+)\s*([smhd])\s*$")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def _duration_s(raw: Any) -> Any:
    """``"24h"``, ``"30m"``, ``"7d"``, ``"90s"`` or whole seconds, as seconds.

    By hand: pydantic's timedelta takes ISO 8601 (``PT24H``), not the short form configs use elsewhere.
    """
    if isinstance(raw, str):
        match = _DURATION.match(raw.lower())
        if match is None:
            raise ValueError(f"{raw!r} is not a duration: write e.g. 90s, 30m, 24h or 7d")
        return int(match[1]) * _UNIT_S[match[2]]
    return raw


class RecipientKey(BaseModel):
    """Where the recipient is in the event: a JMESPath expression."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    path: Expression

    @field_validator("path")
    @classmethod
    def _compiles(cls, path: str) -> str:
        return check_expression(path)


class RecipientLimit(BaseModel):
    """``limit_per_recipient``: at most ``max`` runs to one recipient in any ``per`` (``24h``, ``30m``)."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    key: RecipientKey | None = Field(default=None, description="default: the payload's `to`")
    max: int = Field(default=1, ge=1, le=100_000)
    per_s: Annotated[int, BeforeValidator(_duration_s)] = Field(alias="per", ge=1, le=MAX_PER_S)


class AccountOptions(BaseModel):
    """What the config says of one Plivo account (``accounts: {name: ...}``); credentials stay in settings."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    limit_per_recipient: RecipientLimit | None = None


def recipient_hash(value: Any) -> str:
    """The SHA-256 (hex) a recipient is known by: a string stripped of surrounding blanks, else its JSON."""
    text = value.strip() if isinstance(value, str) else json.dumps(value, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def _recipient(limit: RecipientLimit, payload: dict[str, Any], document: Any) -> Any:
    value = search(limit.key.path, document) if limit.key is not None else payload.get(DEFAULT_KEY)
    return None if is_missing(value) or (isinstance(value, str) and not value.strip()) else value


def resolve_cap(
    route: str,
    account: str,
    limits: list[tuple[str, RecipientLimit | None]],
    payload: dict[str, Any],
    document: Any,
) -> dict[str, Any] | None:
    """The job's ``cap`` kwarg: one scope per limit that applies, keyed by the recipient's hash; None if none.

    ``limits``: (scope kind, limit) pairs, kind ``route`` or ``account``. A cap whose recipient is missing
    raises MappingError: a run the cap cannot count is not sent uncounted.
    """
    scopes = []
    for kind, limit in limits:
        if limit is None:
            continue
        value = _recipient(limit, payload, document)
        if value is None:
            where = f"path {limit.key.path!r}" if limit.key else f"payload key {DEFAULT_KEY!r}"
            raise MappingError(route, f"limit_per_recipient of the {kind}: {where} found no recipient")
        name = route if kind == "route" else account
        scopes.append(
            {"kind": kind, "name": name, "recipient": recipient_hash(value), "max": limit.max,
             "per_s": limit.per_s}
        )  # fmt: skip
    return {"scopes": scopes} if scopes else None
