"""Fuzzing with Hypothesis: the ingress over real HTTP and the suite's real Redis, the body parsers and the
mapping expressions, with random and near-valid input.

The promises: no 5xx but a 503 while Redis is unreachable, no crashed server, every refusal a 4xx with a
JSON ``{"error", "message"}``, a 2xx only for input that verifies and parses; the parsers raise nothing
but refusals; a config raises nothing but ConfigError, and mapping nothing at all. Profiles (``ci``,
``long``) are in tests/conftest.py.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from ipaddress import ip_network
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from relay.dev.redis_server import EmbeddedRedis, free_port
from relay.errors import ConfigError, IngressRefused
from relay.infra.serving import AppThread
from relay.ingress.app import create_app
from relay.mapping.config import parse_config
from relay.mapping.expressions import locate
from relay.mapping.parse import MAX_DEPTH, parse_body
from relay.mapping.routes import map_event
from relay.settings import Settings, load_settings
from tests.conftest import KNOWN_PHLO, check_for_leaks, watch_secrets

SAMPLES = Path(__file__).resolve().parents[2] / "config" / "examples" / "samples"
UNIT = settings().max_examples  # 100 in the ci profile, 1000 in long
MAX_BODY_BYTES = 4096  # small, so that sizes around the limit are cheap to send
SECRETS = {
    "GITHUB": "fuzz-github-secret-51c2",
    "STRIPE": "whsec_fuzz-stripe-9e0d",
    "TOKEN": "fuzz-token-77ab",
}
watch_secrets(*SECRETS.values())
FUZZ_CONFIG = f"""
sources:
  json-open:
    event_id: {{path: id}}
    event_type: {{path: type}}
  json-batch:
    batch: "@"
    event_id: {{path: eventId}}
  form-doc:
    form_document_field: payload
  form-fields:
    json_fields: [rawRequest]
    event_id: {{path: submissionID}}
  xml-batch:
    batch: Envelope.Body.notifications.Notification
    event_id: {{path: Id}}
    reply: salesforce-ack
  github:
    verify: {{scheme: github, secrets: [GITHUB]}}
    event_id: {{header: X-GitHub-Delivery}}
    event_type: {{header: X-GitHub-Event}}
    ping_events: [ping]
  stripe:
    verify: {{scheme: stripe, secrets: [STRIPE]}}
    event_id: {{path: id}}
  token-query:
    verify: {{scheme: token, query: token, secrets: [TOKEN]}}
  twilio:
    verify: {{scheme: twilio, secrets: [TOKEN]}}
    reply: twiml
  ip-only:
    verify: {{scheme: ip-allow, networks: [203.0.113.0/24]}}
routes:
  - {{name: open-call, source: json-open, events: ["call*"], phlo_id: {KNOWN_PHLO},
     payload: {{to: {{path: to, required: true}}, n: {{path: "floor(to_number(amount))"}}}}}}
  - {{name: open-any, source: json-open, when: "length(@) > `2`", phlo_id: {KNOWN_PHLO},
     payload: {{all: {{path: "@"}}, first: {{path: "keys(@)[0]"}}}}}}
  - {{name: batch-call, source: json-batch, phlo_id: {KNOWN_PHLO}, payload: {{to: {{path: propertyValue}}}}}}
  - {{name: doc-call, source: form-doc, when: "action == 'labeled'", phlo_id: {KNOWN_PHLO},
     payload: {{title: {{path: issue.title, required: true}}}}}}
  - {{name: fields-call, source: form-fields, phlo_id: {KNOWN_PHLO},
     payload: {{to: {{path: rawRequest.q4_phoneNumber.full, default: "+14155550100"}}}}}}
  - {{name: xml-call, source: xml-batch, phlo_id: {KNOWN_PHLO}, payload: {{to: {{path: sObject.Phone}}}}}}
  - {{name: github-call, source: github, phlo_id: {KNOWN_PHLO}, payload: {{to: {{path: sender.login}}}}}}
  - {{name: stripe-call, source: stripe, phlo_id: {KNOWN_PHLO}, payload: {{to: {{path: data.object.phone}}}}}}
  - {{name: token-call, source: token-query, phlo_id: {KNOWN_PHLO}, payload: {{to: {{path: to}}}}}}
  - {{name: twilio-call, source: twilio, phlo_id: {KNOWN_PHLO}, payload: {{to: {{path: From}}}}}}
  - {{name: ip-call, source: ip-only, phlo_id: {KNOWN_PHLO}, payload: {{to: {{path: to}}}}}}
