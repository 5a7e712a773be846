"""Logging: one JSON object per line (readable lines for ``relay dev``), with the request's or job's context.

``bind(request_id=..., job_id=...)`` sets context fields for every line logged inside the block, in this
task or thread (contextvars). On every line, whichever library logged it: every secret the process knows
is replaced by ``***`` (always), and phone numbers and e-mail addresses are masked unless
``RELAY_LOG_MASK_PII=false``.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import logging
import os
import re
import sys
import threading
import time
from collections.abc import Iterable, Iterator, Mapping
from contextvars import ContextVar
from datetime import UTC, datetime
from types import MappingProxyType
from typing import IO, Any
from urllib.parse import unquote, urlsplit

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger
from aiohttp.web import BaseRequest, StreamResponse
from pydantic import SecretStr
from pythonjsonlogger.core import RESERVED_ATTRS, merge_record_extra
from pythonjsonlogger.orjson import OrjsonFormatter

from relay.settings import Settings

REQUEST_ID_HEADER = "X-Request-Id"
# Set on a response whose request the handler's own lines describe (each event's outcome, or the refusal):
# it gets no access line as well, which would say less at the cost of another line per webhook.
DESCRIBED = web.ResponseKey("relay_described", bool)
REDACTED = "***"
MIN_SECRET_CHARS = 4  # shorter values cannot be told from ordinary text; redacting them garbles every line
# RQ attaches a failed job's arguments (the PHLO payload) to its exception line: payloads stay out of logs.
_DROPPED_EXTRAS = frozenset({"arguments", "kwargs"})
_ANSI = re.compile(r"\x1b\[[0-9;]*m")  # RQ colours queue names and job descriptions on a terminal
# +14155550123, +1 415-555-0123, +44 (20) 7946 0958: a plus, then 7 to 15 digits with single separators.
_INTERNATIONAL = re.compile(r"(?<![\w+])\+(?:\d[ .()-]{0,2}){6,14}\d(?!\d)")
# (415) 555-0123, 415-555-0123, 020 7946 0958, 555-0123, 415.555.0123: never a bare run of digits (epoch
# times, pids, counts) and never a part of a longer token (evt_<hex>, uuids, IP addresses, dates, versions).
_NATIONAL = re.compile(
    r"(?<![\w.+:/-])"
    r"(?:(?:\(\d{2,5}\)[ .-]?|\d{2,5}[ -])\d{3,8}(?:[ .-]\d{3,5})?|\d{2,5}\.\d{3,5}\.\d{3,5})"
    r"(?![\w]|[.:/-]\d)"
)
# What every phone number and e-mail address above has: checked first, it spares most values the patterns.
_MAYBE_PII = re.compile(r"@|\+\d|\(\d|\d\d[ .-]")
_EMAIL = re.compile(r"(?<![\w.+-])([\w.+-])[\w.+-]*@((?:[\w-]+\.)+[A-Za-z]{2,})(?![\w-])")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_OWN_FIELDS = frozenset({"time", "level", "logger"})  # made here, never from a sender's data
_REQUEST_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:=-]{0,127}$")

_context: ContextVar[Mapping[str, str]] = ContextVar("relay_log_context", default=MappingProxyType({}))
_secrets: set[str] = set()
_secrets_lock = threading.Lock()
_secret_pattern: re.Pattern[str] | None = None
_handler: logging.Handler | None = None


@contextlib.contextmanager
def bind(**fields: str | None) -> Iterator[None]:
    """Add context fields (None: left out) to every line logged inside the block, in this task or thread."""
    token = _context.set({**_context.get(), **{key: value for key, value in fields.items() if value}})
    try:
        yield
    finally:
        _context.reset(token)


def bound(field: str) -> str | None:
    """A context field bound (``bind``) in this task or thread, or None."""
    return _context.get().get(field)


def request_id_from(header: str | None) -> str:
    """A request's id: the ``X-Request-Id`` it came with when that is a sane short token, else a new one."""
    if header is not None and _REQUEST_ID.match(header):
        return header
    return os.urandom(16).hex()  # as random as uuid4().hex, at a quarter of the cost


