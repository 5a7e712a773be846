"""`relay send`'s signer signs as the vendors do: it reproduces their own test vectors, and whatever it signs
the ingress's checks accept."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest
from multidict import CIMultiDict

from relay.cli.signing import sign_request
from relay.errors import VerificationFailed
from relay.ingress.checks.request import HookRequest
from tests.ingress.test_sender_verification import BODY, NOW, URL, VECTORS, make_verifier

# Their signed headers hold a random message id, or several signatures: compared by verifying them.
RANDOM_OR_SEVERAL = {"standard-webhooks", "svix-among-other-signatures", "stripe"}


def unsigned(request: HookRequest) -> HookRequest:
    """The request before its sender signed it: only its Content-Type."""
    kept = {name: value for name, value in request.headers.items() if name.lower() == "content-type"}
    return replace(request, headers=CIMultiDict(kept))


@pytest.mark.parametrize(("scheme", "secret", "request_", "now_s"), VECTORS)
def test_the_signer_reproduces_the_vendors_test_vectors(
    scheme: dict[str, Any], secret: str, request_: HookRequest, now_s: int, request: pytest.FixtureRequest
) -> None:
    verifier = make_verifier(scheme, secret)
    signed = sign_request(verifier, unsigned(request_), now_s)
    verifier.verify(signed, now_s=now_s)
    if request.node.callspec.id not in RANDOM_OR_SEVERAL:
        assert {name: signed.headers.get(name) for name in request_.headers} == dict(request_.headers)


@pytest.mark.parametrize(
    "scheme",
    [
        {"scheme": "hmac", "header": "X-Signature", "algorithm": "sha512", "encoding": "base64"},
        {
            "scheme": "hmac",
            "header": "X-Relay-Signature",
            "signed": "{timestamp}.{method} {url} {body}",
            "timestamp_header": "X-Relay-Timestamp",
            "timestamp_unit": "ms",
        },
        {"scheme": "basic"},
        {"scheme": "token", "header": "X-Relay-Token"},
        {"scheme": "token", "query": "token"},
        {"scheme": "hubspot-v2"},
        {"scheme": "hubspot-v3"},
        {"scheme": "twilio"},
    ],
    ids=lambda scheme: "-".join(str(value) for value in scheme.values())[:40],
)
def test_what_the_signer_signs_the_ingress_accepts(scheme: dict[str, Any]) -> None:
    secret = "user:test_secret" if scheme["scheme"] == "basic" else "test_secret"
    verifier = make_verifier(scheme, secret)
    request = HookRequest("POST", URL, CIMultiDict({"Content-Type": "application/json"}), BODY, None)
    if scheme["scheme"] == "twilio":  # Twilio signs a form's fields
        form = {"Content-Type": "application/x-www-form-urlencoded"}
        request = replace(request, headers=CIMultiDict(form), body=b"To=%2B1415&Body=hi")
    signed = sign_request(verifier, request, NOW)
    verifier.verify(signed, now_s=NOW)
    assert signed.body == request.body
    with pytest.raises(VerificationFailed, match=r"match(es)? no configured|no signature matches"):
        make_verifier(scheme, secret + "x").verify(signed, now_s=NOW)
