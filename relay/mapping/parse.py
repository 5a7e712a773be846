"""Request bodies to one event document, whatever format the sender chose.

Formats, by Content-Type (case-insensitive):

- JSON: ``application/json``, ``text/json``, any ``+json``; objects and arrays; NaN and Infinity refused.
- Form: ``application/x-www-form-urlencoded``; a field sent several times becomes a list of its values.
- Multipart form: ``multipart/form-data``; fields as in a form, a file part as
  ``{"filename", "content_type", "size"}`` (its content is not kept).
- XML: ``application/xml``, ``text/xml``, any ``+xml`` (SOAP): xmltodict's shape with namespace prefixes
  stripped, attributes as ``@name``, ``xsi:nil`` elements as null; a DOCTYPE and XInclude are refused.

In a form, ``json_fields`` are decoded from JSON text in place (Jotform's ``rawRequest``), and a
``form_document_field`` holds the whole JSON document (GitHub's ``payload=``). What does not parse is
MalformedBody (400); a missing or unknown media type or charset is UnsupportedMediaType (415). The mapping
only ever sees plain JSON values: dicts, lists, str, int, float, bool and None, its text all characters
(no lone surrogate, which neither UTF-8 nor Redis can hold), nested at most MAX_DEPTH levels.

Here: the choice by media type, JSON (in a body or a form's fields) and the checks of the document; the
other families are ``form_bodies`` and ``xml_bodies``, the charsets ``text``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Collection
from email.message import Message
from email.utils import collapse_rfc2231_value
from typing import Any

from relay.errors import MalformedBody, UnsupportedMediaType
from relay.mapping.form_bodies import FORM_TYPE, MULTIPART_TYPE, parse_form, parse_multipart
from relay.mapping.text import decode, require_text
from relay.mapping.xml_bodies import parse_xml

JSON_TYPES = frozenset({"application/json", "text/json"})
XML_TYPES = frozenset({"application/xml", "text/xml"})
SUPPORTED = (
    f"application/json (or any +json), {FORM_TYPE}, {MULTIPART_TYPE}, application/xml (text/xml, +xml)"
)
MAX_DEPTH = 100  # far beyond any sender's document, far below Python's recursion limit (json.dumps, ...)


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _finite_float(text: str) -> float:
    value = float(text)
    if math.isinf(value):
        raise ValueError(f"number {text[:20]} is out of range")
    return value


def _json(text: str, what: str) -> Any:
    """JSON text (a UTF-8 BOM tolerated); NaN and Infinity are refused, the runner could not send them on."""
    try:  # "\ud800" parses, but is no character: _check_document refuses it with any other such text
        document = json.loads(
            text.removeprefix("\ufeff"), parse_constant=_reject_constant, parse_float=_finite_float
        )
    except RecursionError:
        raise MalformedBody(f"{what} is nested deeper than {MAX_DEPTH} levels") from None
    except ValueError as exc:
        raise MalformedBody(f"{what} is not valid JSON: {exc}") from None
    return document


def _field_json(value: Any, name: str) -> Any:
    if isinstance(value, list):
        return [_field_json(item, name) for item in value]
    if isinstance(value, dict):
        raise MalformedBody(f"field {name!r} is a file upload, not JSON text")
    return _json(value, f"field {name!r}")


def _form_document(fields: dict[str, Any], json_fields: Collection[str], document_field: str | None) -> Any:
    if document_field is not None and document_field in fields:
        if isinstance(fields[document_field], list):
            raise MalformedBody(f"field {document_field!r} is sent more than once; it must hold one document")
        return _field_json(fields[document_field], document_field)
    for name in json_fields:
        if name in fields:
            fields[name] = _field_json(fields[name], name)
    return fields


def _check_document(document: Any) -> None:
    """Refuse nesting deeper than MAX_DEPTH, and text no store can hold: lone surrogates, which JSON
    escapes and codecs such as unicode_escape (percent-decoded form fields too) make."""
    stack = [(document, 1)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, str):
            require_text(value)
        elif isinstance(value, dict | list):
            if depth > MAX_DEPTH:
                raise MalformedBody(f"body is nested deeper than {MAX_DEPTH} levels")
            if isinstance(value, dict):
                for key in value:
                    require_text(key)
            stack.extend(
                (child, depth + 1) for child in (value.values() if isinstance(value, dict) else value)
            )


def _param(header: Message, name: str) -> str | None:
    try:
        value = header.get_param(name)
        return None if value is None else collapse_rfc2231_value(value) or None
    except ValueError as exc:  # RFC 2231 decoding fails on some crafted parameters
        raise MalformedBody(f"Content-Type parameter {name!r} does not parse: {str(exc)[:100]}") from None


def parse_body(
    content_type: str | None,
    body: bytes,
    *,
    json_fields: Collection[str] = (),
    form_document_field: str | None = None,
) -> Any:
    """The event document of a request, from its raw Content-Type header value and body."""
    if content_type is None or not content_type.strip():
        raise UnsupportedMediaType(f"Content-Type is missing; send {SUPPORTED}")
    media_type, has_params, _ = content_type.partition(";")
    media_type = media_type.strip().lower()
    header = Message()
    if has_params:  # the email package parses parameters by the RFCs, quoting included; it takes ~10 µs
        header["Content-Type"] = content_type
    charset = _param(header, "charset")
    if media_type in JSON_TYPES or media_type.endswith("+json"):
        document = _json(decode(body, charset), "body")
    elif media_type in XML_TYPES or media_type.endswith("+xml"):
        document = parse_xml(body, charset)
    elif media_type == FORM_TYPE:
        document = _form_document(parse_form(body, charset), json_fields, form_document_field)
    elif media_type == MULTIPART_TYPE:
        fields = parse_multipart(body, _param(header, "boundary"), charset)
        document = _form_document(fields, json_fields, form_document_field)
    else:
        raise UnsupportedMediaType(f"Content-Type {media_type!r} is not supported; send {SUPPORTED}")
    _check_document(document)
    return document
