"""Verification of senders: every scheme on requests signed by the vendors' own libraries where they exist.

Each signing scheme is a Case (how to sign, which headers it needs, what a malformed header looks like); the
same checks run over all of them. Basic, token and IP allow-lists, which sign nothing, have their own table.
"""

from __future__ import annotations

import base64
import contextlib
import hmac
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qsl, urlencode

import pytest
import stripe
from hubspot.utils.signature import Signature
from multidict import CIMultiDict, MultiDict
from standardwebhooks import Webhook as StandardWebhook
from svix.webhooks import Webhook as SvixWebhook
from twilio.request_validator import RequestValidator

from relay.errors import ConfigError, ConfigProblem, VerificationFailed
from relay.ingress.checks.request import HookRequest
from relay.ingress.verify import SourceVerifier, build_verifiers
from relay.mapping.sources import Source
from tests.conftest import watch_secrets

NOW = 1_700_000_000
URL = "https://relay.example.com/hooks/src?key=1"
BODY = b'{"event_id":"LtWXD3crgy","event_type":"form_response"}'
SECRETS = ("test_secret", "rotated_secret", "wrong_secret")
WHSEC = (
    "whsec_" + base64.b64encode(b"k" * 24).decode(),
    "whsec_" + base64.b64encode(b"r" * 24).decode(),
    "whsec_" + base64.b64encode(b"w" * 24).decode(),
)
NO_MATCH = "no signature matches any configured secret"
watch_secrets(*SECRETS[:2], *WHSEC[:2])  # the configured and rotated ones
FILE = "relay.yaml"

Signer = Callable[[str, bytes, int], HookRequest]


def make_request(
    headers: Mapping[str, str], body: bytes = BODY, url: str = URL, method: str = "POST"
) -> HookRequest:
    return HookRequest(method=method, url=url, headers=CIMultiDict(headers), body=body, client_ip="192.0.2.7")


def make_verifier(scheme: Mapping[str, Any], *secrets: str) -> SourceVerifier:
    """A verifier of one scheme whose secrets are environment variables S0, S1, ..."""
    environ = {f"S{index}": secret for index, secret in enumerate(secrets)}
    source = Source.model_validate(
        {"verify": [{**scheme, "secrets": list(environ)}] if secrets else [scheme]}
    )
    return build_verifiers({"src": source}, environ, FILE)["src"]


def refusal(verifier: SourceVerifier, request: HookRequest, now_s: float = NOW) -> str:
    """The reason ``verifier`` refuses ``request``."""
    with pytest.raises(VerificationFailed) as info:
        verifier.verify(request, now_s=now_s)
    return info.value.message


def mac(secret: str, message: bytes, algorithm: str = "sha256") -> bytes:
    return hmac.new(secret.encode(), message, algorithm).digest()


def b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


def utc(ts: int) -> datetime:
    return datetime.fromtimestamp(ts, tz=UTC)


# Signers: the vendor's library wherever there is one.


def sign_standard_webhooks(secret: str, body: bytes, ts: int) -> HookRequest:
    signature = StandardWebhook(secret).sign("msg_1", utc(ts), body.decode())
    return make_request(
        {"webhook-id": "msg_1", "webhook-timestamp": str(ts), "webhook-signature": signature}, body
    )


def svix_signer(prefix: str) -> Signer:
    def sign(secret: str, body: bytes, ts: int) -> HookRequest:
        signature = SvixWebhook(secret).sign("msg_1", utc(ts), body.decode())
        headers = {f"{prefix}-id": "msg_1", f"{prefix}-timestamp": str(ts), f"{prefix}-signature": signature}
        return make_request(headers, body)

    return sign


def sign_stripe(secret: str, body: bytes, ts: int) -> HookRequest:
    header = stripe.WebhookSignature.generate_signature_header(body.decode(), secret, timestamp=ts)
    return make_request({"Stripe-Signature": header}, body)


def sign_calendly(secret: str, body: bytes, ts: int) -> HookRequest:
    signature = mac(secret, f"{ts}.".encode() + body).hex()
    return make_request({"Calendly-Webhook-Signature": f"t={ts},v1={signature}"}, body)


def body_signer(header: str, encode: Callable[[bytes], str]) -> Signer:
    """GitHub, Shopify, Typeform, Tally: an HMAC-SHA256 of the body alone (no Python signer exists)."""

    def sign(secret: str, body: bytes, ts: int) -> HookRequest:
        return make_request({header: encode(mac(secret, body))}, body)

    return sign