"""
VERIFIED = {"github", "stripe", "token-query", "twilio", "ip-only"}
SOURCES = sorted(parse_config(FUZZ_CONFIG, "fuzz.yaml").sources)


# -- what is sent ---------------------------------------------------------------------------------------

MULTIPART_BOUNDARY = "------------------------J1JNT4vbVO4FCC1qLG4HSv"
SAMPLE_TYPES = {
    ".json": "application/json",
    ".urlencoded": "application/x-www-form-urlencoded",
    ".multipart": f"multipart/form-data; boundary={MULTIPART_BOUNDARY}",
    ".xml": "text/xml; charset=utf-8",
}
SAMPLE_BODIES = [(path.read_bytes(), SAMPLE_TYPES[path.suffix]) for path in sorted(SAMPLES.iterdir())]
MEDIA_TYPES = [
    "application/json",
    "text/json",
    "application/vnd.api+json",
    "application/x-www-form-urlencoded",
    "multipart/form-data",
    "application/xml",
    "text/xml",
    "application/soap+xml",
    "text/plain",
    "application/octet-stream",
    "*/*",
    "",
]
CHARSETS = ["utf-8", "UTF-8", "latin-1", "us-ascii", "utf-16", "utf-16-be", "utf-7", "cp1252"]
CHARSETS += ["unicode_escape", "raw_unicode_escape", "idna", "punycode", "base64", "klingon", "", "utf-8\x00"]
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=10), children, max_size=5)
    ),
    max_leaves=20,
)


@st.composite
def content_types(draw: st.DrawFn) -> str:
    """A media type, with random case, charsets and parameters (a boundary, sometimes the right one)."""
    media = draw(st.sampled_from(MEDIA_TYPES) | st.text(max_size=30))
    if draw(st.booleans()):
        media = media.upper()
    params = draw(
        st.lists(
            st.sampled_from([f"charset={c}" for c in CHARSETS] + [f"boundary={MULTIPART_BOUNDARY}"])
            | st.builds(
                lambda k, v: f"{k}={v}",
                st.sampled_from(["charset", "boundary", "q", "charset*"]),
                st.text(max_size=15),
            ),
            max_size=3,
        )
    )
    return "; ".join([media, *params])


@st.composite
def mutated(draw: st.DrawFn, body: bytes) -> bytes:
    """A valid body with a few random edits: flipped, cut, inserted or repeated bytes."""
    data = bytearray(body)
    for _ in range(draw(st.integers(0, 4))):
        if not data:
            break
        at = draw(st.integers(0, len(data) - 1))
        edit = draw(st.sampled_from(["flip", "cut", "insert", "repeat", "truncate"]))
        if edit == "flip":
            data[at] = draw(st.integers(0, 255))
        elif edit == "cut":
            del data[at : at + draw(st.integers(1, 16))]
        elif edit == "insert":
            data[at:at] = draw(
                st.binary(min_size=1, max_size=8)
                | st.sampled_from([b"<!DOCTYPE a>", b"&x;", b"\\ud800", b"%FF", b"--"])
            )
        elif edit == "repeat":
            data[at:at] = data[at : at + draw(st.integers(1, 64))] * draw(st.integers(1, 8))
        else:
            del data[at:]
    return bytes(data)


def near_valid() -> st.SearchStrategy[tuple[bytes, str]]:
    """A sample of config/examples/samples, mutated, sent as its own type or another."""
    return st.sampled_from(SAMPLE_BODIES).flatmap(
        lambda sample: st.tuples(mutated(sample[0]), st.just(sample[1]) | content_types())
    )


def generated() -> st.SearchStrategy[tuple[bytes, str]]:
    """Bodies of every format built from random values, and random bytes."""
    fields = st.lists(st.tuples(st.text(max_size=12), st.text(max_size=20)), max_size=6)
    return st.one_of(
        st.tuples(JSON_VALUES.map(lambda v: json.dumps(v).encode()), st.just("application/json")),
        st.tuples(fields.map(lambda f: urlencode(f).encode()), st.just("application/x-www-form-urlencoded")),
        st.tuples(
            st.builds(lambda p: urlencode({"payload": json.dumps(p)}).encode(), JSON_VALUES),
            st.just("application/x-www-form-urlencoded"),
        ),
        st.tuples(fields.map(multipart), st.just(f"multipart/form-data; boundary={MULTIPART_BOUNDARY}")),
        st.tuples(JSON_VALUES.map(xml_of), st.sampled_from(["text/xml", "application/xml; charset=utf-8"])),
        st.tuples(st.binary(max_size=300), content_types()),
    )


def multipart(fields: list[tuple[str, str]]) -> bytes:
    parts = [
        f'--{MULTIPART_BOUNDARY}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode(
            "utf-8", "surrogateescape"
        )
        for name, value in fields
    ]
    return b"".join(parts) + f"--{MULTIPART_BOUNDARY}--\r\n".encode()


def xml_of(value: Any, tag: str = "a") -> bytes:
    if isinstance(value, dict):
        inner = b"".join(xml_of(child, f"k{index}") for index, child in enumerate(value.values()))
    elif isinstance(value, list):
        inner = b"".join(xml_of(child, "i") for child in value)
    else:
        inner = str(value).replace("&", "&amp;").replace("<", "&lt;").encode("utf-8", "surrogateescape")
    return b"<" + tag.encode() + b">" + inner + b"</" + tag.encode() + b">"


@st.composite
def sized(draw: st.DrawFn, body: bytes) -> bytes:
    """Now and then, the body padded (or cut) to a size around the limit."""
    if draw(st.integers(0, 9)) != 0:
        return body
    size = draw(st.sampled_from([MAX_BODY_BYTES - 1, MAX_BODY_BYTES, MAX_BODY_BYTES + 1, 3 * MAX_BODY_BYTES]))
    return (body + b" " * size)[:size]


SOURCE_TRICKS = ["..", "%2e%2e", "..%2Fadmin", "a/b", "%2F", "%00", "json-open/..", "JSON-OPEN", "x" * 3000]
HEADER_NAMES = [
    "X-GitHub-Delivery",
    "X-GitHub-Event",
    "X-Hub-Signature-256",
    "Stripe-Signature",
    "X-Twilio-Signature",
    "X-Forwarded-For",
    "X-Forwarded-Host",
    "X-Forwarded-Proto",
    "Authorization",
    "Accept",
    "X-Anything",
]
HEADER_BYTES = st.binary(max_size=40)


@dataclass(frozen=True)
class Sent:
    source: str
    path: str
    headers: dict[bytes, bytes]
    body: bytes
    signed: bool


def sign(source: str, body: bytes, path: str) -> tuple[str, dict[str, str]]:
    """Sign as the sender would: the fuzzer sometimes sends validly verified requests."""
    if source == "github":
        digest = hmac.new(SECRETS["GITHUB"].encode(), body, hashlib.sha256).hexdigest()
        return path, {"X-Hub-Signature-256": f"sha256={digest}"}
    if source == "stripe":
        now = int(time.time())
        digest = hmac.new(SECRETS["STRIPE"].encode(), f"{now}.".encode() + body, hashlib.sha256).hexdigest()
        return path, {"Stripe-Signature": f"t={now},v1={digest}"}
    if source == "token-query":
        return f"{path}?token={SECRETS['TOKEN']}", {}
    if source == "ip-only":
        return path, {"X-Forwarded-For": "203.0.113.9"}
    raise AssertionError(f"no signer for {source}")  # twilio is signed in test_security


@st.composite
def requests(draw: st.DrawFn) -> list[Sent]:
    """One body with its headers, sent to one to four sources: drawing costs more than sending."""
    body, content_type = draw(st.one_of(near_valid(), generated()))
    body = draw(sized(body))
    headers = {b"Content-Type": header_value(content_type.encode("utf-8", "surrogateescape"))}
    names = st.sampled_from(HEADER_NAMES) | st.from_regex(r"\AX-[A-Za-z]{1,10}\Z")
    values = HEADER_BYTES | st.sampled_from([b"", b"ping", b"call", b"sha256=" + b"0" * 64, b"[", b"::1"])
    for name in draw(st.lists(names, max_size=4)):
        headers[name.encode()] = header_value(draw(values))
    names_of_sources = st.sampled_from(["configured"] * 8 + ["trick", "random"]).flatmap(  # mostly real ones
        lambda kind: {"configured": st.sampled_from(SOURCES), "trick": st.sampled_from(SOURCE_TRICKS)}.get(
            kind, st.text(min_size=1, max_size=40)
        )
    )
    sent = []
    for source in draw(st.lists(names_of_sources, min_size=1, max_size=4)):
        path = "/hooks/" + (source if source in SOURCE_TRICKS else quote(source, safe=""))
        signed = source in VERIFIED - {"twilio"} and draw(st.booleans())
        extra: dict[str, str] = {}
        if signed:
            path, extra = sign(source, body, path)
        signed_headers = {**headers, **{name.encode(): value.encode() for name, value in extra.items()}}
        sent.append(Sent(source, path, signed_headers, body, signed))
    return sent


def header_value(value: bytes) -> bytes:
    """What HTTP lets through: no control bytes, no surrounding whitespace."""
    return bytes(c for c in value if c >= 0x20 and c != 0x7F).strip()


# -- the ingress over real HTTP -------------------------------------------------------------------------


def fuzz_settings(redis_url: str) -> Settings:
    return load_settings(
        _env_file=None,
        redis_url=redis_url,
        max_body_bytes=MAX_BODY_BYTES,
        body_read_timeout_s=5,
        public_url="https://relay.example.com",
        trusted_proxies=[ip_network("127.0.0.1/32")],
    )


@pytest.fixture(scope="module", autouse=True)
def quiet_httpx() -> Iterator[None]:
    """httpx logs each URL at INFO, token-query's token included: the test client's line, not the relay's."""
    logger = logging.getLogger("httpx")
    level = logger.level
    logger.setLevel(logging.WARNING)
    yield
    logger.setLevel(level)


