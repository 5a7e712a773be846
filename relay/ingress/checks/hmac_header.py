"""An HMAC of a template of the request, in one header: the ``hmac`` scheme, and the vendors whose
signatures fit that shape (GitHub, Shopify, Typeform, Tally, HubSpot v3)."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, replace
from typing import Literal

from relay.ingress.checks.request import (
    UNIX_TIME,
    Encoding,
    HookRequest,
    Keys,
    decode,
    digests,
    header,
    malformed,
    require_fresh,
    require_match,
    sent,
)
from relay.mapping.sources import DEFAULT_TOLERANCE_S

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


def signed_text(template: str, request: HookRequest, timestamp: str) -> bytes:
    """The bytes a template stands for in a request: what is signed."""
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
        if not UNIX_TIME.fullmatch(timestamp):
            raise malformed(spec.timestamp_header, f"a unix time in {spec.timestamp_unit}")
        seconds = int(timestamp) / (1000 if spec.timestamp_unit == "ms" else 1)
        require_fresh(timestamp, seconds, now_s, spec.tolerance_s)
    urls = {request.url, hubspot_decoded(request.url) if spec.hubspot_decoded_url else request.url}
    messages = [signed_text(spec.signed, replace(request, url=url), timestamp) for url in urls]
    require_match(
        (digest for message in messages for digest in digests(keys, message, spec.algorithm)), [given]
    )