def hubspot_signer(version: str) -> Signer:
    def sign(secret: str, body: bytes, ts: int) -> HookRequest:
        signature = Signature.get_signature(secret, body.decode(), version, http_uri=URL, http_method="POST")
        return make_request({"X-HubSpot-Signature": signature, "X-HubSpot-Signature-Version": version}, body)

    return sign


def sign_hubspot_v3(secret: str, body: bytes, ts: int) -> HookRequest:
    stamp = ts * 1000
    signature = Signature.get_signature(secret, body.decode(), "v3", URL, "POST", timestamp=stamp)
    return make_request(
        {"X-HubSpot-Signature-v3": signature, "X-HubSpot-Request-Timestamp": str(stamp)}, body
    )


def sign_twilio_form(secret: str, body: bytes, ts: int) -> HookRequest:
    params = MultiDict(parse_qsl(body.decode(), keep_blank_values=True))  # repeated names, as Flask's
    signature = RequestValidator(secret).compute_signature(URL, params)
    headers = {"X-Twilio-Signature": signature, "Content-Type": "application/x-www-form-urlencoded"}
    return make_request(headers, body)


def sign_twilio_json(secret: str, body: bytes, ts: int) -> HookRequest:
    validator = RequestValidator(secret)
    url = f"{URL}&bodySHA256={validator.compute_hash(body.decode())}"
    headers = {"X-Twilio-Signature": validator.compute_signature(url, {}), "Content-Type": "application/json"}
    return make_request(headers, body, url=url)


HMAC_TIMED = {
    "scheme": "hmac",
    "header": "X-Signature",
    "algorithm": "sha512",
    "encoding": "base64",
    "prefix": "v0=",
    "signed": "{timestamp}:{method}:{url}:{body}",
    "timestamp_header": "X-Timestamp",
    "timestamp_unit": "ms",
}


def sign_hmac_timed(secret: str, body: bytes, ts: int) -> HookRequest:
    stamp = str(ts * 1000)
    signature = mac(secret, f"{stamp}:POST:{URL}:".encode() + body, "sha512")
    return make_request({"X-Signature": "v0=" + b64(signature), "X-Timestamp": stamp}, body)


def sign_hmac_sha1(secret: str, body: bytes, ts: int) -> HookRequest:
    return make_request({"X-Sig": mac(secret, body, "sha1").hex()}, body)


sign_github = body_signer("X-Hub-Signature-256", lambda digest: "sha256=" + digest.hex())


@dataclass(frozen=True)
class Case:
    id: str
    scheme: dict[str, Any]
    sign: Signer
    headers: tuple[str, ...]  # the headers it requires
    malformed: tuple[tuple[str, str], ...]  # header, value
    secrets: tuple[str, str, str] = SECRETS  # configured, rotated, wrong
    body: bytes = BODY
    altered: str = NO_MATCH  # the reason when the body changed after signing
    timestamped: bool = False

    @property
    def tolerance_s(self) -> int:
        return int(self.scheme.get("tolerance_s", 300))


HEX64 = "ab" * 32
STAMPED = (f"t=soon,v1={HEX64}", "t=1700000000", f"v1={HEX64}", "t=1700000000,v1=xyz", f"{HEX64}")
STANDARD_BAD: tuple[tuple[str, str], ...] = (
    ("webhook-timestamp", "soon"),
    ("webhook-timestamp", "1.7e9"),
    ("webhook-signature", "v1"),
)
STANDARD_BAD += (("webhook-signature", "v1,not base64!"), ("webhook-signature", f"v1a,{b64(bytes(64))}"))
FORM = urlencode(
    [("To", "+14155550100"), ("Body", "hi & bye"), ("Media", "b"), ("Media", "a"), ("Empty", "")]
)

