"""Log lines: one JSON object per line with the request's or job's context, PII masked, no secret ever.

The last test runs a real ``relay serve`` and ``relay worker --burst`` with a secret-bearing config and
reads every byte they write to stderr.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import io
import json
import logging
import secrets
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiohttp import web
from aiohttp.test_utils import make_mocked_request
from pydantic import SecretStr
from redis import Redis
from rq.logutils import setup_loghandlers

from relay.dev.redis_server import EmbeddedRedis, free_port
from relay.infra.logs import (
    RelayTextFormatter,
    _Scrubber,
    bind,
    build_handler,
    configure_logging,
    mask_pii,
    register_secrets,
    settings_secrets,
)
from relay.ingress.app import create_app
from relay.ingress.state import EXECUTOR, in_thread
from relay.mapping.config import load_config
from relay.runner.sandbox import SANDBOX_AUTH_ID, SANDBOX_AUTH_TOKEN
from relay.settings import PlivoAccount, Settings, load_settings
from tests.conftest import KNOWN_PHLO, UNKNOWN_PHLO, Sandbox, answers, clean_environment, poll

PHONE, PHONE_MASKED = "+14155550123", "+1415*****23"
EMAIL, EMAIL_MASKED = "ada@example.com", "a***@example.com"


def log_settings(**overrides: Any) -> Settings:
    return load_settings(_env_file=None, **overrides)


@contextlib.contextmanager
def captured(settings: Settings, name: str = "relay.test") -> Iterator[tuple[logging.Logger, io.StringIO]]:
    """A logger whose lines go, as the relay writes them, to a string."""
    stream = io.StringIO()
    handler = build_handler(settings, stream)
    logger = logging.getLogger(name)
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    try:
        yield logger, stream
    finally:
        logger.removeHandler(handler)
        logger.propagate = True


def lines_of(stream: io.StringIO) -> list[dict[str, Any]]:
    text = stream.getvalue()
    assert text.endswith("\n")
    return [json.loads(line) for line in text.splitlines()]


def test_a_json_line_holds_time_level_logger_message_context_and_extra_fields() -> None:
    with captured(log_settings()) as (logger, stream), bind(request_id="req-1", source="website-form"):
        with bind(event_id="evt_1", route="callback", job_id="evt_1-callback"):
            logger.info("run %s succeeded", "evt_1-callback", extra={"outcome": "succeeded", "attempt": 2})
        logger.warning("outside the inner block")
    first, second = lines_of(stream)
    assert list(first)[:4] == ["time", "level", "logger", "message"]
    assert datetime.fromisoformat(first["time"]).utcoffset().total_seconds() == 0  # type: ignore[union-attr]
    assert first["time"].endswith("Z")
    assert first | {"time": None} == {
        "time": None,
        "level": "INFO",
        "logger": "relay.test",
        "message": "run evt_1-callback succeeded",
        "request_id": "req-1",
        "source": "website-form",
        "event_id": "evt_1",
        "route": "callback",
        "job_id": "evt_1-callback",
        "outcome": "succeeded",
        "attempt": 2,
    }
    assert second["level"] == "WARNING"
    assert {"event_id", "route", "job_id", "outcome"}.isdisjoint(second)
    assert second["request_id"] == "req-1"


def test_an_exception_is_one_line_with_its_traceback_inside() -> None:
    with captured(log_settings()) as (logger, stream):
        try:
            raise ValueError("the runner said no")
        except ValueError:
            logger.exception("run failed")
    assert stream.getvalue().count("\n") == 1
    [line] = lines_of(stream)
    assert line["message"] == "run failed"
    assert "Traceback" in line["exc_info"] and "ValueError: the runner said no" in line["exc_info"]


def test_the_text_format_is_one_readable_line_with_its_fields() -> None:
    with captured(log_settings(log_format="text")) as (logger, stream), bind(request_id="req-7"):
        logger.info("event %s from %s: accepted", "evt_9", "typeform", extra={"reason": "two words"})
    line = stream.getvalue().rstrip("\n")
    assert "\n" not in line
    clock, level, name, rest = line.split(maxsplit=3)
    assert datetime.strptime(clock, "%H:%M:%S.%f")
    assert (level, name) == ("INFO", "relay.test:")
    assert rest == 'event evt_9 from typeform: accepted  [reason="two words" request_id=req-7]'


async def test_each_asyncio_task_logs_its_own_context() -> None:
    async def request(number: int) -> None:
        with bind(request_id=f"req-{number}"):
            for _ in range(3):
                await asyncio.sleep(0)  # the tasks interleave
                logging.getLogger("relay.test").info("working on %d", number)

    with captured(log_settings()) as (_, stream):
        await asyncio.gather(*(request(number) for number in range(5)))
    lines = lines_of(stream)
    assert len(lines) == 15
    assert all(line["request_id"] == f"req-{line['message'].split()[-1]}" for line in lines)


async def test_lines_logged_on_the_ingress_redis_threads_carry_the_request_context() -> None:
    app = web.Application()
    with ThreadPoolExecutor(2) as executor:
        app[EXECUTOR] = executor

        def store() -> str:
            logging.getLogger("relay.test").info("stored")
            return threading.current_thread().name

        with captured(log_settings()) as (_, stream), bind(request_id="req-thread", source="typeform"):
            thread = await in_thread(make_mocked_request("POST", "/hooks/typeform", app=app), store)
    assert thread != threading.current_thread().name
    [line] = lines_of(stream)
    assert (line["request_id"], line["source"]) == ("req-thread", "typeform")


def test_phone_numbers_and_emails_are_masked_in_messages_and_fields_unless_turned_off() -> None:
    message = "call %s or (415) 555-0199, mail %s"
    extra = {"to": PHONE, "nested": {"emails": [EMAIL]}, "source_event_id": "020 7946 0958"}
    with captured(log_settings()) as (logger, stream):
        logger.info(message, PHONE, EMAIL, extra=extra)
    [line] = lines_of(stream)
    assert line["message"] == f"call {PHONE_MASKED} or (415) ***-**99, mail {EMAIL_MASKED}"
    assert line["to"] == PHONE_MASKED
    assert line["nested"] == {"emails": [EMAIL_MASKED]}
    assert line["source_event_id"] == "020 **** **58"

    with captured(log_settings(log_mask_pii=False)) as (logger, stream):
        logger.info(message, PHONE, EMAIL, extra=extra)
    [line] = lines_of(stream)
    assert line["message"] == f"call {PHONE} or (415) 555-0199, mail {EMAIL}"
    assert line["to"] == PHONE
    assert line["nested"] == {"emails": [EMAIL]}


@pytest.mark.parametrize(
    "text",
    [
        "evt_0123456789abcdef0123456789abcdef",
        "evt_56d8a1b2-website-callback",
        "8f0a6c2e-7b6c-4d8e-9f0a-1b2c3d4e5f60",
        "12345678-1234-5678-1234-567812345678",
        "2025-05-01T12:00:00.123Z",
        "2025-05-01 12:00:00,123",
        "1714567890.123456",
        "1714567890123",
        "http://127.0.0.1:8080/hooks/website-form",
        "10.100.200.30",
        "runner answered HTTP 503: retry in 12.3 s",
        "Worker 3f2a9c: started with PID 1234567, version 3.0.0",
        "sub-1001",
        "took 1234.567 ms",
        "offset +00:00",
    ],
)
def test_ids_uuids_timestamps_addresses_and_statuses_are_not_masked(text: str) -> None:
    assert mask_pii(text) == text


@pytest.mark.parametrize(
    ("text", "masked"),
    [
        ("+44 20 7946 0958", "+44 20 **** **58"),
        ("415-555-0123", "415-***-**23"),
        ("415.555.0123", "415.***.**23"),
        ("555-0123", "5**-**23"),
        ("lovelace+relay@mail.example.co.uk", "l***@mail.example.co.uk"),
    ],
)
def test_common_phone_and_email_formats_are_masked(text: str, masked: str) -> None:
    assert mask_pii(f"to {text}.") == f"to {masked}."


def test_secrets_of_the_settings_and_registered_ones_never_appear_whatever_the_masking() -> None:
    settings = log_settings(
        plivo_auth_id="MAXXXXXXXXXXXXXXXXXX",
        plivo_auth_token="plivo-token-" + secrets.token_hex(8),
        admin_token="admin-" + secrets.token_hex(8),
        redis_sentinel_password="sentinel-" + secrets.token_hex(8),
        redis_url="redis://:p%40ss-" + secrets.token_hex(4) + "@127.0.0.1:6379/0",
        accounts={"eu": PlivoAccount(auth_id="MAEU", auth_token=SecretStr(f"eu-{secrets.token_hex(8)}"))},
        log_mask_pii=False,
    )
    known = [
        value.get_secret_value() if isinstance(value, SecretStr) else value
        for value in settings_secrets(settings)
    ]
    signing = 'sign"ing\\' + secrets.token_hex(8)  # JSON escapes it inside a serialized object
    register_secrets([*settings_secrets(settings), signing])
    assert len(known) == 6 and any(value.startswith("p@ss-") for value in known)
    for settings_format in (settings, settings.model_copy(update={"log_format": "text"})):
        with captured(settings_format) as (logger, stream):
            for value in [*known, signing]:
                logger.info("leaked %s", value, extra={"header": f"Bearer {value}", "obj": [value]})
                try:
                    raise RuntimeError(f"with {value}")
                except RuntimeError:
                    logger.exception("failed")
        output = stream.getvalue()
        assert all(value not in output for value in [*known, signing]), output
        assert json.dumps(signing)[1:-1] not in output
        assert output.count("leaked ***") == len(known) + 1


def test_rq_keeps_its_handlers_off_and_its_payload_arguments_out(tmp_path: Path) -> None:
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    try:
        configure_logging(log_settings())
        setup_loghandlers("INFO", name="rq.worker")  # what a worker's work() does
        assert logging.getLogger("rq.worker").handlers == []
    finally:
        root.handlers[:], root.level = saved
    with captured(log_settings(), name="rq.worker") as (logger, stream):
        payload = {"kwargs": {"payload": {"name": "Ada"}}, "arguments": ["Ada"]}
        logger.error("job failed", extra={**payload, "func": "relay.worker.job.deliver"})
    [line] = lines_of(stream)
    assert "kwargs" not in line and "arguments" not in line
    assert line["func"] == "relay.worker.job.deliver"


def test_relay_dev_reads_text_unless_the_format_is_set_explicitly() -> None:
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    try:
        assert configure_logging(log_settings(), default_format="text").log_format == "text"
        explicit = log_settings(log_format="json")
        assert configure_logging(explicit, default_format="text").log_format == "json"
        assert configure_logging(log_settings()).log_format == "json"
    finally:
        root.handlers[:], root.level = saved


async def test_a_sane_request_id_is_echoed_and_any_other_replaced(
    aiohttp_client: Any, settings: Settings
) -> None:
    client = await aiohttp_client(create_app(settings, load_config(settings.config_path)))
    sane = await client.get("/events/evt_none", headers={"X-Request-Id": "lb-4f2a:9"})
    assert sane.headers["X-Request-Id"] == "lb-4f2a:9"
    for insane in ("two words", "x" * 200, "<script>"):
        response = await client.get("/events/evt_none", headers={"X-Request-Id": insane})
        assert len(response.headers["X-Request-Id"]) == 32
    fresh = [(await client.get("/events/evt_none")).headers["X-Request-Id"] for _ in range(2)]
    assert fresh[0] != fresh[1]


SIGNED_CONFIG = f"""
sources:
  signed-form:
    verify: {{scheme: hmac, header: X-Signature, secrets: [FORM_SIGNING_SECRET]}}
    event_id: {{path: submission_id}}
    event_type: {{path: form}}
