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
"""

from __future__ import annotations

import json
import math
import re
import types
from collections.abc import Collection
from email.errors import MessageDefect
from email.message import Message
from email.parser import BytesParser
from email.policy import Compat32
from email.utils import collapse_rfc2231_value
from typing import Any, NoReturn, cast
from urllib.parse import parse_qsl
from xml.parsers import expat

import xmltodict

from relay.errors import IngressRefused, MalformedBody, UnsupportedMediaType

JSON_TYPES = frozenset({"application/json", "text/json"})
XML_TYPES = frozenset({"application/xml", "text/xml"})
FORM_TYPE = "application/x-www-form-urlencoded"
MULTIPART_TYPE = "multipart/form-data"
SUPPORTED = (
    f"application/json (or any +json), {FORM_TYPE}, {MULTIPART_TYPE}, application/xml (text/xml, +xml)"
)
MAX_FIELDS = 10_000
MAX_PARTS = 1_000  # multipart: a Jotform submission has two per question
MAX_PART_HEADER_BYTES = 64 * 1024  # all parts' headers together; a Jotform submission's are a few KiB
MAX_DEPTH = 100  # far beyond any sender's document, far below Python's recursion limit (json.dumps, ...)

_BOUNDARY = re.compile(r"[0-9A-Za-z'()+_,./:=? -]{0,69}[0-9A-Za-z'()+_,./:=?-]")  # RFC 2046 bchars
_NS = "\x1f"  # between namespace and local name; cannot occur in XML 1.0 text
_XSI_NIL = f"@http://www.w3.org/2001/XMLSchema-instance{_NS}nil"
_XINCLUDE = f"http://www.w3.org/2001/XInclude{_NS}"
_DEFECTS = {
    "StartBoundaryNotFoundDefect": "no part starts with the boundary",
    "CloseBoundaryNotFoundDefect": "the closing boundary is missing (truncated body?)",
    "MissingHeaderBodySeparatorDefect": "a part's headers do not end with a blank line",
    "MultipartInvariantViolationDefect": "no part found",
}


def _decode(data: bytes, charset: str | None, what: str = "body") -> str:
    try:
        text = data.decode(charset or "utf-8")
        if not text.isascii():
            text.encode()  # codecs such as unicode_escape can make lone surrogates, which UTF-8 cannot hold
        return text
    except UnicodeEncodeError:
        raise MalformedBody(f"{what} decodes to unpaired surrogates in {charset}") from None
    except UnicodeDecodeError as exc:
        raise MalformedBody(f"{what} is not valid {charset or 'utf-8'}: byte {exc.start}") from None
    except (LookupError, ValueError):  # ValueError: a NUL in the name
        raise UnsupportedMediaType(f"unknown charset {charset!r}") from None


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


def _add(fields: dict[str, Any], name: str, value: Any) -> None:
    if name not in fields:
        fields[name] = value
    elif isinstance(fields[name], list):
        fields[name].append(value)
    else:
        fields[name] = [fields[name], value]


def _form(body: bytes, charset: str | None) -> dict[str, Any]:
    text = _decode(body, charset)
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
        return name, _decode(content, part.get_content_charset() or charset, f"field {name!r}")
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


def _multipart(body: bytes, boundary: str | None, charset: str | None) -> dict[str, Any]:
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


def _refuse_doctype(*_: object) -> NoReturn:
    raise MalformedBody("XML with a DOCTYPE is refused (no DTD, no entities; SOAP forbids them)")


def _parser_without_doctype(encoding: str | None = None, namespace_separator: str | None = None) -> Any:
    # Expat reports a DOCTYPE before its internal subset: billion laughs and external entities never load.
    parser = expat.ParserCreate(encoding, namespace_separator)
    parser.StartDoctypeDeclHandler = _refuse_doctype
    return parser


_EXPAT = types.SimpleNamespace(ParserCreate=_parser_without_doctype)  # what xmltodict uses of pyexpat


def _xml_item(_path: object, key: str, value: Any) -> tuple[str, Any] | None:
    """xmltodict postprocessor: local names only, xmlns declarations dropped, xsi:nil elements as None."""
    if key == "@xmlns":  # xmltodict's record of the element's namespace declarations
        return None
    if key.startswith(_XINCLUDE):  # never processed here; refused so that no later parser would fetch it
        raise MalformedBody("XML with XInclude is refused (the relay fetches nothing an XML body names)")
    if key == _XSI_NIL:
        return key, value  # kept whole until its element ends, below
    if isinstance(value, dict) and _XSI_NIL in value:
        nil = value.pop(_XSI_NIL)
        empty = all(name.startswith("@") for name in value)
        value = None if empty and nil.strip() in ("true", "1") else {"@nil": nil, **value}
    if key.startswith("@"):
        return "@" + key[1:].rpartition(_NS)[2], value
    return key.rpartition(_NS)[2], value


def _xml(body: bytes, charset: str | None) -> Any:
    # Without a charset parameter expat reads the XML declaration (or BOM); with one, the header wins.
    source: bytes | str = body if charset is None else _decode(body, charset).removeprefix("\ufeff")
    try:
        return xmltodict.parse(
            source, expat=_EXPAT, process_namespaces=True, namespace_separator=_NS, postprocessor=_xml_item
        )
    except expat.ExpatError as exc:
        raise MalformedBody(f"body is not valid XML: {exc}") from None
    except LookupError as exc:
        raise UnsupportedMediaType(f"XML encoding is not supported: {exc}") from None
    except ValueError as exc:  # a multi-byte encoding declared, entities
        raise MalformedBody(f"body is not valid XML: {exc}") from None


def _require_text(text: str) -> None:
    if not text.isascii():
        try:
            text.encode()
        except UnicodeEncodeError:
            raise MalformedBody(
                "body holds an unpaired surrogate (\\ud800-\\udfff), which is no character"
            ) from None


def _check_document(document: Any) -> None:
    """Refuse nesting deeper than MAX_DEPTH, and text no store can hold: lone surrogates, which JSON
    escapes and codecs such as unicode_escape (percent-decoded form fields too) make."""
    stack = [(document, 1)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, str):
            _require_text(value)
        elif isinstance(value, dict | list):
            if depth > MAX_DEPTH:
                raise MalformedBody(f"body is nested deeper than {MAX_DEPTH} levels")
            if isinstance(value, dict):
                for key in value:
                    _require_text(key)
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
        document = _json(_decode(body, charset), "body")
    elif media_type in XML_TYPES or media_type.endswith("+xml"):
        document = _xml(body, charset)
    elif media_type == FORM_TYPE:
        document = _form_document(_form(body, charset), json_fields, form_document_field)
    elif media_type == MULTIPART_TYPE:
        fields = _multipart(body, _param(header, "boundary"), charset)
        document = _form_document(fields, json_fields, form_document_field)
    else:
        raise UnsupportedMediaType(f"Content-Type {media_type!r} is not supported; send {SUPPORTED}")
    _check_document(document)
    return document