CASES = [
    Case(
        "standard-webhooks",
        {"scheme": "standard-webhooks"},
        sign_standard_webhooks,
        ("webhook-id", "webhook-timestamp", "webhook-signature"),
        STANDARD_BAD,
        secrets=WHSEC,
        timestamped=True,
    ),
    Case(
        "svix",
        {"scheme": "svix"},
        svix_signer("svix"),
        ("svix-id", "svix-timestamp", "svix-signature"),
        tuple((name.replace("webhook", "svix"), value) for name, value in STANDARD_BAD),
        secrets=WHSEC,
        timestamped=True,
    ),
    Case(
        "svix-webhook-headers",
        {"scheme": "svix", "tolerance_s": 60},
        svix_signer("webhook"),
        ("webhook-id", "webhook-timestamp", "webhook-signature"),
        STANDARD_BAD,
        secrets=WHSEC,
        timestamped=True,
    ),
    Case(
        "stripe",
        {"scheme": "stripe"},
        sign_stripe,
        ("Stripe-Signature",),
        tuple(("Stripe-Signature", value) for value in STAMPED),
        secrets=("whsec_current", "whsec_rotated", "whsec_wrong"),
        timestamped=True,
    ),
    Case(
        "calendly",
        {"scheme": "calendly", "tolerance_s": 180},
        sign_calendly,
        ("Calendly-Webhook-Signature",),
        tuple(("Calendly-Webhook-Signature", value) for value in STAMPED),
        timestamped=True,
    ),
    Case(
        "github",
        {"scheme": "github"},
        sign_github,
        ("X-Hub-Signature-256",),
        tuple(("X-Hub-Signature-256", v) for v in (HEX64, "sha1=" + HEX64[:40], "sha256=xyz", "sha256=abc")),
    ),
    Case(
        "shopify",
        {"scheme": "shopify"},
        body_signer("X-Shopify-Hmac-Sha256", b64),
        ("X-Shopify-Hmac-Sha256",),
        (("X-Shopify-Hmac-Sha256", "not base64!"), ("X-Shopify-Hmac-Sha256", "AAAA")),
    ),
    Case(
        "typeform",
        {"scheme": "typeform"},
        body_signer("Typeform-Signature", lambda digest: "sha256=" + b64(digest)),
        ("Typeform-Signature",),
        (("Typeform-Signature", b64(bytes(32))), ("Typeform-Signature", "sha256=???")),
    ),
    Case(
        "tally",
        {"scheme": "tally"},
        body_signer("Tally-Signature", b64),
        ("Tally-Signature",),
        (("Tally-Signature", "sha256=" + b64(bytes(32))), ("Tally-Signature", HEX64)),
    ),
    *(
        Case(
            f"hubspot-{version}",
            {"scheme": f"hubspot-{version}"},
            hubspot_signer(version),
            ("X-HubSpot-Signature",),
            (("X-HubSpot-Signature", "nothex"), ("X-HubSpot-Signature", "abcd")),
        )
        for version in ("v1", "v2")
    ),
    Case(
        "hubspot-v3",
        {"scheme": "hubspot-v3"},
        sign_hubspot_v3,
        ("X-HubSpot-Signature-v3", "X-HubSpot-Request-Timestamp"),
        (("X-HubSpot-Signature-v3", "!!!"), ("X-HubSpot-Request-Timestamp", "2023-11-14T22:13:20Z")),
        timestamped=True,
    ),
    Case(
        "twilio-form",
        {"scheme": "twilio"},
        sign_twilio_form,
        ("X-Twilio-Signature",),
        (("X-Twilio-Signature", "!!!"), ("X-Twilio-Signature", b64(bytes(32)))),
        body=FORM.encode(),
    ),
    Case(
        "twilio-json",
        {"scheme": "twilio"},
        sign_twilio_json,
        ("X-Twilio-Signature",),
        (("X-Twilio-Signature", "!!!"),),
        altered="bodySHA256 in the URL does not match the body",
    ),
    Case(
        "hmac-timed",
        HMAC_TIMED,
        sign_hmac_timed,
        ("X-Signature", "X-Timestamp"),
        (("X-Signature", b64(bytes(64))), ("X-Signature", "v0=zz"), ("X-Timestamp", "-5")),
        timestamped=True,
    ),
    Case(
        "hmac-plain",
        {"scheme": "hmac", "header": "X-Sig", "algorithm": "sha1"},
        sign_hmac_sha1,
        ("X-Sig",),
        (("X-Sig", "abc"), ("X-Sig", HEX64)),
    ),
]
TIMESTAMPED = [case for case in CASES if case.timestamped]


def with_headers(request: HookRequest, **changes: str | None) -> HookRequest:
    """``request`` with headers replaced (``None`` removes one); keys are header names."""
    headers = CIMultiDict(request.headers)
    for name, value in changes.items():
        headers.popall(name, None)
        if value is not None:
            headers[name] = value
    return replace(request, headers=headers)


def signed(case: Case, secret_index: int = 0, ts: int = NOW) -> HookRequest:
    return case.sign(case.secrets[secret_index], case.body, ts)


