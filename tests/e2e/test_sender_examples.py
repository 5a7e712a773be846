"""Every sender example in config/examples/ works: `relay check` accepts it, and its sample, signed the way
the vendor signs it, is verified, answered as the vendor expects and delivered to the PHLO runner with the
exact payload the example's routes describe (a real ingress, Redis, worker and runner sandbox).
"""

from __future__ import annotations

import asyncio
import base64
import hmac
import json
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode
from zoneinfo import ZoneInfo

import pytest
import stripe
import xmltodict
from hubspot.utils.signature import Signature
from pytest_aiohttp import AiohttpClient
from redis import Redis
from rq import Queue
from twilio.request_validator import RequestValidator

from relay.dev.redis_server import EmbeddedRedis
from relay.ingress.app import create_app
from relay.mapping.config import load_config
from relay.runner.sandbox import SANDBOX_AUTH_ID, SANDBOX_AUTH_TOKEN, SandboxConfig, SandboxThread
from relay.settings import Settings, load_settings
from tests.conftest import (
    SUITE_ADMIN_TOKEN,
    Sandbox,
    assert_sdk_request,
    clean_environment,
    drain_queue,
    sandbox_handle,
    watch_secrets,
)

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "config" / "examples"
SAMPLES = EXAMPLES / "samples"
PUBLIC_URL = "https://relay.example.com"
PLIVO_NUMBER = "+14155550100"
SALESFORCE_ADDRESS = "136.146.0.25"  # in Salesforce's published ranges, as the load balancer reports it
# The SOAP acknowledgement Salesforce requires (../shared/reference/senders.md), byte for byte.
SALESFORCE_ACK = (
    '<soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/"><soapenv:Body>'
    '<notificationsResponse xmlns="http://soap.sforce.com/2005/09/outbound"><Ack>true</Ack>'
    "</notificationsResponse></soapenv:Body></soapenv:Envelope>"
)

# A signer gets the body, the request path and a secret; it returns the path to post to (a token in the
# query goes there) and the headers the vendor adds. URL-signing vendors sign f"{PUBLIC_URL}{path}".
Signer = Callable[[bytes, str, str], tuple[str, dict[str, str]]]


def _hmac(secret: str, message: bytes, algorithm: str = "sha256") -> bytes:
    return hmac.new(secret.encode(), message, algorithm).digest()


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


def hubspot_v2(body: bytes, path: str, secret: str) -> tuple[str, dict[str, str]]:
    signature = Signature.get_signature(secret, body.decode(), "v2", http_uri=PUBLIC_URL + path)
    return path, {"X-HubSpot-Signature": signature, "X-HubSpot-Signature-Version": "v2"}


def hubspot_v3(body: bytes, path: str, secret: str) -> tuple[str, dict[str, str]]:
    timestamp = str(int(time.time() * 1000))
    signature = Signature.get_signature(
        secret, body.decode(), "v3", http_uri=PUBLIC_URL + path, timestamp=timestamp
    )
    return path, {"X-HubSpot-Signature-v3": signature, "X-HubSpot-Request-Timestamp": timestamp}


def stripe_signer(body: bytes, path: str, secret: str) -> tuple[str, dict[str, str]]:
    header = stripe.WebhookSignature.generate_signature_header(body.decode(), secret)
    return path, {"Stripe-Signature": header}


def calendly(body: bytes, path: str, secret: str) -> tuple[str, dict[str, str]]:
    stamp = str(int(time.time()))
    signature = _hmac(secret, f"{stamp}.".encode() + body).hex()
    return path, {"Calendly-Webhook-Signature": f"t={stamp},v1={signature}"}


def twilio(body: bytes, path: str, secret: str) -> tuple[str, dict[str, str]]:
    params = dict(parse_qsl(body.decode(), keep_blank_values=True))
    signature = RequestValidator(secret).compute_signature(PUBLIC_URL + path, params)
    return path, {"X-Twilio-Signature": signature}


def body_hmac(header: str, prefix: str = "", encoding: str = "hex") -> Signer:
    """Vendors that send an HMAC-SHA256 of the raw body in one header (GitHub, Shopify, Typeform, Tally)."""

    def sign(body: bytes, path: str, secret: str) -> tuple[str, dict[str, str]]:
        digest = _hmac(secret, body)
        return path, {header: prefix + (digest.hex() if encoding == "hex" else _b64(digest))}

    return sign