@pytest.fixture(scope="module")
def ingress(redis_server: EmbeddedRedis) -> Iterator[httpx.Client]:
    config = parse_config(FUZZ_CONFIG, "fuzz.yaml")
    app = AppThread(lambda: create_app(fuzz_settings(redis_server.url), config, SECRETS))
    with app, httpx.Client(base_url=app.url, timeout=30) as client:
        yield client


@pytest.fixture(scope="module")
def ingress_without_redis() -> Iterator[httpx.Client]:
    """An ingress whose Redis is a closed port: what it answers while Redis is down."""
    config = parse_config(FUZZ_CONFIG, "fuzz.yaml")
    closed = f"redis://127.0.0.1:{free_port()}/0"
    app = AppThread(lambda: create_app(fuzz_settings(closed), config, SECRETS))
    with app, httpx.Client(base_url=app.url, timeout=30) as client:
        yield client


ANSWERED: Counter[int] = Counter()  # statuses, for the summary the last test prints (pytest -s)


def send(client: httpx.Client, sent: Sent) -> httpx.Response:
    response = client.post(sent.path, content=sent.body, headers=sent.headers)
    ANSWERED[response.status_code] += 1
    check_for_leaks(f"fuzzed answer for {sent.path[:40]}", response.content)
    return response


def assert_answer_keeps_the_promises(sent: Sent, response: httpx.Response, redis_down: bool = False) -> None:
    status = response.status_code
    if status == 503:
        assert redis_down, response.text
        assert response.json()["error"] == "queue_unavailable"
        return
    assert status < 500, response.text
    # With Redis unreachable nothing can be stored: the one 2xx that promises nothing is a sender's ping
    # (a verified request with no event to run); any other would be a promise the relay cannot keep.
    if redis_down and status < 400:
        assert response.json()["status"] == "ping", f"{status} while Redis is unreachable: {response.text}"
    if status >= 400:
        answer = response.json()
        assert set(answer) == {"error", "message"}, answer
        assert isinstance(answer["error"], str) and answer["error"]
        assert isinstance(answer["message"], str) and answer["message"]
        return
    assert 200 <= status < 300, response.text
    assert sent.source in SOURCES, f"a 2xx for an unknown source {sent.source!r}"
    assert sent.source not in VERIFIED or sent.signed, "a 2xx for a request that was not signed"
    assert len(sent.body) <= MAX_BODY_BYTES
    try:  # a 2xx only for a body that parses (the verified sources have no json_fields or document field)
        parse_body(
            sent.headers[b"Content-Type"].decode("utf-8", "surrogateescape"),
            sent.body,
            json_fields=["rawRequest"] if sent.source == "form-fields" else (),
            form_document_field="payload" if sent.source == "form-doc" else None,
        )
    except IngressRefused as exc:
        pytest.fail(f"a {status} for a body the parser refuses: {exc.message}")