@pytest.fixture(params=CASES, ids=[case.id for case in CASES])
def case(request: pytest.FixtureRequest) -> Case:
    result: Case = request.param
    return result


def test_a_signed_request_passes(case: Case) -> None:
    make_verifier(case.scheme, case.secrets[0]).verify(signed(case), now_s=NOW)


def test_a_wrong_secret_fails(case: Case) -> None:
    assert refusal(make_verifier(case.scheme, case.secrets[0]), signed(case, 2)) == NO_MATCH


def test_an_altered_body_fails(case: Case) -> None:
    request = signed(case)
    altered = replace(request, body=request.body + b"x")
    assert refusal(make_verifier(case.scheme, case.secrets[0]), altered) == case.altered


def test_either_rotated_secret_passes(case: Case) -> None:
    verifier = make_verifier(case.scheme, case.secrets[0], case.secrets[1])
    for index in (0, 1):
        verifier.verify(signed(case, index), now_s=NOW)


@pytest.mark.parametrize("blank", [None, "", "  "], ids=["missing", "empty", "blank"])
def test_a_missing_or_empty_header_fails(case: Case, blank: str | None) -> None:
    verifier = make_verifier(case.scheme, case.secrets[0])
    for name in case.headers:
        reason = refusal(verifier, with_headers(signed(case), **{name: blank}))
        if blank is None and case.scheme["scheme"] == "svix":  # neither header: Svix's own name is asked for
            name = name.replace("webhook-", "svix-")
        assert reason == f"{'missing' if blank is None else 'empty'} header {name}"


def test_a_malformed_header_fails(case: Case) -> None:
    verifier = make_verifier(case.scheme, case.secrets[0])
    for name, value in case.malformed:
        reason = refusal(verifier, with_headers(signed(case), **{name: value}))
        assert reason.startswith(f"malformed header {name}: expected "), (name, value, reason)


@pytest.mark.parametrize("case", TIMESTAMPED, ids=[case.id for case in TIMESTAMPED])
@pytest.mark.parametrize("direction", [-1, 1], ids=["past", "future"])
def test_timestamps_pass_only_within_the_tolerance(case: Case, direction: int) -> None:
    verifier = make_verifier(case.scheme, case.secrets[0])
    verifier.verify(signed(case, ts=NOW + direction * (case.tolerance_s - 1)), now_s=NOW)
    outside = NOW + direction * (case.tolerance_s + 1)
    reason = refusal(verifier, signed(case, ts=outside))
    assert re.fullmatch(
        rf"timestamp {outside}(000)? is outside the tolerance of {case.tolerance_s} s", reason
    )


def test_no_secret_or_expected_signature_leaks(case: Case) -> None:
    """The refusal of a wrong signature shows neither the secret nor the signature that was expected."""
    verifier = make_verifier(case.scheme, case.secrets[0])
    with pytest.raises(VerificationFailed) as info:
        verifier.verify(signed(case, 2), now_s=NOW)
    expected = signed(case)
    shown = str(info.value) + repr(info.value) + repr(verifier) + str(verifier)
    secret_parts = {case.secrets[0], case.secrets[0].removeprefix("whsec_")}
    for name in case.headers:
        secret_parts.update(part for part in re.split(r"[ ,=]", expected.headers[name]) if len(part) >= 16)
    assert not [part for part in secret_parts if part in shown]
    assert "keys=" not in shown
    assert not re.search(r"[0-9A-Za-z+/]{20,}", str(info.value)), "a digest in any encoding"