def apps_script(body: bytes, path: str, secret: str) -> tuple[str, dict[str, str]]:
    """What docs/senders.md's Apps Script sends: base64 HMAC-SHA256 of "<timestamp>.<body>"."""
    stamp = str(int(time.time()))
    signature = _b64(_hmac(secret, f"{stamp}.".encode() + body))
    return path, {"X-Relay-Timestamp": stamp, "X-Relay-Signature": signature}


def basic(body: bytes, path: str, secret: str) -> tuple[str, dict[str, str]]:
    return path, {"Authorization": "Basic " + _b64(secret.encode())}


def token_header(name: str) -> Signer:
    return lambda body, path, secret: (path, {name: secret})


def token_query(name: str) -> Signer:
    return lambda body, path, secret: (f"{path}?{urlencode({name: secret})}", {})


def unsigned(body: bytes, path: str, secret: str) -> tuple[str, dict[str, str]]:
    return path, {}


def sample(name: str) -> bytes:
    return (SAMPLES / name).read_bytes()


def github_form(name: str) -> bytes:
    """GitHub's form content type: the JSON document in one `payload` field."""
    return urlencode({"payload": sample(name).decode()}).encode()


def delivery_headers() -> dict[str, str]:
    return {"X-GitHub-Event": "issues", "X-GitHub-Delivery": str(uuid.uuid4()), "X-GitHub-Hook-ID": "4242"}


@dataclass(frozen=True)
class Example:
    """One sender example driven end to end."""

    id: str
    source: str  # also the config file's name: config/examples/<source>.yaml
    body: bytes
    content_type: str
    sign: Signer
    runs: list[tuple[str, dict[str, Any]]]  # (PHLO id, exact payload), in any order
    secret_env: str | None = None
    secret: str = ""
    headers: Callable[[], dict[str, str]] = dict
    reply: str = "json"  # json | batch | salesforce-ack | twiml
    wrong_secret: str = "not-the-secret"


