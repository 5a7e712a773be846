"""Form bodies to fields: ``application/x-www-form-urlencoded`` and ``multipart/form-data``.

A field sent several times becomes a list of its values; a multipart file part becomes
``{"filename", "content_type", "size"}`` (its content is not kept). Multipart is bounded before the MIME
parser sees it (parts, bytes of part headers), and every defect that parser notes is refused.
"""

from __future__ import annotations

import re
from email.errors import MessageDefect
from email.message import Message
from email.parser import BytesParser
from email.policy import Compat32
from email.utils import collapse_rfc2231_value
from typing import Any, cast
from urllib.parse import parse_qsl

from relay.errors import IngressRefused, MalformedBody
from relay.mapping.text import decode

FORM_TYPE = "application/x-www-form-urlencoded"
MULTIPART_TYPE = "multipart/form-data"
MAX_FIELDS = 10_000
MAX_PARTS = 1_000  # multipart: a Jotform submission has two per question
MAX_PART_HEADER_BYTES = 64 * 1024  # all parts' headers together; a Jotform submission's are a few KiB

_BOUNDARY = re.compile(r"[0-9A-Za-z'()+_,./:=? -]{0,69}[0-9A-Za-z'()+_,./:=?-]")  # RFC 2046 bchars
_DEFECTS = {
    "StartBoundaryNotFoundDefect": "no part starts with the boundary",
    "CloseBoundaryNotFoundDefect": "the closing boundary is missing (truncated body?)",
    "MissingHeaderBodySeparatorDefect": "a part's headers do not end with a blank line",
    "MultipartInvariantViolationDefect": "no part found",
}


def _add(fields: dict[str, Any], name: str, value: Any) -> None:
    if name not in fields:
        fields[name] = value
    elif isinstance(fields[name], list):
        fields[name].append(value)
    else:
        fields[name] = [fields[name], value]


def parse_form(body: bytes, charset: str | None) -> dict[str, Any]:
    """The fields of a urlencoded form body."""
    text = decode(body, charset)
    try:
        pairs = parse_qsl(
            text,
            keep_blank_values=True,
            strict_parsing=bool(text),
            max_num_fields=MAX_FIELDS,
            encoding=charset or "utf-8",
            errors="strict",
        )
    except ValueError as exc:
        raise MalformedBody(f"body is not a valid form: {exc}") from None
    fields: dict[str, Any] = {}
    for name, value in pairs:
        _add(fields, name, value)
    return fields


def _defects(defects: list[MessageDefect]) -> str:
    return "; ".join(_DEFECTS.get(type(defect).__name__, type(defect).__name__) for defect in defects)


def _part(number: int, part: Message, charset: str | None) -> tuple[str, Any]:
    raw_name = part.get_param("name", header="content-disposition")
    name = None if raw_name is None else collapse_rfc2231_value(raw_name)
    if part.get_content_disposition() != "form-data" or not name:
        raise MalformedBody(f"multipart part {number} has no 'Content-Disposition: form-data' with a name")
    content = part.get_payload(decode=True)
    if part.is_multipart() or not isinstance(content, bytes):
        raise MalformedBody(f"multipart field {name!r}: nested multipart parts are not supported")
    if part.defects:
        raise MalformedBody(f"multipart field {name!r} is not valid: {_defects(part.defects)}")
    filename = part.get_filename()
    if filename is None:
        return name, decode(content, part.get_content_charset() or charset, f"field {name!r}")
    return name, {"filename": filename, "content_type": part.get_content_type(), "size": len(content)}


class _Compat32Utf8(Compat32):
    """compat32, but raw UTF-8 in a header read as UTF-8 (as the modern policies do), not unknown-8bit."""

    def header_fetch_parse(self, name: str, value: str) -> str:
        return (
            value if value.isascii() else value.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
        )


_MIME_POLICY = _Compat32Utf8()


def _bound_part_headers(body: bytes, boundary: str) -> None:
    """Refuse more parts, or more bytes of part headers, than any sender needs, before the MIME parser
    spends time on them (it takes milliseconds per kilobyte of headers: a crafted body stalls the loop)."""
    delimiter = b"--" + boundary.encode("ascii")
    if body.count(delimiter) > MAX_PARTS + 1:
        raise MalformedBody(f"body is not valid multipart: more than {MAX_PARTS} parts")
    header_bytes, at = 0, body.find(delimiter)
    while at != -1:
        window = min(len(body), at + MAX_PART_HEADER_BYTES - header_bytes + 3)  # linear, not quadratic
        ends = [
            end for end in (body.find(b"\n\r\n", at, window), body.find(b"\n\n", at, window)) if end != -1
        ]
        header_end = min(ends, default=window)
        header_bytes += header_end - at
        if header_bytes > MAX_PART_HEADER_BYTES:
            raise MalformedBody(
                f"body is not valid multipart: its parts' headers are over {MAX_PART_HEADER_BYTES} bytes"
            )
        at = body.find(delimiter, header_end)


def parse_multipart(body: bytes, boundary: str | None, charset: str | None) -> dict[str, Any]:
    """The fields of a multipart/form-data body; ``boundary`` and ``charset`` from its Content-Type."""
    if not boundary:
        raise MalformedBody("multipart body without a boundary parameter in its Content-Type")
    if not _BOUNDARY.fullmatch(boundary):
        raise MalformedBody(f"multipart boundary {boundary[:80]!r} is not valid (RFC 2046: 1-70 characters)")
    _bound_part_headers(body, boundary)
    # The standard library's MIME parser: well kept, no dependency. It is lenient, noting what is wrong as
    # defects instead of failing; every defect is refused here. Its compat32 policy: the modern ones parse
    # each header with a full RFC 5322 grammar, some twenty times slower (seconds for a crafted body).
    head = f'Content-Type: {MULTIPART_TYPE}; boundary="{boundary}"\r\n\r\n'.encode("ascii")
    fields: dict[str, Any] = {}
    try:
        message = BytesParser(policy=_MIME_POLICY).parsebytes(head + body)
        if message.defects or not message.is_multipart():
            raise MalformedBody(
                f"body is not valid multipart: {_defects(message.defects) or 'no part found'}"
            )
        parts = cast("list[Message]", message.get_payload())
        if len(parts) > MAX_FIELDS:
            raise MalformedBody(f"body is not valid multipart: more than {MAX_FIELDS} parts")
        for number, part in enumerate(parts, 1):
            _add(fields, *_part(number, part, charset))
    except IngressRefused:
        raise
    except Exception as exc:  # email's header parser fails on some crafted headers: ValueError, IndexError
        raise MalformedBody(
            f"body is not valid multipart: a header does not parse ({str(exc)[:100]})"
        ) from None
    return fields
