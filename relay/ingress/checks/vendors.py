"""Vendors with a signature format of their own: Standard Webhooks and Svix, Stripe and Calendly, HubSpot
v1 and v2, Twilio. (Vendors whose signature is an HMAC in one header are ``hmac_header.HMAC_VENDORS``.)"""

from __future__ import annotations

import hashlib
import hmac
from typing import Literal
from urllib.parse import parse_qs, parse_qsl, urlunsplit

from relay.errors import VerificationFailed
from relay.ingress.checks.request import (
    UNIX_TIME,
    HookRequest,
    Keys,
    decode,
    digests,
    header,
    malformed,
    require_fresh,
    require_match,
    sent,
    split_url,
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
    if not UNIX_TIME.fullmatch(timestamp):
        raise malformed(names[1], "a unix time in seconds")
    signatures = _standard_signatures(names[2], value)
    require_fresh(timestamp, int(timestamp), now_s, tolerance_s)
    message = sent(f"{msg_id}.{timestamp}.") + request.body
    require_match(digests(keys, message, "sha256"), signatures)


def check_stamped(name: str, tolerance_s: int, keys: Keys, request: HookRequest, now_s: float) -> None:
    """Stripe and Calendly: ``t=<unix>,v1=<hex>[,v1=...]``, HMAC-SHA256 of ``{t}.{body}``."""
    fields = [item.strip().partition("=") for item in header(request, name).split(",")]
    stamps = [value for key, _, value in fields if key == "t"]
    stamp = stamps[0] if len(stamps) == 1 else ""
    decoded = [decode(value, "hex", 32) for key, _, value in fields if key == "v1"]
    signatures = [signature for signature in decoded if signature is not None]
    if not UNIX_TIME.fullmatch(stamp) or not signatures or len(signatures) < len(decoded):
        raise malformed(name, "t=<unix time>,v1=<hex>")
    require_fresh(stamp, int(stamp), now_s, tolerance_s)
    message = f"{stamp}.".encode() + request.body
    require_match(digests(keys, message, "sha256"), signatures)


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


def twilio_params(request: HookRequest) -> bytes:
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
    params = twilio_params(request)
    messages = [sent(url) + params for url in _twilio_urls(request.url)]
    require_match((digest for message in messages for digest in digests(keys, message, "sha1")), [given])