EXAMPLE_TABLE = [
    Example(
        "hubspot-workflow",
        "hubspot-workflow",
        sample("hubspot-workflow.json"),
        "application/json",
        hubspot_v2,
        [
            (
                "17e24230-18e7-4386-b52c-61398f7943a5",
                {
                    "from": PLIVO_NUMBER,
                    "to": "+14155550124",
                    "first_name": "Jane",
                    "email": "jane@example.com",
                    "hubspot_contact_id": 3201,
                },
            )
        ],
        "HUBSPOT_WORKFLOW_CLIENT_SECRET",
        "yyyyyyyy-yyyy-yyyy-yyyy-yyyyyyyyyyyy",
    ),
    Example(
        "hubspot-app",
        "hubspot-app",
        sample("hubspot-app.json"),
        "application/json",
        hubspot_v3,
        [
            (
                "1af05e8d-bb0d-4e73-b40f-cbf9f9b2e6ad",
                {
                    "from": PLIVO_NUMBER,
                    "to": phone,
                    "hubspot_contact_id": contact,
                    "hubspot_portal_id": 62515,
                    "change_source": change_source,
                },
            )
            for phone, contact, change_source in [
                ("+14155550124", 3201, "CRM_UI"),
                ("+14155550125", 3202, "IMPORT"),
            ]
        ],
        "HUBSPOT_APP_CLIENT_SECRET",
        "3c1f8a52-7d4e-4b0a-9e6f-2a8b5c7d9e01",
        reply="batch",
    ),
    Example(
        "salesforce-outbound",
        "salesforce-outbound",
        sample("salesforce-outbound.xml"),
        "text/xml; charset=utf-8",
        token_query("token"),
        [
            (
                "0b2203a2-72b3-48bd-a9a8-9d358a71c601",
                {
                    "from": PLIVO_NUMBER,
                    "to": "+14155550126",
                    "first_name": "Jane",
                    "last_name": "Doe",
                    "email": "jane@example.com",
                    "salesforce_lead_id": "00Qxx000000W8jx3AAB",
                },
            ),
            (  # Email is xsi:nil: null, so the key is not sent
                "0b2203a2-72b3-48bd-a9a8-9d358a71c601",
                {
                    "from": PLIVO_NUMBER,
                    "to": "+14155550127",
                    "first_name": "Raj",
                    "last_name": "Patel",
                    "salesforce_lead_id": "00Qxx000000W8jy3AAB",
                },
            ),
        ],
        "SALESFORCE_OM_TOKEN",
        "f3b9c1d7e5a24b6c8d0e2f4a6b8c0d1e3f5a7b9c1d3e5f7a",
        lambda: {"SOAPAction": '""', "X-Forwarded-For": SALESFORCE_ADDRESS},
        reply="salesforce-ack",
    ),
    Example(
        "pipedrive",
        "pipedrive",
        sample("pipedrive.json"),
        "application/json",
        basic,
        [
            (
                "8d500533-1810-45b5-bff1-433546784bb6",
                {
                    "from": PLIVO_NUMBER,
                    "to": "+14155550128",
                    "name": "Maria Garcia",
                    "pipedrive_person_id": 1042,
                    "pipedrive_host": "acme.pipedrive.com",
                },
            )
        ],
        "PIPEDRIVE_WEBHOOK_AUTH",
        "pipedrive:kX9-vQ2-mR7",
        wrong_secret="pipedrive:wrong-password",
    ),
    Example(
        "zoho-crm",
        "zoho-crm",
        sample("zoho-crm.json"),
        "application/json",
        token_header("X-Relay-Token"),
        [
            (
                "8b6619d5-e689-48fd-8da8-beac7de164f0",
                {
                    "from": PLIVO_NUMBER,
                    "to": "+14155550129",
                    "first_name": "Priya",
                    "lead_source": "Web Download",
                    "zoho_lead_id": "5725767000000512001",
                },
            )
        ],
        "ZOHO_WEBHOOK_TOKEN",
        "zoho-5b1e9c7a3f",
    ),
    Example(
        "typeform",
        "typeform",
        sample("typeform.json"),
        "application/json",
        body_hmac("Typeform-Signature", prefix="sha256=", encoding="base64"),
        [
            (
                "9776c02f-ffd5-4343-a49a-6bcb12c06bc8",
                {
                    "from": PLIVO_NUMBER,
                    "to": "+14155550125",
                    "email": "laura@example.com",
                    "form_title": "Webhooks example",
                    "typeform_response_token": "a3a12ec67a1365927098a606107fac15",
                },
            )
        ],
        "TYPEFORM_WEBHOOK_SECRET",
        "test_secret",
    ),
    Example(
        "jotform",
        "jotform",
        sample("jotform.multipart"),
        "multipart/form-data; boundary=------------------------J1JNT4vbVO4FCC1qLG4HSv",
        token_query("token"),
        [
            (
                "108e6eab-aa51-49b7-81a6-09c8fd3e5f11",
                {
                    "from": PLIVO_NUMBER,
                    "to": "+14155550140",
                    "first_name": "Niloth",
                    "form_title": "Tutor Appointment Form",
                    "jotform_submission_id": "6084250982513018472",
                },
            )
        ],
        "JOTFORM_WEBHOOK_TOKEN",
        "jf-7c2d9e4b1a",
    ),
    Example(
        "tally",
        "tally",
        sample("tally.json"),
        "application/json",
        body_hmac("Tally-Signature", encoding="base64"),
        [
            (
                "07c84eae-fddc-4436-85cc-0ef8e0236cf2",
                {
                    "from": PLIVO_NUMBER,
                    "to": "+14155550132",
                    "name": "Tom Baker",
                    "form_name": "Book a demo",
                    "tally_response_id": "2wgx4n",
                },
            )
        ],
        "TALLY_SIGNING_SECRET",
        "tally-signing-secret",
    ),
    Example(
        "google-forms",
        "google-forms",
        sample("google-forms.json"),
        "application/json; charset=utf-8",
        apps_script,
        [
            (
                "e869917d-b804-405a-b5e8-477f1ff9737d",
                {
                    "from": PLIVO_NUMBER,
                    "to": "+14155550133",
                    "name": "Ana Lima",
                    "form_title": "Request a callback",
                    "google_response_id": (
                        "2_ABaOnuePkkRkRVdAXAphfuzDhbJOUvHQyjzY1K3nTf3qS4rpDLAwnV3sEWu_FAVR5qRg0hE"
                    ),
                },
            )
        ],
        "GOOGLE_FORMS_RELAY_SECRET",
        "apps-script-secret",
    ),
    Example(
        "calendly",
        "calendly",
        sample("calendly.json"),
        "application/json",
        calendly,
        [
            (
                "138a5e9b-84ab-4b96-a1ec-c87997193358",
                {
                    "from": PLIVO_NUMBER,
                    "to": "+14155550134",
                    "name": "Betty Lopez",
                    "meeting": "30 Minute Meeting",
                    "start_time": "2024-03-14T15:00:00.000000Z",
                    "cancel_url": "https://calendly.com/cancellations/FXDTPJ3U4QCUKXWV",
                },
            )
        ],
        "CALENDLY_WEBHOOK_SIGNING_KEY",
        "calendly-signing-key",
    ),
    Example(
        "stripe",
        "stripe",
        sample("stripe.json"),
        "application/json; charset=utf-8",
        stripe_signer,
        [
            (
                "00dfb615-d3d0-4162-9729-16562428ea79",
                {
                    "from": PLIVO_NUMBER,
                    "to": "+14155550135",
                    "name": "Sam Carter",
                    "amount_total": 4900,
                    "currency": "usd",
                    "stripe_session_id": "cs_test_a1b2c3d4e5f6g7h8i9j0",
                },
            )
        ],
        "STRIPE_WEBHOOK_SECRET",
        "whsec_test_3kTqYz8vN1pL5mR2",
        wrong_secret="whsec_not_the_secret",
    ),
    *[
        Example(
            name,
            "github",
            body,
            content_type,
            body_hmac("X-Hub-Signature-256", prefix="sha256="),
            [
                (
                    "f68f2f73-c921-4d59-bc11-7cabbd9fefaa",
                    {
                        "from": PLIVO_NUMBER,
                        "to": "+14155550142",
                        "repository": "acme/shop",
                        "issue_title": "Checkout returns 502 for EU customers",
                        "issue_url": "https://github.com/acme/shop/issues/512",
                        "labelled_by": "hubot",
                    },
                )
            ],
            "GITHUB_WEBHOOK_SECRET",
            "It's a Secret to Everybody",
            delivery_headers,
        )
        for name, body, content_type in [
            ("github", sample("github.json"), "application/json"),
            ("github-form", github_form("github.json"), "application/x-www-form-urlencoded"),
        ]
    ],
    Example(
        "shopify",
        "shopify",
        sample("shopify.json"),
        "application/json",
        body_hmac("X-Shopify-Hmac-Sha256", encoding="base64"),
        [
            (
                "4dfea28e-a0b2-46fe-9bdc-df00af478aee",
                {
                    "from": PLIVO_NUMBER,
                    "to": "+14155550136",  # the order has no phone: the customer's
                    "first_name": "Kim",
                    "order_name": "#1001",
                    "total_price": "59.00",
                    "currency": "USD",
                },
            )
        ],
        "SHOPIFY_WEBHOOK_SECRET",
        "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",
        lambda: {
            "X-Shopify-Topic": "orders/create",
            "X-Shopify-Event-Id": str(uuid.uuid4()),
            "X-Shopify-Webhook-Id": str(uuid.uuid4()),
            "X-Shopify-Shop-Domain": "acme.myshopify.com",
            "X-Shopify-API-Version": "2024-07",
            "X-Shopify-Triggered-At": "2024-06-10T15:02:04.123Z",
        },
    ),
    Example(
        "twilio",
        "twilio",
        sample("twilio.urlencoded"),
        "application/x-www-form-urlencoded",
        twilio,
        [
            (
                "ad92d6b3-b3c4-49b1-8a12-ced0865102fc",
                {
                    "from": PLIVO_NUMBER,
                    "to": "+14155550138",
                    "twilio_message_sid": "SM0123456789abcdef0123456789abcdef",
                    "twilio_error_code": "30003",
                },
            )
        ],
        "TWILIO_AUTH_TOKEN",
        "12345",
        reply="twiml",
    ),
    Example(
        "website-form",
        "website-form",
        sample("website-form.urlencoded"),
        "application/x-www-form-urlencoded",
        unsigned,
        [
            (
                "173e29d0-4443-49a3-a7f9-bffe02ffbfb7",
                {
                    "from": PLIVO_NUMBER,
                    "to": "+14155550199",
                    "visitor_phone": "+14155550139",
                    "visitor_name": "Ada Lovelace",
                    "page": "/pricing",
                },
            )
        ],
    ),
]
watch_secrets(*(example.secret for example in EXAMPLE_TABLE))
SIGNED = [example for example in EXAMPLE_TABLE if example.secret_env is not None]
SECRETS = {  # the environment each example's config needs
    example.source: {example.secret_env: example.secret} if example.secret_env else {}
    for example in EXAMPLE_TABLE
}