def register_secrets(values: Iterable[str | SecretStr | None]) -> None:
    """Secret values to replace by ``***`` wherever they would appear in a log line."""
    global _secret_pattern
    with _secrets_lock:
        for value in values:
            text = value.get_secret_value() if isinstance(value, SecretStr) else value
            if text and len(text) >= MIN_SECRET_CHARS:
                # As it is, and as JSON escapes it (a value that ends up inside a serialized object).
                _secrets.update({text, json.dumps(text)[1:-1]})
        ordered = sorted(_secrets, key=len, reverse=True)  # a longer secret containing a shorter one first
        _secret_pattern = re.compile("|".join(map(re.escape, ordered))) if ordered else None


def settings_secrets(settings: Settings) -> list[str | SecretStr]:
    """Every secret in the settings: Plivo tokens, the admin token, the Sentinel and Redis passwords."""
    values: list[str | SecretStr] = [
        value
        for name in type(settings).model_fields
        if isinstance(value := getattr(settings, name), SecretStr)
    ]
    values += [account.auth_token for account in settings.accounts.values()]
    password = urlsplit(settings.redis_url).password
    if password:
        values += [password, unquote(password)]
    return values


def redact(text: str) -> str:
    """``text`` with every registered secret replaced by ``***``."""
    pattern = _secret_pattern
    return pattern.sub(REDACTED, text) if pattern is not None else text


def _mask_digits(match: re.Match[str]) -> str:
    text = match.group(0)
    digits = sum(char.isdigit() for char in text)
    if not 7 <= digits <= 15:
        return text
    head = min(4 if text.startswith("+") else 3, digits - 6)  # at least 4 digits are always hidden
    counts = itertools.accumulate(char.isdigit() for char in text)  # the digits up to each character
    hidden = (char.isdigit() and head < count <= digits - 2 for char, count in zip(text, counts, strict=True))
    return "".join("*" if hide else char for char, hide in zip(text, hidden, strict=True))


def mask_pii(text: str) -> str:
    """Phone numbers as ``+1415*****23`` and e-mail addresses as ``a***@example.com``."""
    text = _EMAIL.sub(r"\1***@\2", text)
    return _NATIONAL.sub(_mask_digits, _INTERNATIONAL.sub(_mask_digits, text))


class _Scrubber:
    """Cleans every value of a line: no terminal colours, no secrets, and (when masking) no PII."""

    def __init__(self, mask_pii: bool) -> None:
        self.mask_pii = mask_pii

    def text(self, value: str) -> str:
        if "\x1b" in value:
            value = _ANSI.sub("", value)
        value = redact(value)
        return mask_pii(value) if self.mask_pii and _MAYBE_PII.search(value) else value

    def value(self, value: Any) -> Any:
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, int) and not -(2**63) <= value < 2**64:
            return str(value)  # orjson writes 64-bit integers only
        if value is None or isinstance(value, bool | int | float):
            return value
        if isinstance(value, Mapping):
            return {str(key): self.value(item) for key, item in value.items()}
        if isinstance(value, list | tuple | set | frozenset):
            return [self.value(item) for item in value]
        return self.text(str(value))


class ContextFilter(logging.Filter):
    """Adds the bound context fields to each record (an explicit ``extra=`` field wins)."""

    def filter(self, record: logging.LogRecord) -> bool:
        for key, value in _context.get().items():
            if not hasattr(record, key):
                setattr(record, key, value)
        if record.name.startswith("rq."):
            for key in _DROPPED_EXTRAS & record.__dict__.keys():
                delattr(record, key)
        return True


class RelayJsonFormatter(OrjsonFormatter):
    """One JSON object per line: time (ISO-8601 UTC), level, logger, message, then the other fields."""

    def __init__(self, scrubber: _Scrubber) -> None:
        super().__init__(
            ["asctime", "levelname", "name", "message"],
            rename_fields={"asctime": "time", "levelname": "level", "name": "logger"},
            json_default=str,
        )
        self.scrubber = scrubber

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        moment = datetime.fromtimestamp(record.created, UTC)
        return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")

    def process_log_record(self, log_data: dict[str, Any]) -> dict[str, Any]:
        return {
            key: value if key in _OWN_FIELDS else self.scrubber.value(value)
            for key, value in log_data.items()
        }

    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record))  # fields serialized from other types, too