FUZZ_HEALTH = [HealthCheck.too_slow, HealthCheck.data_too_large]


@settings(max_examples=UNIT * 8, suppress_health_check=FUZZ_HEALTH)
@given(batch=requests())
def test_the_ingress_keeps_its_promises_on_any_request(ingress: httpx.Client, batch: list[Sent]) -> None:
    for sent in batch:
        assert_answer_keeps_the_promises(sent, send(ingress, sent))


@settings(max_examples=UNIT * 2, suppress_health_check=FUZZ_HEALTH)
@given(batch=requests())
def test_with_redis_unreachable_the_only_5xx_is_503(
    ingress_without_redis: httpx.Client, batch: list[Sent]
) -> None:
    for sent in batch:
        assert_answer_keeps_the_promises(sent, send(ingress_without_redis, sent), redis_down=True)


def test_the_ingress_still_serves_after_the_fuzzing(ingress: httpx.Client) -> None:
    """Runs after the fuzz tests of this module (pytest keeps file order): the server is alive and stores."""
    response = ingress.post(
        "/hooks/json-open", json={"id": f"alive-{time.time()}", "type": "call", "to": "+1"}
    )
    assert response.status_code == 202, response.text
    assert response.json()["jobs"]
    print(f"{ANSWERED.total()} fuzzed requests answered: {dict(sorted(ANSWERED.items()))}")