def _ids(examples: list[Example]) -> list[Any]:
    return [pytest.param(example, id=example.id) for example in examples]


def test_every_example_has_a_config_a_sample_and_a_row() -> None:
    configs = {path.stem for path in EXAMPLES.glob("*.yaml")}
    assert configs == {example.source for example in EXAMPLE_TABLE}
    samples = {path.name.partition(".")[0] for path in SAMPLES.iterdir()}
    assert samples == configs
    for name in configs:  # one source per file, named like the file
        assert list(load_config(EXAMPLES / f"{name}.yaml").sources) == [name]


@pytest.mark.parametrize("source", sorted(SECRETS))
def test_relay_check_accepts_the_example_with_its_secrets_set(source: str) -> None:
    path, secrets = f"config/examples/{source}.yaml", SECRETS[source]
    checked = subprocess.run(
        [sys.executable, "-m", "relay", "check", path],
        cwd=ROOT,
        env=clean_environment(**secrets),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert checked.returncode == 0, checked.stderr
    assert f"{path}: OK" in checked.stdout
    if secrets:  # and names the variable when it is not set
        unset = subprocess.run(
            [sys.executable, "-m", "relay", "check", path],
            cwd=ROOT,
            env=clean_environment(),
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert unset.returncode != 0
        assert all(variable in unset.stderr + unset.stdout for variable in secrets)


@pytest.fixture(scope="module")
def any_phlo_sandbox() -> Iterator[SandboxThread]:
    """A runner sandbox that knows every PHLO id: the examples use their own."""
    config = SandboxConfig(credentials={SANDBOX_AUTH_ID: SANDBOX_AUTH_TOKEN}, phlo_ids=None)
    with SandboxThread(config) as sandbox:
        yield sandbox


@pytest.fixture
def runner(any_phlo_sandbox: SandboxThread) -> Iterator[Sandbox]:
    yield from sandbox_handle(any_phlo_sandbox)


def us_afternoon_s() -> float:
    """The next 14:00 in New York (11:00 in Los Angeles), in epoch seconds."""
    zone = ZoneInfo("America/New_York")
    day = datetime.now(zone).date() + timedelta(days=1)
    return datetime(day.year, day.month, day.day, 14, tzinfo=zone).timestamp()


@dataclass
class Relay:
    """An example's ingress under test, and the settings its worker runs with."""

    settings: Settings
    client: Any = field(repr=False)

    async def post(self, example: Example, secret: str) -> Any:
        path, signed = example.sign(example.body, f"/hooks/{example.source}", secret)
        headers = {"Content-Type": example.content_type, **example.headers(), **signed}
        return await self.client.post(path, data=example.body, headers=headers)


async def start_relay(
    example: Example,
    aiohttp_client: AiohttpClient,
    redis_server: EmbeddedRedis,
    sandbox_url: str,
) -> Relay:
    settings = load_settings(
        _env_file=None,
        redis_url=redis_server.url,
        runner_url=sandbox_url,
        plivo_auth_id=SANDBOX_AUTH_ID,
        plivo_auth_token=SANDBOX_AUTH_TOKEN,
        config_path=EXAMPLES / f"{example.source}.yaml",
        public_url=PUBLIC_URL,
        # The test client connects from loopback: it plays the load balancer in front of the relay, so
        # that Salesforce's X-Forwarded-For address is believed (URL schemes use RELAY_PUBLIC_URL).
        trusted_proxies=["127.0.0.1/32", "::1/128"],
        retry_base_delay_s=0,
        runner_read_timeout_s=2.0,
        # Some examples have quiet hours: their runs go at once only by day in their zones (US ones).
        clock_offset_s=us_afternoon_s() - time.time(),
        admin_token=SUITE_ADMIN_TOKEN,  # GET /events/{id} shows what became of a sample
    )
    config = load_config(settings.config_path)
    client = await aiohttp_client(create_app(settings, config, environ=SECRETS[example.source]))
    return Relay(settings, client)


async def assert_answer(example: Example, response: Any) -> None:
    """The answer the vendor expects: JSON naming each event's jobs, or the XML it needs."""
    if example.reply == "salesforce-ack":
        assert (response.status, response.content_type) == (200, "text/xml")
        assert await response.text() == SALESFORCE_ACK
        return
    if example.reply == "twiml":
        assert (response.status, response.content_type) == (200, "text/xml")
        assert xmltodict.parse(await response.text()) == {"Response": None}  # an empty <Response>
        return
    assert (response.status, response.content_type) == (202, "application/json")
    answer = await response.json()
    events = answer["events"] if example.reply == "batch" else [answer]
    assert [event["status"] for event in events] == ["accepted"] * len(events)
    jobs = [(job["phlo_id"], job["route"]) for event in events for job in event["jobs"]]
    assert sorted(phlo_id for phlo_id, _ in jobs) == sorted(phlo_id for phlo_id, _ in example.runs)
    assert all(event["event_id"] and event["dead_lettered"] == [] for event in events)


@pytest.mark.parametrize("example", _ids(EXAMPLE_TABLE))
async def test_signed_sample_runs_the_examples_phlo_with_the_exact_payload(
    example: Example,
    aiohttp_client: AiohttpClient,
    redis_server: EmbeddedRedis,
    redis: Redis,
    runner: Sandbox,
) -> None:
    relay = await start_relay(example, aiohttp_client, redis_server, runner.url)
    await assert_answer(example, await relay.post(example, example.secret))

    await asyncio.to_thread(drain_queue, relay.settings)

    received = sorted(runner.runs(), key=lambda run: (run["path"], run["raw_body"]))
    expected = sorted(example.runs, key=lambda run: (run[0], json.dumps(run[1])))
    assert len(received) == len(expected), received
    for run, (phlo_id, payload) in zip(received, expected, strict=True):
        assert_sdk_request(run, phlo_id, payload)


@pytest.mark.parametrize("example", _ids(SIGNED))
async def test_a_wrong_secret_is_refused_with_401_and_nothing_is_queued(
    example: Example,
    aiohttp_client: AiohttpClient,
    redis_server: EmbeddedRedis,
    redis: Redis,
    runner: Sandbox,
) -> None:
    relay = await start_relay(example, aiohttp_client, redis_server, runner.url)
    response = await relay.post(example, example.wrong_secret)
    assert (response.status, response.content_type) == (401, "application/json")
    assert (await response.json())["error"] == "verification_failed"
    assert Queue(relay.settings.queue_name, connection=redis).count == 0


async def test_github_ping_is_answered_200_without_a_run(
    aiohttp_client: AiohttpClient, redis_server: EmbeddedRedis, redis: Redis, runner: Sandbox
) -> None:
    [github] = [example for example in EXAMPLE_TABLE if example.id == "github"]
    ping = replace(
        github,
        body=json.dumps(
            {"zen": "Design for failure.", "hook_id": 4242, "hook": {"type": "Repository"}}
        ).encode(),
        headers=lambda: {**delivery_headers(), "X-GitHub-Event": "ping"},
    )
    relay = await start_relay(ping, aiohttp_client, redis_server, runner.url)
    response = await relay.post(ping, ping.secret)
    assert response.status == 200
    assert Queue(relay.settings.queue_name, connection=redis).count == 0


async def test_salesforce_from_outside_its_networks_is_refused_even_with_the_token(
    aiohttp_client: AiohttpClient, redis_server: EmbeddedRedis, redis: Redis, runner: Sandbox
) -> None:
    [salesforce] = [example for example in EXAMPLE_TABLE if example.id == "salesforce-outbound"]
    elsewhere = replace(salesforce, headers=lambda: {"SOAPAction": '""', "X-Forwarded-For": "203.0.113.9"})
    relay = await start_relay(elsewhere, aiohttp_client, redis_server, runner.url)
    response = await relay.post(elsewhere, elsewhere.secret)
    assert response.status == 401
    assert "203.0.113.9" in (await response.json())["message"]
    assert Queue(relay.settings.queue_name, connection=redis).count == 0
