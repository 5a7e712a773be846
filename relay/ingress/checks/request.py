"""A request as the checks see it, and the steps every check shares.

``HookRequest`` is the raw bytes of a request, before anything is parsed; the helpers read a header that
must be there, decode a signature, compare signatures in constant time and refuse a stale timestamp, each
failure a VerificationFailed whose reason shows no secret and no expected signature.
"""

from __future__ import annotations

import base64
import hmac
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal
from urllib.parse import SplitResult, urlsplit

from relay.errors import VerificationFailed

Keys = Sequence[bytes]
Encoding = Literal["hex", "base64"]

NO_MATCH = "no signature matches any configured secret"
UNIX_TIME = re.compile(r"[0-9]{1,16}")
_HEX = re.compile(r"[0-9a-fA-F]+")


@dataclass(frozen=True)
class HookRequest:
    """What verification sees of a request: the raw bytes, before anything is parsed.

    ``url`` is the public URL the sender addressed (behind a load balancer, not the one the relay saw);
    ``headers`` look names up case-insensitively.
    """

    method: str
    url: str
    headers: Mapping[str, str]
    body: bytes = field(repr=False)
    client_ip: str | None


def sent(text: str) -> bytes:
    """Header or URL text as the bytes the sender sent: aiohttp decodes them as UTF-8 with surrogateescape,
    so that bytes which are not UTF-8 come back as they were instead of failing to encode."""
    return text.encode("utf-8", "surrogateescape")


def split_url(url: str) -> SplitResult:
    """The parts of the request URL; a Host header such as ``[`` makes it unparseable: refused."""
    try:
        return urlsplit(url)
    except ValueError:  # the message would show the URL, whose query may hold a token
        raise VerificationFailed("the request URL does not parse (a malformed Host header?)") from None


def header(request: HookRequest, name: str) -> str:
    """The value of a header, which must be present and not blank."""
    value = request.headers.get(name)
    if value is None:
        raise VerificationFailed(f"missing header {name}")
    if not value.strip():
        raise VerificationFailed(f"empty header {name}")
    return value.strip()


def malformed(name: str, expected: str) -> VerificationFailed:
    """The refusal of a header that is there but not in the shape its scheme expects."""
    return VerificationFailed(f"malformed header {name}: expected {expected}")


def decode(value: str, encoding: Encoding, size: int | None = None) -> bytes | None:
    """Hex or base64 text as bytes (of ``size`` bytes when given); None when it is not that."""
    try:
        if encoding == "hex":
            raw = bytes.fromhex(value) if _HEX.fullmatch(value) else None
        else:
            raw = base64.b64decode(value, validate=True)
    except ValueError:
        return None
    return raw if raw is not None and (size is None or len(raw) == size) else None


def require_match(computed: Iterable[bytes], given: Sequence[bytes]) -> None:
    """Pass when any computed signature equals any given one."""
    if not any(hmac.compare_digest(mine, theirs) for mine in computed for theirs in given):
        raise VerificationFailed(NO_MATCH)


def require_fresh(raw: str, seconds: float, now_s: float, tolerance_s: int) -> None:
    """Refuse a timestamp too far in the past (a replay) or in the future."""
    if abs(now_s - seconds) > tolerance_s:
        raise VerificationFailed(f"timestamp {raw} is outside the tolerance of {tolerance_s} s")


def digests(keys: Keys, message: bytes, algorithm: str) -> Iterable[bytes]:
    """The HMAC of ``message`` under each key."""
    return (hmac.new(key, message, algorithm).digest() for key in keys)
