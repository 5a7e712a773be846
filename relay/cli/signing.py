"""Sign a request as its sender would, with the scheme a source names: what ``relay send`` posts.

The inverse of ``relay.ingress.checks``, built on the same pieces (an ``hmac`` scheme's template, Twilio's
parameters, the keys ``build_verifiers`` resolves), so that what is signed here is what the ingress checks.
An ``ip-allow`` scheme adds nothing: only the network a request comes from can pass it.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import uuid
from dataclasses import replace
from urllib.parse import urlencode

from multidict import CIMultiDict

from relay.ingress.checks.hmac_header import signed_text
from relay.ingress.checks.request import HookRequest, sent
from relay.ingress.checks.vendors import twilio_params
from relay.ingress.verify import SourceVerifier, hmac_spec
from relay.mapping.sources import (
    BasicAuth,
    HmacSignature,
    StaticToken,
    VendorSignature,
    Verification,
)


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


def _hmac_headers(
    scheme: VendorSignature | HmacSignature, key: bytes, request: HookRequest, now_s: float
) -> dict[str, str]:
    spec = hmac_spec(scheme)
    timestamp = ""
    headers: dict[str, str] = {}
    if spec.timestamp_header is not None:
        timestamp = str(int(now_s * 1000) if spec.timestamp_unit == "ms" else int(now_s))
        headers[spec.timestamp_header] = timestamp
    digest = hmac.new(key, signed_text(spec.signed, request, timestamp), spec.algorithm).digest()
    headers[spec.header] = spec.prefix + (digest.hex() if spec.encoding == "hex" else _b64(digest))
    return headers


def _vendor_headers(
    scheme: VendorSignature, key: bytes, request: HookRequest, now_s: float
) -> dict[str, str]:
    name, stamp = scheme.scheme, str(int(now_s))
    if name in ("standard-webhooks", "svix"):
        prefix, msg_id = name.replace("standard-webhooks", "webhook"), f"msg_{uuid.uuid4().hex}"
        digest = hmac.new(key, sent(f"{msg_id}.{stamp}.") + request.body, "sha256").digest()
        return {
            f"{prefix}-id": msg_id,
            f"{prefix}-timestamp": stamp,
            f"{prefix}-signature": f"v1,{_b64(digest)}",
        }
    if name in ("stripe", "calendly"):
        header = "Stripe-Signature" if name == "stripe" else "Calendly-Webhook-Signature"
        signature = hmac.new(key, f"{stamp}.".encode() + request.body, "sha256").hexdigest()
        return {header: f"t={stamp},v1={signature}"}
    if name in ("hubspot-v1", "hubspot-v2"):
        middle = sent(f"{request.method}{request.url}") if name == "hubspot-v2" else b""
        signature = hashlib.sha256(key + middle + request.body).hexdigest()
        return {"X-HubSpot-Signature": signature, "X-HubSpot-Signature-Version": name[-2:]}
    if name == "twilio":
        digest = hmac.new(key, sent(request.url) + twilio_params(request), "sha1").digest()
        return {"X-Twilio-Signature": _b64(digest)}
    return _hmac_headers(scheme, key, request, now_s)


def _signed_once(scheme: Verification, key: bytes, request: HookRequest, now_s: float) -> HookRequest:
    headers: dict[str, str] = {}
    if isinstance(scheme, VendorSignature):
        headers = _vendor_headers(scheme, key, request, now_s)
    elif isinstance(scheme, HmacSignature):
        headers = _hmac_headers(scheme, key, request, now_s)
    elif isinstance(scheme, BasicAuth):
        headers = {"Authorization": f"Basic {_b64(key)}"}
    elif isinstance(scheme, StaticToken) and scheme.header is not None:
        headers = {scheme.header: key.decode()}
    elif isinstance(scheme, StaticToken) and scheme.query is not None:
        separator = "&" if "?" in request.url else "?"
        return replace(request, url=request.url + separator + urlencode({scheme.query: key.decode()}))
    merged = CIMultiDict(request.headers)
    merged.update(headers)
    return replace(request, headers=merged)


def sign_request(verifier: SourceVerifier, request: HookRequest, now_s: float) -> HookRequest:
    """The request with what each of the source's schemes needs (headers, or a token in the query of
    ``url``), signed with each scheme's first secret, in the config's order."""
    for scheme, keys in zip(verifier.schemes, verifier.keys, strict=True):
        if keys:  # none for ip-allow
            request = _signed_once(scheme, keys[0], request, now_s)
    return request
