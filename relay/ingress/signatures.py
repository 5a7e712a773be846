"""The checks behind each verification scheme, on the raw bytes of a request.

Every check raises VerificationFailed with a reason that says what is wrong and never shows a secret, an
expected signature or a computed digest. Signatures are compared as bytes with ``hmac.compare_digest``;
``keys`` are the scheme's secrets (any one may match, for rotation).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from ipaddress import IPv4Network, IPv6Address, IPv6Network, ip_address
from typing import Literal
from urllib.parse import SplitResult, parse_qs, parse_qsl, urlsplit, urlunsplit

from relay.errors import VerificationFailed
from relay.mapping.schemes import DEFAULT_TOLERANCE_S, HookRequest, StaticToken

Keys = Sequence[bytes]
Encoding = Literal["hex", "base64"]

NO_MATCH = "no signature matches any configured secret"
_HEX = re.compile(r"[0-9a-fA-F]+")
_UNIX_TIME = re.compile(r"[0-9]{1,16}")
_PLACEHOLDER = re.compile(r"\{(body|timestamp|method|url)\}")


@dataclass(frozen=True)
class Hmac:
    """Where an HMAC signature is and what it covers: the ``hmac`` scheme, and vendors that fit it."""

    header: str
    algorithm: str = "sha256"
    encoding: Encoding = "hex"
    prefix: str = ""
    signed: str = "{body}"
    timestamp_header: str | None = None
    timestamp_unit: Literal["s", "ms"] = "s"
    tolerance_s: int = DEFAULT_TOLERANCE_S
    hubspot_decoded_url: bool = False


# HubSpot's docs say these escapes in the URI are decoded before v3 signing, while hubspot-api-client signs
# the URI as given; both forms are accepted (each still needs the secret).
_HUBSPOT_ESCAPES = re.compile(r"%(3A|2F|3F|40|21|24|27|28|29|2A|2C|3B)", re.IGNORECASE)


def hubspot_decoded(url: str) -> str:
    """The URL with the escapes HubSpot decodes before signing v3 decoded."""
    return _HUBSPOT_ESCAPES.sub(lambda match: bytes.fromhex(match.group(1)).decode(), url)


HMAC_VENDORS = {
    "github": Hmac("X-Hub-Signature-256", prefix="sha256="),
    "shopify": Hmac("X-Shopify-Hmac-Sha256", encoding="base64"),
    "typeform": Hmac("Typeform-Signature", encoding="base64", prefix="sha256="),
    "tally": Hmac("Tally-Signature", encoding="base64"),
    "hubspot-v3": Hmac(
        "X-HubSpot-Signature-v3",
        encoding="base64",
        signed="{method}{url}{body}{timestamp}",
        timestamp_header="X-HubSpot-Request-Timestamp",
        timestamp_unit="ms",
        hubspot_decoded_url=True,
    ),
}


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


def _digests(keys: Keys, message: bytes, algorithm: str) -> Iterable[bytes]:
    return (hmac.new(key, message, algorithm).digest() for key in keys)


def _render(template: str, request: HookRequest, timestamp: str) -> bytes:
    # One pass, so that a placeholder inside the URL or the body is never substituted again.
    values = {
        "body": request.body,
        "timestamp": sent(timestamp),
        "method": sent(request.method),
        "url": sent(request.url),
    }
    parts = _PLACEHOLDER.split(template)  # literal, name, literal, name, ..., literal
    return b"".join(values[part] if index % 2 else part.encode() for index, part in enumerate(parts))


def check_hmac(spec: Hmac, keys: Keys, request: HookRequest, now_s: float) -> None:
    """An HMAC of a template of the request, in one header (GitHub, Shopify, Typeform, Tally, ...)."""
    value = header(request, spec.header)
    size = hashlib.new(spec.algorithm).digest_size
    given = decode(value[len(spec.prefix) :], spec.encoding, size) if value.startswith(spec.prefix) else None
    if given is None:
        raise malformed(spec.header, f"{spec.prefix}<{spec.encoding}>")
    timestamp = ""
    if spec.timestamp_header is not None:
        timestamp = header(request, spec.timestamp_header)
        if not _UNIX_TIME.fullmatch(timestamp):
            raise malformed(spec.timestamp_header, f"a unix time in {spec.timestamp_unit}")
        seconds = int(timestamp) / (1000 if spec.timestamp_unit == "ms" else 1)
        require_fresh(timestamp, seconds, now_s, spec.tolerance_s)
    urls = {request.url, hubspot_decoded(request.url) if spec.hubspot_decoded_url else request.url}
    messages = [_render(spec.signed, replace(request, url=url), timestamp) for url in urls]
    require_match(
        (digest for message in messages for digest in _digests(keys, message, spec.algorithm)), [given]
    )


def _present(request: HookRequest, svix: bool, part: str) -> str:
    """``svix-*`` headers for Svix, or the ``webhook-*`` ones when it sends none."""
    name = f"svix-{part}" if svix else f"webhook-{part}"
    if svix and name not in request.headers and f"webhook-{part}" in request.headers:
        name = f"webhook-{part}"
    return name


def _standard_signatures(name: str, value: str) -> list[bytes]:
    signatures = []
    for entry in value.split():
        version, _, encoded = entry.partition(",")
        if version != "v1":
            continue  # v1a (asymmetric) and later versions are not ours
        signature = decode(encoded, "base64", 32)
        if signature is None:
            raise malformed(name, "space-separated v1,<base64>")
        signatures.append(signature)
    if not signatures:
        raise malformed(name, "space-separated v1,<base64>")
    return signatures


def check_standard_webhooks(
    svix: bool, tolerance_s: int, keys: Keys, request: HookRequest, now_s: float
) -> None:
    """Standard Webhooks (and Svix): HMAC-SHA256 of ``{id}.{timestamp}.{body}``."""
    names = [_present(request, svix, part) for part in ("id", "timestamp", "signature")]
    msg_id, timestamp, value = (header(request, name) for name in names)
    if not _UNIX_TIME.fullmatch(timestamp):
        raise malformed(names[1], "a unix time in seconds")
    signatures = _standard_signatures(names[2], value)
    require_fresh(timestamp, int(timestamp), now_s, tolerance_s)
    message = sent(f"{msg_id}.{timestamp}.") + request.body
    require_match(_digests(keys, message, "sha256"), signatures)


def check_stamped(name: str, tolerance_s: int, keys: Keys, request: HookRequest, now_s: float) -> None:
    """Stripe and Calendly: ``t=<unix>,v1=<hex>[,v1=...]``, HMAC-SHA256 of ``{t}.{body}``."""
    fields = [item.strip().partition("=") for item in header(request, name).split(",")]
    stamps = [value for key, _, value in fields if key == "t"]
    stamp = stamps[0] if len(stamps) == 1 else ""
    decoded = [decode(value, "hex", 32) for key, _, value in fields if key == "v1"]
    signatures = [signature for signature in decoded if signature is not None]
    if not _UNIX_TIME.fullmatch(stamp) or not signatures or len(signatures) < len(decoded):
        raise malformed(name, "t=<unix time>,v1=<hex>")
    require_fresh(stamp, int(stamp), now_s, tolerance_s)
    message = f"{stamp}.".encode() + request.body
    require_match(_digests(keys, message, "sha256"), signatures)


def check_hubspot(version: Literal["v1", "v2"], keys: Keys, request: HookRequest) -> None:
    """HubSpot v1 and v2: plain SHA-256 (not an HMAC) of the secret, [method and URI,] and body."""
    stated = request.headers.get("X-HubSpot-Signature-Version")
    if stated is not None and stated.strip() != version:
        raise VerificationFailed(f"header X-HubSpot-Signature-Version is not {version}")
    given = decode(header(request, "X-HubSpot-Signature"), "hex", 32)
    if given is None:
        raise malformed("X-HubSpot-Signature", "<hex>")
    middle = sent(f"{request.method}{request.url}") if version == "v2" else b""
    require_match((hashlib.sha256(key + middle + request.body).digest() for key in keys), [given])


def _twilio_urls(url: str) -> set[str]:
    """The URL with and without an explicit port: Twilio signs either (as twilio-python accepts)."""
    parts = split_url(url)
    try:
        port = parts.port
    except ValueError:
        return {url}
    host = parts.netloc.rpartition(":")[0] if port is not None else parts.netloc
    with_port = f"{host}:{port or (443 if parts.scheme == 'https' else 80)}"
    return {url, urlunsplit(parts._replace(netloc=host)), urlunsplit(parts._replace(netloc=with_port))}


def _twilio_params(request: HookRequest) -> bytes:
    """What Twilio appends to the URL: sorted form fields, or nothing when the URL carries bodySHA256."""
    media_type = request.headers.get("Content-Type", "").partition(";")[0].strip().lower()
    if media_type == "application/x-www-form-urlencoded":
        try:
            pairs = parse_qsl(request.body.decode(), keep_blank_values=True, errors="strict")
        except UnicodeDecodeError:
            raise VerificationFailed("form body is not UTF-8") from None
        return "".join(name + value for name, value in sorted(set(pairs))).encode()
    body_hash = parse_qs(split_url(request.url).query).get("bodySHA256")
    if body_hash is None:
        if request.body:
            raise VerificationFailed("the body is not a form and the URL has no bodySHA256 parameter")
        return b""
    if not hmac.compare_digest(hashlib.sha256(request.body).hexdigest().encode(), body_hash[0].encode()):
        raise VerificationFailed("bodySHA256 in the URL does not match the body")
    return b""


def check_twilio(keys: Keys, request: HookRequest) -> None:
    """Twilio: HMAC-SHA1 of the URL and the sorted POST parameters, base64."""
    given = decode(header(request, "X-Twilio-Signature"), "base64", 20)
    if given is None:
        raise malformed("X-Twilio-Signature", "<base64>")
    params = _twilio_params(request)
    messages = [sent(url) + params for url in _twilio_urls(request.url)]
    require_match((digest for message in messages for digest in _digests(keys, message, "sha1")), [given])


def _equal_any(keys: Keys, given: bytes) -> bool:
    # Hashing first keeps the comparison from revealing a secret's length.
    mine = hashlib.sha256(given).digest()
    return any(hmac.compare_digest(hashlib.sha256(key).digest(), mine) for key in keys)


def check_basic(keys: Keys, request: HookRequest) -> None:
    """HTTP Basic credentials; each key is ``user:password``."""
    kind, _, encoded = header(request, "Authorization").partition(" ")
    credentials = decode(encoded.strip(), "base64")
    if kind.lower() != "basic" or credentials is None or b":" not in credentials:
        raise malformed("Authorization", "Basic <base64 of user:password>")
    if not _equal_any(keys, credentials):
        raise VerificationFailed("credentials match no configured user:password")


def _query_parameter(url: str, name: str) -> str:
    values = parse_qs(split_url(url).query, keep_blank_values=True).get(name)
    if values is None:
        raise VerificationFailed(f"missing query parameter {name}")
    if len(values) > 1:
        raise VerificationFailed(f"query parameter {name} is given more than once")
    if not values[0]:
        raise VerificationFailed(f"empty query parameter {name}")
    return values[0]


def check_token(scheme: StaticToken, keys: Keys, request: HookRequest) -> None:
    """A shared token in a header or a query parameter."""
    if scheme.header is not None:
        token = header(request, scheme.header)
    else:
        assert scheme.query is not None  # the model requires exactly one of the two
        token = _query_parameter(request.url, scheme.query)
    if not _equal_any(keys, sent(token)):
        raise VerificationFailed("token matches no configured secret")


def check_ip(networks: Sequence[IPv4Network | IPv6Network], client_ip: str | None) -> None:
    """The client address is in one of the networks."""
    if client_ip is None:
        raise VerificationFailed("client address is unknown")
    try:
        address = ip_address(client_ip)
    except ValueError:
        raise VerificationFailed(f"client address {client_ip[:64]!r} is not an IP address") from None
    if isinstance(address, IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped  # a dual-stack socket reports IPv4 clients as ::ffff:a.b.c.d
    if not any(address in network for network in networks):
        raise VerificationFailed(f"client address {client_ip} is not in the allow-list")
