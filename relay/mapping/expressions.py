"""Where a value is in an event: JMESPath expressions and locators (a path into the body, or a header).

The one home of JMESPath in the relay: an expression is compiled once (cached), checked when the config
loads (``check_expression``, for the schema's validators) and evaluated without ever raising on a
sender's document (``search``), with the relay's functions (``e164``) beside JMESPath's. ``config``,
``routes`` and ``split`` all go through it.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import lru_cache
from typing import Annotated, Any

import jmespath
from jmespath import functions
from jmespath.exceptions import JMESPathError
from jmespath.parser import ParsedResult
from pydantic import BaseModel, ConfigDict, Field, model_validator

from relay.errors import MalformedHeader, PhoneNumberInvalid
from relay.mapping.phones import region_of, to_e164

Expression = Annotated[str, Field(min_length=1)]


@lru_cache(maxsize=4096)
def compile_expression(expression: str) -> ParsedResult:
    """Compile a JMESPath expression once; raises JMESPathError when it does not parse."""
    return jmespath.compile(expression)


def check_expression(expression: str) -> str:
    """The expression, when it compiles; else ValueError saying why (a pydantic validator's error)."""
    try:
        compile_expression(expression)
    except JMESPathError as exc:
        raise ValueError(f"invalid JMESPath expression {expression!r}: {exc}") from None
    except RecursionError:  # JMESPath's parser recurses once per nesting level
        raise ValueError(f"JMESPath expression {expression[:40]!r}... is nested too deeply") from None
    return expression


class RelayFunctions(functions.Functions):
    """JMESPath's functions and the relay's own."""

    @functions.signature({"types": ["string", "number", "null"]}, {"types": ["string", "null"]})
    def _func_e164(self, number: Any, region: str | None) -> str | None:
        """``e164(number, region)``: the number in E.164, read in the region (a code such as 'US' or
        one the event holds) when it has no country code; null when it is not a valid number."""
        try:
            return to_e164(number, region_of(region))
        except PhoneNumberInvalid:
            return None


_OPTIONS = jmespath.Options(custom_functions=RelayFunctions())


def search(expression: str, document: Any) -> Any:
    """Evaluate a (validated) JMESPath expression; an evaluation error counts as no value."""
    try:
        return compile_expression(expression).search(document, options=_OPTIONS)
    except JMESPathError:
        return None
    # On some documents JMESPath's functions raise plain Python errors: floor() of an infinity
    # (OverflowError), a zero slice step (ValueError), merge() of a number (TypeError), a long pipe
    # (RecursionError). The sender's document must not turn them into a 500.
    except (ArithmeticError, TypeError, ValueError, RecursionError):
        return None


def is_missing(value: Any) -> bool:
    """Whether a found value counts as none: null, or the empty string."""
    return value is None or value == ""


class Locator(BaseModel):
    """Where a value is found in a request: a JMESPath ``path`` into the body, or a ``header``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    path: Expression | None = None
    header: str | None = Field(default=None, min_length=1)

    @model_validator(mode="after")
    def _exactly_one(self) -> Locator:
        if (self.path is None) == (self.header is None):
            raise ValueError("give exactly one of `path` (JMESPath into the body) or `header`")
        if self.path is not None:
            check_expression(self.path)
        return self


def _header(headers: Mapping[str, str], name: str) -> str | None:
    value = headers.get(name)
    if value is not None and not value.isascii():
        try:  # aiohttp decodes bytes that are not UTF-8 to lone surrogates, which nothing can store
            value.encode()
        except UnicodeEncodeError:
            raise MalformedHeader(f"header {name} is not valid UTF-8") from None
    return value


def locate(locator: Locator | None, document: Any, headers: Mapping[str, str]) -> str | None:
    """The value a locator points at, as text, or None when absent; MalformedHeader when not UTF-8."""
    if locator is None:
        return None
    value = (
        _header(headers, locator.header)
        if locator.header is not None
        else search(str(locator.path), document)
    )
    if is_missing(value) or not isinstance(value, str | int | float):  # objects, lists, `&a`
        return None
    return str(value)