VECTORS = [
    pytest.param(  # Standard Webhooks' own test
        {"scheme": "standard-webhooks"},
        "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
        make_request(
            {
                "webhook-id": "msg_p5jXN8AQM9LWM0D4loKWxJek",
                "webhook-timestamp": "1614265330",
                "webhook-signature": "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=",
            },
            b'{"test": 2432232314}',
        ),
        1614265330,
        id="standard-webhooks",
    ),
    pytest.param(
        {"scheme": "svix"},
        "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
        make_request(
            {
                "svix-id": "msg_p5jXN8AQM9LWM0D4loKWxJek",
                "svix-timestamp": "1614265330",
                "svix-signature": f"v1a,{b64(bytes(64))} v1,{b64(bytes(32))} "
                "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=",
            },
            b'{"test": 2432232314}',
        ),
        1614265330 + 299,
        id="svix-among-other-signatures",
    ),
    pytest.param(  # GitHub's docs
        {"scheme": "github"},
        "It's a Secret to Everybody",
        make_request(
            {
                "X-Hub-Signature-256": "sha256="
                + "757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17"
            },
            b"Hello, World!",
        ),
        NOW,
        id="github",
    ),
    pytest.param(  # Twilio's docs
        {"scheme": "twilio"},
        "12345",
        make_request(
            {
                "X-Twilio-Signature": "GvWf1cFY/Q7PnoempGyD5oXAezc=",
                "Content-Type": "application/x-www-form-urlencoded; charset=utf-8",
            },
            b"CallSid=CA1234567890ABCDE&Caller=%2B14158675310&Digits=1234&From=%2B14158675310&To=%2B18005551212",
            "https://mycompany.com/myapp.php?foo=1&bar=2",
        ),
        NOW,
        id="twilio",
    ),
    pytest.param(  # HubSpot's docs
        {"scheme": "hubspot-v1"},
        "yyyyyyyy-yyyy-yyyy-yyyy-yyyyyyyyyyyy",
        make_request(
            {
                "X-HubSpot-Signature": "232db2615f3d666fe21a8ec971ac7b5402d33b9a925784df3ca654d05f4817de",
                "X-HubSpot-Signature-Version": "v1",
            },
            b'[{"eventId":1,"subscriptionId":12345,"portalId":62515,"occurredAt":1564113600000,'
            b'"subscriptionType":"contact.creation","attemptNumber":0,"objectId":123,'
            b'"changeSource":"CRM","changeFlag":"NEW","appId":54321}]',
        ),
        NOW,
        id="hubspot-v1",
    ),
    pytest.param(
        {"scheme": "hubspot-v2"},
        "yyyyyyyy-yyyy-yyyy-yyyy-yyyyyyyyyyyy",
        make_request(
            {"X-HubSpot-Signature": "eee2dddcc73c94d699f5e395f4b9d454a069a6855fbfa152e91e88823087200e"},
            b"",
            "https://www.example.com/webhook_uri",
            "GET",
        ),
        NOW,
        id="hubspot-v2",
    ),
    # Computed by senders.md's author, not by the vendors.
    *(
        pytest.param({"scheme": scheme}, "test_secret", make_request({header: value}), NOW, id=scheme)
        for scheme, header, value in [
            ("typeform", "Typeform-Signature", "sha256=n3nfN41Qq3tAGvfd97TwHHlMUZlM7+84CSrPo4257Tk="),
            ("tally", "Tally-Signature", "n3nfN41Qq3tAGvfd97TwHHlMUZlM7+84CSrPo4257Tk="),
            ("shopify", "X-Shopify-Hmac-Sha256", "n3nfN41Qq3tAGvfd97TwHHlMUZlM7+84CSrPo4257Tk="),
            (
                "calendly",
                "Calendly-Webhook-Signature",
                f"t={NOW},v1=b12066504f921b991a71375bb02e8453189ef5c50c6952f8676edc3610a2bbe3",
            ),
            (
                "stripe",
                "Stripe-Signature",
                f"t={NOW},v1={HEX64},v1=b12066504f921b991a71375bb02e8453189ef5c50c6952f8676edc3610a2bbe3"
                f",v0={HEX64}",  # the one good signature among others
            ),
        ]
    ),
    pytest.param(
        {"scheme": "hubspot-v3"},
        "test_secret",
        make_request(
            {
                "X-HubSpot-Signature-v3": "I3B8gPgjlnu8H6ca27iniL4OyrwKYRMlmBHz6StaQgw=",
                "X-HubSpot-Request-Timestamp": "1700000000000",
            },
            url="https://example.com/hook",
        ),
        NOW,
        id="hubspot-v3",
    ),
]


@pytest.mark.parametrize(("scheme", "secret", "request_", "now_s"), VECTORS)
def test_vendor_test_vectors_pass(
    scheme: dict[str, Any], secret: str, request_: HookRequest, now_s: int
) -> None:
    make_verifier(scheme, secret).verify(request_, now_s=now_s)
    wrong = secret[:-1] + ("B" if secret.endswith("A") else "A")  # still base64 for Standard Webhooks
    assert refusal(make_verifier(scheme, wrong), request_, now_s) == NO_MATCH


