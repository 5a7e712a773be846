"""XML bodies (SOAP included) to a document: xmltodict's shape with namespace prefixes stripped,
attributes as ``@name``, ``xsi:nil`` elements as null; a DOCTYPE and XInclude are refused, so that no
entity expands and nothing an XML body names is ever fetched."""

from __future__ import annotations

import types
from typing import Any, NoReturn
from xml.parsers import expat

import xmltodict

from relay.errors import MalformedBody, UnsupportedMediaType
from relay.mapping.text import decode

_NS = "\x1f"  # between namespace and local name; cannot occur in XML 1.0 text
_XSI_NIL = f"@http://www.w3.org/2001/XMLSchema-instance{_NS}nil"
_XINCLUDE = f"http://www.w3.org/2001/XInclude{_NS}"


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


def parse_xml(body: bytes, charset: str | None) -> Any:
    """The document of an XML body; ``charset`` from its Content-Type, if any."""
    # Without a charset parameter expat reads the XML declaration (or BOM); with one, the header wins.
    source: bytes | str = body if charset is None else decode(body, charset).removeprefix("\ufeff")
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
