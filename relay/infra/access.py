"""Who may read what the relay keeps behind ``RELAY_ADMIN_TOKEN``: one check for the ingress and the worker.

The admin API, ``GET /events/{id}`` and ``/metrics`` (of the ingress, and of ``relay worker`` on
``RELAY_WORKER_METRICS_PORT``) take ``Authorization: Bearer <RELAY_ADMIN_TOKEN>``. Without the token they
do not exist (404), except ``/metrics`` with ``RELAY_METRICS_PUBLIC=true``, which opens it to whoever
reaches the port (for a private network). The web frameworks' wrappers are ``relay.ingress.guard``
(aiohttp) and ``relay.infra.metrics_http`` (the worker's WSGI server).
"""

from __future__ import annotations

import enum
import hashlib
import hmac
from dataclasses import dataclass

from pydantic import SecretStr

from relay.settings import Settings

REALM = 'Bearer realm="phlo-relay admin"'


class Access(enum.Enum):
    """How an endpoint answers: to anyone, to the admin bearer token only, or not at all (404)."""

    OPEN = "open"
    BEARER = "bearer"
    OFF = "off"


@dataclass(frozen=True)
class Refusal:
    """A 401: the error code and message of the JSON body, and the WWW-Authenticate challenge."""

    code: str
    message: str
    challenge: str
    wrong_token: bool
    status: int = 401


def _digest(token: str) -> bytes:
    # Comparing digests keeps the comparison constant-time whatever the length of what was sent. aiohttp
    # decodes a header byte that is not UTF-8 as a lone surrogate: hashed as the byte it was, not a 500.
    return hashlib.sha256(token.encode("utf-8", "surrogateescape")).digest()


class AdminToken:
    """The admin bearer token, kept only as its digest (so no repr or traceback can show it)."""

    def __init__(self, token: SecretStr | None) -> None:
        text = token.get_secret_value().strip() if token is not None else ""
        self._expected = _digest(text) if text else None

    @property
    def configured(self) -> bool:
        """False when RELAY_ADMIN_TOKEN is unset or blank: what it guards then answers 404."""
        return self._expected is not None

    def matches(self, given: str) -> bool:
        """Whether ``given`` (surrounding blanks aside) is the token, compared in constant time."""
        return (
            self._expected is not None
            and bool(given.strip())
            and hmac.compare_digest(_digest(given.strip()), self._expected)
        )

    def refusal(self, authorization: str, what: str) -> Refusal | None:
        """None when ``authorization`` (the header's value) carries the token, else the 401 to answer."""
        scheme, _, given = authorization.partition(" ")
        if self._expected is None or scheme.lower() != "bearer" or not given.strip():
            message = f"{what} needs the header Authorization: Bearer <RELAY_ADMIN_TOKEN>"
            return Refusal("unauthorized", message, REALM, False)
        if not self.matches(given):
            message = "the bearer token is not the admin token"
            return Refusal("unauthorized", message, f'{REALM}, error="invalid_token"', True)
        return None

    def __repr__(self) -> str:
        return f"AdminToken(configured={self.configured})"


def metrics_access(settings: Settings) -> Access:
    """``/metrics``: open with RELAY_METRICS_PUBLIC, else behind the admin token, else not served."""
    if settings.metrics_public:
        return Access.OPEN
    return Access.BEARER if AdminToken(settings.admin_token).configured else Access.OFF