@pytest.mark.parametrize(
    ("signed_url", "request_url"),
    [
        ("https://example.com/sms?a=1", "https://example.com:443/sms?a=1"),
        ("https://example.com:443/sms?a=1", "https://example.com/sms?a=1"),
        ("http://example.com/sms", "http://example.com:80/sms"),
        ("http://example.com/sms", "http://example.com:8080/sms"),  # twilio-python drops any port
        ("https://[2001:db8::1]/sms", "https://[2001:db8::1]:443/sms"),
    ],
)
def test_twilio_urls_pass_with_and_without_the_port(signed_url: str, request_url: str) -> None:
    signature = RequestValidator("test_secret").compute_signature(signed_url, {})
    request = make_request({"X-Twilio-Signature": signature}, b"", request_url)
    make_verifier({"scheme": "twilio"}, "test_secret").verify(request, now_s=NOW)


def test_twilio_refuses_a_body_the_url_does_not_vouch_for() -> None:
    signature = RequestValidator("test_secret").compute_signature(URL, {})
    request = make_request({"X-Twilio-Signature": signature, "Content-Type": "application/json"})
    reason = refusal(make_verifier({"scheme": "twilio"}, "test_secret"), request)
    assert reason == "the body is not a form and the URL has no bodySHA256 parameter"


@pytest.mark.parametrize(
    ("case_id", "changes", "reason"),
    [
        ("hubspot-v1", {"X-HubSpot-Signature-Version": None}, None),
        ("hubspot-v2", {"X-HubSpot-Signature-Version": None}, None),
        ("hubspot-v1", {"X-HubSpot-Signature-Version": "v2"}, "header X-HubSpot-Signature-Version is not v1"),
        ("hubspot-v2", {"X-HubSpot-Signature-Version": "v1"}, "header X-HubSpot-Signature-Version is not v2"),
        ("svix", {"webhook-id": "msg_1"}, None),  # svix-* win over webhook-*
        ("svix", {"svix-id": None, "webhook-id": "msg_1"}, None),
        ("svix", {"svix-id": None, "webhook-id": "msg_2"}, NO_MATCH),
        ("github", {"X-Hub-Signature-256": None, "x-hub-signature-256": "sha256=" + HEX64}, NO_MATCH),
    ],
)
def test_scheme_details(case_id: str, changes: dict[str, str | None], reason: str | None) -> None:
    case = CASES[[case.id for case in CASES].index(case_id)]
    request = with_headers(signed(case), **changes)
    verifier = make_verifier(case.scheme, case.secrets[0])
    if reason is None:
        verifier.verify(request, now_s=NOW)
    else:
        assert refusal(verifier, request) == reason


def test_hmac_template_substitutes_once() -> None:
    """A placeholder inside the URL or the body is signed as it is, not substituted again."""
    scheme = {"scheme": "hmac", "header": "X-Sig", "signed": "{url}|{method}|{body}"}
    url, body = "https://example.com/{body}?m={method}", b"{url}"
    request = make_request({"X-Sig": mac("s", f"{url}|POST|".encode() + body).hex()}, body, url)
    make_verifier(scheme, "s").verify(request, now_s=NOW)


def basic(credentials: str) -> dict[str, str]:
    return {"Authorization": "Basic " + b64(credentials.encode())}


BASIC = {"scheme": "basic"}
TOKEN_HEADER = {"scheme": "token", "header": "X-Token"}
TOKEN_QUERY = {"scheme": "token", "query": "token"}
IP_ALLOW = {"scheme": "ip-allow", "networks": ["10.0.0.0/8", "2001:db8::/32"]}
HOOK = "https://relay.example.com/hooks/src"