# -- the parsers directly -------------------------------------------------------------------------------


@settings(max_examples=UNIT * 10, suppress_health_check=FUZZ_HEALTH)
@given(
    body_and_type=st.one_of(near_valid(), generated()),
    json_fields=st.sampled_from([(), ("rawRequest",), ("a", "payload")]),
    document_field=st.sampled_from([None, "payload"]),
)
def test_the_parsers_raise_nothing_but_refusals(
    body_and_type: tuple[bytes, str], json_fields: tuple[str, ...], document_field: str | None
) -> None:
    body, content_type = body_and_type
    try:
        document = parse_body(content_type, body, json_fields=json_fields, form_document_field=document_field)
    except IngressRefused as exc:
        assert exc.status in (400, 415)
        assert exc.message
        return
    # What the mapping and Redis get: strict JSON, UTF-8 text, bounded depth.
    json.dumps(document, ensure_ascii=False, allow_nan=False).encode()
    assert depth(document) <= MAX_DEPTH


def depth(value: Any) -> int:
    if isinstance(value, dict):
        return 1 + max(map(depth, value.values()), default=0)
    if isinstance(value, list):
        return 1 + max(map(depth, value), default=0)
    return 0


# -- mapping expressions --------------------------------------------------------------------------------

FUNCTIONS = ["abs", "avg", "ceil", "floor", "join", "keys", "length", "max", "merge", "min", "not_null"]
FUNCTIONS += [
    "reverse",
    "sort",
    "sort_by",
    "starts_with",
    "sum",
    "to_array",
    "to_number",
    "to_string",
    "type",
]
EXPRESSION_PARTS = st.sampled_from(
    [
        "a",
        "b",
        "@",
        ".",
        "*",
        "[]",
        "[0]",
        "[-1]",
        "[::0]",
        "[1:]",
        "[?a]",
        "[?a > `1`]",
        "|",
        "&&",
        "||",
        "!",
        "==",
        "<",
        "(",
        ")",
        "{x: a}",
        "[a, b]",
        "`1e999`",
        '`"NaN"`',
        "'x'",
        "`[]`",
        ",",
        "&a",
        " ",
    ]
    + [f"{name}(" for name in FUNCTIONS]
)
EXPRESSIONS = st.lists(EXPRESSION_PARTS, min_size=1, max_size=12).map("".join) | st.text(
    min_size=1, max_size=30
)
DOCUMENTS = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False)
    | st.sampled_from(["1.0e999", "NaN", "-inf", "12.5", ""])
    | st.text(max_size=10),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(st.sampled_from(["a", "b", "x"]), children, max_size=3)
    ),
    max_leaves=15,
)


def config_with(when: str, path: str) -> str:
    route = {"name": "r", "source": "s", "phlo_id": "p", "when": when, "payload": {"v": {"path": path}}}
    return json.dumps({"sources": {"s": {"event_id": {"path": path}}}, "routes": [route]})


@settings(max_examples=UNIT * 8, suppress_health_check=FUZZ_HEALTH)
@given(when=EXPRESSIONS, path=EXPRESSIONS, documents=st.lists(DOCUMENTS, min_size=1, max_size=3))
def test_mapping_expressions_raise_only_config_errors_and_never_fail_on_a_document(
    when: str, path: str, documents: list[Any]
) -> None:
    try:
        config = parse_config(config_with(when, path), "fuzz.yaml")
    except ConfigError as exc:
        assert exc.problems
        return
    for document in documents:
        event_id = locate(config.sources["s"].event_id, document, {})
        assert event_id is None or isinstance(event_id, str)
        mapped = map_event(config, "s", None, document)  # raises nothing: failures are dead letters
        for run in mapped.runs:
            json.dumps(run.payload, allow_nan=False)  # what the worker sends the runner
        assert all(failure.reason for failure in mapped.failures)