routes:
  - name: callback
    source: signed-form
    events: [callback-request]
    phlo_id: {KNOWN_PHLO}
    payload: {{to: {{path: phone, required: true}}, email: {{path: email}}}}
  - name: not-deployed
    source: signed-form
    events: [survey]
    phlo_id: {UNKNOWN_PHLO}
    payload: {{to: {{path: phone, required: true}}}}
"""


def parsed_lines(raw: bytes) -> list[dict[str, Any]]:
    """Every line of a process's stderr, each of which must be one JSON object."""
    lines = [json.loads(line) for line in raw.decode().splitlines()]
    assert all(isinstance(line, dict) for line in lines)
    return lines


def one(lines: list[dict[str, Any]], **fields: Any) -> dict[str, Any]:
    [line] = [line for line in lines if all(line.get(key) == value for key, value in fields.items())]
    return line


def test_serve_and_worker_write_only_json_lines_with_context_masked_pii_and_no_secret(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    signing_secret = "whk-" + secrets.token_hex(16)
    redis_password = "rds-" + secrets.token_hex(16)
    secret_values = {
        "signing secret": signing_secret,
        "admin token": "adm-" + secrets.token_hex(16),
        "sentinel password": "snt-" + secrets.token_hex(16),
        "Redis password": redis_password,
        "Plivo token": SANDBOX_AUTH_TOKEN,
    }
    config_path = tmp_path / "routes.yaml"
    config_path.write_text(SIGNED_CONFIG, encoding="utf-8")
    with EmbeddedRedis(tmp_path / "redis", appendonly=False) as redis_server:
        Redis.from_url(redis_server.url).config_set("requirepass", redis_password)
        settings = log_settings(
            redis_url=f"redis://:{redis_password}@127.0.0.1:{redis_server.port}/0",
            runner_url=sandbox.url,
            plivo_auth_id=SANDBOX_AUTH_ID,
            plivo_auth_token=SANDBOX_AUTH_TOKEN,
            admin_token=secret_values["admin token"],
            redis_sentinel_password=secret_values["sentinel password"],
            config_path=config_path,
            retry_base_delay_s=0,
            port=free_port(),
            log_level="DEBUG",  # the most lines: RQ's and the libraries' own too
        )
        env = clean_environment(**settings.as_environment(), FORM_SIGNING_SECRET=signing_secret)
        serve_log = tmp_path / "serve.stderr"
        url = f"http://127.0.0.1:{settings.port}"
        with serve_log.open("wb") as stderr:
            serve = subprocess.Popen(
                [sys.executable, "-m", "relay", "serve"], env=env, stdout=subprocess.DEVNULL, stderr=stderr
            )
        try:
            poll(lambda: answers(f"{url}/events/none"))
            post = _signed_poster(f"{url}/hooks/signed-form", signing_secret)
            form = {"submission_id": "sub-a", "form": "callback-request", "phone": PHONE, "email": EMAIL}
            accepted = post(form, "req-e2e-accepted")
            assert accepted.status_code == 202, accepted.text
            assert accepted.headers["X-Request-Id"] == "req-e2e-accepted"
            # A request id that is a secret (a client echoing a token) is still never written.
            refused = post({**form, "submission_id": "sub-x"}, signing_secret, signature="00" * 32)
            assert refused.status_code == 401
            assert post(form, secret_values["admin token"]).json()["status"] == "duplicate"
            survey = post({"submission_id": "sub-b", "form": "survey", "phone": PHONE}, "req-e2e-survey")
            assert survey.status_code == 202
        finally:
            serve.terminate()
            serve.wait(timeout=30)
        event_a, event_b = accepted.json()["event_id"], survey.json()["event_id"]
        job_a, job_b = f"{event_a}-callback", f"{event_b}-not-deployed"

        # The runner fails once with a message echoing the number, the address and even the token. One run
        # at a time, so that the first request, the one that fails, is the first job's.
        sandbox.fail(500, 1, error=f"cannot reach {PHONE} for {EMAIL} with {SANDBOX_AUTH_TOKEN}")
        worker = subprocess.run(
            [sys.executable, "-m", "relay", "worker", "--burst", "--concurrency", "1"],
            env=env,
            capture_output=True,
            timeout=60,
        )
        assert worker.returncode == 0, worker.stderr.decode()
    assert [run["status"] for run in sandbox.runs()] == [500, 404, 201]

    serve_raw, worker_raw = serve_log.read_bytes(), worker.stderr
    for name, value in secret_values.items():
        assert value.encode() not in serve_raw + worker_raw, f"the {name} was logged"
    assert PHONE.encode() not in serve_raw + worker_raw and EMAIL.encode() not in serve_raw + worker_raw
    ingress, delivery = parsed_lines(serve_raw), parsed_lines(worker_raw)

    source = {"source": "signed-form"}
    line = one(ingress, outcome="accepted", event_id=event_a)
    assert line | {"request_id": "req-e2e-accepted", **source, "runs": 1} == line
    line = one(ingress, outcome="refused")
    assert line | {"request_id": "***", **source, "status": 401, "error": "verification_failed"} == line
    assert one(ingress, outcome="duplicate") | {"event_id": event_a, "request_id": "***"}
    assert one(ingress, outcome="accepted", event_id=event_b)["request_id"] == "req-e2e-survey"
    # A webhook's own lines say what became of it; other requests get an access line.
    access = [line for line in ingress if line["logger"] == "aiohttp.access"]
    assert [line for line in access if line["path"].startswith("/hooks/")] == []
    assert access and all(isinstance(line["duration_ms"], float) for line in access)
    assert {(line["method"], line["path"], line["status"]) for line in access} == {
        ("GET", "/events/none", 401)  # the admin token is set: the route is there, and refuses
    }

    context_a = {"job_id": job_a, "event_id": event_a, "route": "callback", **source}
    failed = one(delivery, outcome="failed", job_id=job_a)
    assert failed | context_a == failed
    assert f"cannot reach {PHONE_MASKED} for {EMAIL_MASKED} with ***" in failed["message"]
    succeeded = one(delivery, outcome="succeeded")
    assert succeeded | context_a == succeeded
    dead = one(delivery, outcome="dead_lettered")
    assert dead | {"job_id": job_b, "event_id": event_b, "route": "not-deployed", **source} == dead
    # RQ's own lines of a job carry its context too, its exception line with the masked message.
    rq_lines = [line for line in delivery if line["logger"].startswith("rq.") and line.get("job_id") == job_a]
    assert any("exception raised" in line["message"] and PHONE_MASKED in line["message"] for line in rq_lines)
    assert any("Job OK" in line["message"] and line["route"] == "callback" for line in rq_lines)


def _signed_poster(url: str, secret: str) -> Callable[..., httpx.Response]:
    def post(body: dict[str, Any], request_id: str, signature: str | None = None) -> httpx.Response:
        content = json.dumps(body).encode()
        digest = hmac.new(secret.encode(), content, hashlib.sha256).hexdigest()
        headers = {
            "Content-Type": "application/json",
            "X-Signature": signature or digest,
            "X-Request-Id": request_id,
        }
        return httpx.post(url, content=content, headers=headers)

    return post


def test_a_line_break_a_sender_put_in_a_text_line_cannot_forge_another_line() -> None:
    """Regression (found by the security suite's author): a refused path with %0A started a new text line."""
    formatter = RelayTextFormatter(_Scrubber(mask_pii=True))
    record = logging.LogRecord(
        "relay.ingress.app", logging.WARNING, "x", 1, "refused /hooks/a\nFORGED", None, None
    )
    assert "\n" not in formatter.format(record)