@pytest.mark.parametrize(
    ("scheme", "headers", "url", "client_ip", "reason"),
    [
        (BASIC, basic("pipe:s3cr3t"), URL, None, None),
        (BASIC, basic("pipe:r0tated"), URL, None, None),
        (BASIC, {"Authorization": "basic " + b64(b"pipe:s3cr3t")}, URL, None, None),
        (BASIC, basic("pipe:wrong"), URL, None, "credentials match no configured user:password"),
        (BASIC, {}, URL, None, "missing header Authorization"),
        (BASIC, {"Authorization": ""}, URL, None, "empty header Authorization"),
        (BASIC, {"Authorization": "Bearer pipe:s3cr3t"}, URL, None, "malformed header Authorization"),
        (BASIC, {"Authorization": "Basic pipe:s3cr3t"}, URL, None, "malformed header Authorization"),
        (BASIC, basic("pipes3cr3t"), URL, None, "malformed header Authorization"),
        (TOKEN_HEADER, {"X-Token": "tok-1"}, URL, None, None),
        (TOKEN_HEADER, {"X-Token": "tok-2"}, URL, None, None),
        (TOKEN_HEADER, {"X-Token": "tok-3"}, URL, None, "token matches no configured secret"),
        (TOKEN_HEADER, {"X-Token": "tok"}, URL, None, "token matches no configured secret"),
        (TOKEN_HEADER, {}, URL, None, "missing header X-Token"),
        (TOKEN_HEADER, {"X-Token": " "}, URL, None, "empty header X-Token"),
        (TOKEN_QUERY, {}, f"{HOOK}?a=1&token=tok-1", None, None),
        (TOKEN_QUERY, {}, f"{HOOK}?token=tok-2", None, None),
        (TOKEN_QUERY, {}, f"{HOOK}?token=tok-3", None, "token matches no configured secret"),
        (TOKEN_QUERY, {"token": "tok-1"}, HOOK, None, "missing query parameter token"),
        (TOKEN_QUERY, {}, f"{HOOK}?token=", None, "empty query parameter token"),
        (
            TOKEN_QUERY,
            {},
            f"{HOOK}?token=tok-1&token=x",
            None,
            "query parameter token is given more than once",
        ),
        (IP_ALLOW, {}, URL, "10.1.2.3", None),
        (IP_ALLOW, {}, URL, "2001:db8::7", None),
        (IP_ALLOW, {}, URL, "::ffff:10.1.2.3", None),
        (IP_ALLOW, {}, URL, "1.2.3.4", "client address 1.2.3.4 is not in the allow-list"),
        (IP_ALLOW, {}, URL, "2001:db9::1", "client address 2001:db9::1 is not in the allow-list"),
        (IP_ALLOW, {}, URL, None, "client address is unknown"),
        (IP_ALLOW, {}, URL, "localhost", "client address 'localhost' is not an IP address"),
    ],
)
def test_unsigned_schemes(
    scheme: dict[str, Any], headers: dict[str, str], url: str, client_ip: str | None, reason: str | None
) -> None:
    secrets = {"basic": ("pipe:s3cr3t", "pipe:r0tated"), "token": ("tok-1", "tok-2")}.get(
        scheme["scheme"], ()
    )
    verifier = make_verifier(scheme, *secrets)
    request = replace(make_request(headers, url=url), client_ip=client_ip)
    if reason is None:
        verifier.verify(request, now_s=NOW)
        return
    shown = refusal(verifier, request)
    assert shown.startswith(reason)
    assert not [secret for secret in secrets if secret in shown]


def test_every_scheme_must_pass() -> None:
    source = Source.model_validate({"verify": [{"scheme": "github", "secrets": ["GH"]}, IP_ALLOW]})
    verifier = build_verifiers({"src": source}, {"GH": "test_secret"}, FILE)["src"]
    request = sign_github("test_secret", BODY, NOW)
    assert refusal(verifier, request) == "client address 192.0.2.7 is not in the allow-list"
    verifier.verify(replace(request, client_ip="10.0.0.1"), now_s=NOW)


def test_a_source_without_schemes_lets_anything_in() -> None:
    verifier = build_verifiers({"open": Source.model_validate({})}, {}, FILE)["open"]
    verifier.verify(replace(make_request({}), client_ip=None), now_s=0)
    assert verifier == SourceVerifier("open")


def test_build_verifiers_reports_every_missing_secret_at_once() -> None:
    sources = {
        "forms": Source.model_validate(
            {"verify": [IP_ALLOW, {"scheme": "github", "secrets": ["GH_1", "GH_2"]}]}
        ),
        "billing": Source.model_validate({"verify": {"scheme": "stripe", "secrets": ["STRIPE"]}}),
        "wh": Source.model_validate({"verify": {"scheme": "svix", "secrets": ["SVIX"]}}),
        "crm": Source.model_validate({"verify": {"scheme": "basic", "secrets": ["PIPEDRIVE"]}}),
    }
    environ = {"GH_1": "present", "STRIPE": " ", "SVIX": "whsec_not*base64", "PIPEDRIVE": "no-colon"}
    with pytest.raises(ConfigError) as info:
        build_verifiers(sources, environ, FILE)
    assert info.value.problems == [
        ConfigProblem(
            FILE, "source 'forms': field verify[1].secrets", "environment variable GH_2 is not set"
        ),
        ConfigProblem(
            FILE, "source 'billing': field verify[0].secrets", "environment variable STRIPE is not set"
        ),
        ConfigProblem(
            FILE,
            "source 'wh': field verify[0].secrets",
            "environment variable SVIX does not hold a base64 secret (whsec_...)",
        ),
        ConfigProblem(
            FILE,
            "source 'crm': field verify[0].secrets",
            "environment variable PIPEDRIVE does not hold user:password",
        ),
    ]
    assert not [value for value in environ.values() if value.strip() and value in str(info.value)]