class RelayTextFormatter(logging.Formatter):
    """Readable lines for ``relay dev``: ``time level logger: message [key=value ...]``, then tracebacks."""

    def __init__(self, scrubber: _Scrubber) -> None:
        super().__init__()
        self.scrubber = scrubber

    def format(self, record: logging.LogRecord) -> str:
        clock = time.strftime("%H:%M:%S", time.localtime(record.created)) + f".{int(record.msecs):03d}"
        # Escaped: a sender's %0A in a path must not start a forged line (JSON lines escape it already).
        message = _CONTROL.sub(_escaped, self.scrubber.text(record.getMessage()))
        line = f"{clock} {record.levelname:<7} {record.name}: {message}"
        extras = merge_record_extra(record, {}, reserved=RESERVED_ATTRS)
        cleaned = {key: self.scrubber.value(value) for key, value in extras.items()}
        fields = [f"{key}={_text_value(item)}" for key, item in cleaned.items() if not _shown(item, message)]
        if fields:
            line += f"  [{' '.join(fields)}]"
        if record.exc_info:
            line += "\n" + self.scrubber.text(self.formatException(record.exc_info))
        if record.stack_info:
            line += "\n" + self.scrubber.text(self.formatStack(record.stack_info))
        return redact(line)


def _escaped(match: re.Match[str]) -> str:
    return repr(match.group())[1:-1]


def _shown(value: Any, message: str) -> bool:
    """An id the message already shows: for reading, not parsing, it is not repeated."""
    return isinstance(value, str) and len(value) >= 8 and value in message


def _text_value(value: Any) -> str:
    if isinstance(value, str) and value and not re.search(r"[\s\"'=\[\]]", value):
        return value
    return json.dumps(value)


class AccessLogger(AbstractAccessLogger):
    """aiohttp's access log as one line per request: method, path, status, duration and the request id."""

    def log(self, request: BaseRequest, response: StreamResponse, time: float) -> None:
        if response.get(DESCRIBED):
            return
        fields: dict[str, Any] = {
            "method": request.method,
            # As sent (percent-escapes keep line breaks out), never the query: a token scheme may put its
            # secret there (Jotform, Zoho and Salesforce can send one nowhere else).
            "path": request.raw_path.partition("?")[0],
            "status": response.status,
            "duration_ms": round(time * 1000, 1),
        }
        request_id = response.headers.get(REQUEST_ID_HEADER)
        if request_id:
            fields["request_id"] = request_id
        self.logger.info("%s %s %s", request.method, fields["path"], response.status, extra=fields)

    @property
    def enabled(self) -> bool:
        return self.logger.isEnabledFor(logging.INFO)


def build_handler(settings: Settings, stream: IO[str]) -> logging.Handler:
    """A handler writing lines in the settings' format to ``stream``: context, no secrets, masked PII."""
    scrubber = _Scrubber(settings.log_mask_pii)
    handler = logging.StreamHandler(stream)
    handler.addFilter(ContextFilter())
    formatter = RelayJsonFormatter if settings.log_format == "json" else RelayTextFormatter
    handler.setFormatter(formatter(scrubber))
    return handler


def configure_logging(settings: Settings, *, default_format: str | None = None) -> Settings:
    """Send every logger's lines through one stderr handler in the settings' format and level.

    ``default_format`` replaces the settings' format when ``RELAY_LOG_FORMAT`` was not set explicitly
    (``relay dev`` reads text). Returns the settings with the format used, for child processes.
    """
    global _handler
    if default_format is not None and "log_format" not in settings.model_fields_set:
        settings = settings.model_copy(update={"log_format": default_format})
    register_secrets(settings_secrets(settings))
    root = logging.getLogger()
    if _handler is not None:
        root.removeHandler(_handler)
    _handler = build_handler(settings, sys.stderr)
    # RQ adds its own (colouring, stdout) handlers only to loggers with none up the tree: it finds this one.
    root.addHandler(_handler)
    root.setLevel(settings.log_level)
    # httpx logs every runner request at INFO; the relay's own line per outcome says more.
    quiet = logging.DEBUG if settings.log_level == "DEBUG" else logging.WARNING
    for name in ("httpx", "httpcore"):
        logging.getLogger(name).setLevel(quiet)
    logging.captureWarnings(True)  # warnings become log lines too, not bare text on stderr
    return settings
