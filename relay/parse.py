"""Request bodies to one event document: JSON, or form fields as a JSON object.

The mapping only ever sees plain JSON values, whatever the sender's format.
"""

from __future__ import annotations

import json
import math
from typing import Any
from urllib.parse import parse_qsl

from relay.errors import MalformedBody, UnsupportedMediaType

JSON_TYPES = ("application/json", "text/json")
FORM_TYPE = "application/x-www-form-urlencoded"


def _decode(body: bytes, charset: str | None) -> str:
    try:
        return body.decode(charset or "utf-8")
    except LookupError:
        raise UnsupportedMediaType(f"unknown charset {charset!r}") from None
    except UnicodeDecodeError as exc:
        raise MalformedBody(f"body is not valid {charset or 'utf-8'}: byte {exc.start}") from None


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _finite_float(text: str) -> float:
    value = float(text)
    if math.isinf(value):
        raise ValueError(f"number {text[:20]} is out of range")
    return value


def parse_json(body: bytes, charset: str | None) -> Any:
    """A JSON body; NaN and Infinity are refused (they cannot be sent on to the runner)."""
    text = _decode(body, charset)
    try:
        return json.loads(text, parse_constant=_reject_constant, parse_float=_finite_float)
    except ValueError as exc:
        raise MalformedBody(f"body is not valid JSON: {exc}") from None


def parse_form(body: bytes, charset: str | None) -> dict[str, Any]:
    """Form fields; a field sent several times becomes a list of its values, in order."""
    text = _decode(body, charset)
    try:
        pairs = parse_qsl(
            text,
            keep_blank_values=True,
            strict_parsing=bool(text),
            max_num_fields=10_000,
            encoding=charset or "utf-8",
            errors="strict",
        )
    except ValueError as exc:
        raise MalformedBody(f"body is not a valid form: {exc}") from None
    fields: dict[str, Any] = {}
    for name, value in pairs:
        if name not in fields:
            fields[name] = value
        elif isinstance(fields[name], list):
            fields[name].append(value)
        else:
            fields[name] = [fields[name], value]
    return fields


def parse_body(content_type: str, charset: str | None, body: bytes) -> Any:
    """The event document of a request, by its media type (without parameters, lower case)."""
    if content_type in JSON_TYPES or content_type.endswith("+json"):
        return parse_json(body, charset)
    if content_type == FORM_TYPE:
        return parse_form(body, charset)
    if not content_type:
        raise UnsupportedMediaType(f"Content-Type is missing; send {JSON_TYPES[0]} or {FORM_TYPE}")
    raise UnsupportedMediaType(
        f"Content-Type {content_type!r} is not supported; send {JSON_TYPES[0]} or {FORM_TYPE}"
    )