def test_build_verifiers_resolves_present_secrets() -> None:
    sources = {"gh": Source.model_validate({"verify": {"scheme": "github", "secrets": ["GH"]}})}
    verifier = build_verifiers(sources, {"GH": "test_secret", "OTHER": "x"}, FILE)["gh"]
    assert verifier.keys == ((b"test_secret",),)
    assert "test_secret" not in repr(verifier) and "test_secret" not in str(verifier)
    verifier.verify(sign_github("test_secret", BODY, NOW))  # now_s defaults to the clock


@pytest.mark.parametrize(
    "signed_url",
    ["https://relay.example.com/hooks/src?next=a%3Ab", "https://relay.example.com/hooks/src?next=a:b"],
)
def test_hubspot_v3_accepts_the_uri_as_sent_and_as_hubspot_decodes_it(signed_url: str) -> None:
    stamp = NOW * 1000
    body = b'[{"eventId": 1}]'
    signature = Signature.get_signature("s3cret", body.decode(), "v3", signed_url, "POST", timestamp=stamp)
    headers = {"X-HubSpot-Signature-v3": signature, "X-HubSpot-Request-Timestamp": str(stamp)}
    request = make_request(headers, body, url="https://relay.example.com/hooks/src?next=a%3Ab")
    make_verifier({"scheme": "hubspot-v3"}, "s3cret").verify(request, now_s=NOW)


# aiohttp decodes header bytes as UTF-8 with surrogateescape: a byte that is not UTF-8 arrives as U+DC80-DCFF.
NOT_UTF8 = "\udcff"


def test_non_utf8_bytes_in_a_header_or_the_host_are_refused_not_a_crash(case: Case) -> None:
    """Regression: a header or Host byte that is not UTF-8 raised UnicodeEncodeError (a 500), not a 401."""
    verifier = make_verifier(case.scheme, case.secrets[0])
    request = signed(case)
    for name in case.headers:
        refusal(verifier, with_headers(request, **{name: request.headers[name] + NOT_UTF8}))
    with contextlib.suppress(VerificationFailed):  # schemes that do not sign the URL pass
        verifier.verify(replace(request, url=request.url.replace("relay.", f"relay{NOT_UTF8}.")), now_s=NOW)


@pytest.mark.parametrize("scheme", [TOKEN_HEADER, {"scheme": "token", "query": "key"}, BASIC])
def test_non_utf8_bytes_in_a_token_are_refused_not_a_crash(scheme: dict[str, str]) -> None:
    """Regression: a token header byte that is not UTF-8 raised UnicodeEncodeError (a 500), not a 401."""
    headers = {"X-Token": f"tok{NOT_UTF8}", "Authorization": f"Basic {NOT_UTF8}"}
    url = URL.replace("relay.", f"relay{NOT_UTF8}.")
    refusal(make_verifier(scheme, "tok:en"), make_request(headers, url=url))


def test_signatures_cover_the_bytes_as_sent_even_when_not_utf8() -> None:
    scheme = {"scheme": "hmac", "header": "X-Sig", "signed": "{url}{body}"}
    url = f"https://h{NOT_UTF8}.example.com/hooks/src"
    request = make_request({"X-Sig": mac("s", b"https://h\xff.example.com/hooks/src" + BODY).hex()}, url=url)
    make_verifier(scheme, "s").verify(request, now_s=NOW)


@pytest.mark.parametrize("host", ["[", "a]b", "[::1"])
@pytest.mark.parametrize(
    ("scheme", "headers"),
    [
        ({"scheme": "twilio"}, {"X-Twilio-Signature": b64(bytes(20))}),
        ({"scheme": "token", "query": "key"}, {}),
    ],
    ids=["twilio", "token-query"],
)
def test_an_unparseable_request_url_is_refused_not_a_crash(
    scheme: dict[str, str], headers: dict[str, str], host: str
) -> None:
    """Regression: a Host header such as ``[`` made urlsplit raise ValueError (a 500), not a 401."""
    request = make_request(headers, url=f"https://{host}/hooks/src?key=1")
    reason = refusal(make_verifier(scheme, "1"), request)
    assert reason == "the request URL does not parse (a malformed Host header?)"
    assert "key=1" not in reason
