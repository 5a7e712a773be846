"""End to end with real parts: ingress over HTTP, Redis, `relay worker`, the runner sandbox over HTTP."""

from __future__ import annotations

import zlib
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from redis import Redis
from rq.job import Job
from rq.registry import FailedJobRegistry
from rq.serializers import JSONSerializer

from relay.ingress.app import create_app
from relay.mapping.config import RelayConfig
from relay.outcome.replay import replay
from relay.runner.sandbox import SANDBOX_AUTH_TOKEN
from relay.settings import Settings
from tests.conftest import (
    ADMIN_HEADERS,
    ALERT_PHLO,
    KNOWN_PHLO,
    UNKNOWN_PHLO,
    Sandbox,
    assert_sdk_request,
    drain_queue,
    with_admin_token,
)

FORM = {"submission_id": "sub-1", "form": "callback-request", "name": "Ada", "phone": "+14155550123"}


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """These tests read the outcome on ``GET /events/{id}``, which takes the admin token."""
    return with_admin_token(settings)


def failure_reason(job: Job) -> str:
    """The reason RQ (and so rq-dashboard) shows for a failed job."""
    result = job.latest_result()
    assert result is not None
    return result.exc_string or ""


async def post(
    client: TestClient[web.Request, web.Application], source: str, body: Any, **kwargs: Any
) -> tuple[int, dict[str, Any]]:
    response = await client.post(f"/hooks/{source}", json=body, **kwargs)
    return response.status, await response.json()


async def event(client: TestClient[web.Request, web.Application], event_id: str) -> dict[str, Any]:
    response = await client.get(f"/events/{event_id}", headers=ADMIN_HEADERS)
    assert response.status == 200
    data: dict[str, Any] = await response.json()
    return data


async def test_webhook_becomes_exactly_the_sdk_request_and_the_outcome_shows_the_run_id(
    aiohttp_client: Any, settings: Settings, config: RelayConfig, sandbox: Sandbox, redis: Redis
) -> None:
    client = await aiohttp_client(create_app(settings, config))
    status, body = await post(client, "website-form", FORM)
    assert status == 202
    assert body["status"] == "accepted"
    assert body["source_event_id"] == "sub-1"
    assert [job["route"] for job in body["jobs"]] == ["callback"]
    # The answer comes only once the job is stored: it is in Redis before any worker ran.
    assert Job.exists(body["jobs"][0]["job_id"], connection=redis)

    drain_queue(settings)

    [run] = sandbox.runs()
    assert_sdk_request(run, KNOWN_PHLO, {"from": "+14155550100", "to": "+14155550123", "name": "Ada"})
    assert run["status"] == 201

    outcome = await event(client, body["event_id"])
    assert outcome["event"]["source"] == "website-form"
    assert outcome["event"]["event_type"] == "callback-request"
    [recorded] = outcome["runs"]
    assert recorded["status"] == "succeeded"
    assert recorded["phlo_run_id"] == run["api_id"]
    assert run["api_id"] in recorded["message"]
    assert recorded["attempts"] == 1
    assert recorded["http_status"] == 201


async def test_fan_out_runs_every_matching_route(
    aiohttp_client: Any, settings: Settings, config: RelayConfig, sandbox: Sandbox
) -> None:
    client = await aiohttp_client(create_app(settings, config))
    status, body = await post(client, "website-form", {**FORM, "company_size": "500+"})
    assert status == 202
    assert sorted(job["route"] for job in body["jobs"]) == ["callback", "sales-alert"]
    drain_queue(settings)
    by_phlo = {run["phlo_id"]: run for run in sandbox.runs()}
    assert set(by_phlo) == {KNOWN_PHLO, ALERT_PHLO}
    assert by_phlo[ALERT_PHLO]["body"] == {"to": "+14155550199", "lead": "+14155550123"}
    runs = (await event(client, body["event_id"]))["runs"]
    assert [run["status"] for run in runs] == ["succeeded", "succeeded"]


async def test_a_worker_keeps_its_runner_connection_from_job_to_job(
    aiohttp_client: Any, settings: Settings, config: RelayConfig, sandbox: Sandbox
) -> None:
    client = await aiohttp_client(create_app(settings, config))
    for number in range(3):
        status, _ = await post(client, "website-form", {**FORM, "submission_id": f"sub-{number}"})
        assert status == 202
    drain_queue(settings, "--concurrency", "1")  # one at a time: each reuses the one connection
    runs = sandbox.runs()
    assert len(runs) == 3
    assert len({run["client_port"] for run in runs}) == 1


async def test_form_urlencoded_body_and_header_event_id(
    aiohttp_client: Any, settings: Settings, config: RelayConfig, sandbox: Sandbox
) -> None:
    client = await aiohttp_client(create_app(settings, config))
    response = await client.post("/hooks/website-form", data={**FORM, "name": "Zoë"})
    assert response.status == 202
    drain_queue(settings)
    [run] = sandbox.runs()
    assert run["body"]["name"] == "Zoë"

    status, body = await post(
        client,
        "hubspot-workflow",
        {"properties": {"phone": {"value": "+1415"}}},
        headers={"X-Request-Id": "hs-9"},
    )
    assert status == 202
    assert body["source_event_id"] == "hs-9"


async def test_typeform_answer_by_field_ref(
    aiohttp_client: Any, settings: Settings, config: RelayConfig, sandbox: Sandbox
) -> None:
    client = await aiohttp_client(create_app(settings, config))
    answers = [
        {"type": "email", "email": "l@example.com", "field": {"ref": "email"}},
        {"type": "phone_number", "phone_number": "+14155550125", "field": {"ref": "phone"}},
    ]
    document = {"event_id": "tf-1", "event_type": "form_response", "form_response": {"answers": answers}}
    status, _ = await post(client, "typeform", document)
    assert status == 202
    drain_queue(settings)
    assert [run["body"] for run in sandbox.runs()] == [{"to": "+14155550125"}]


async def test_event_matching_no_route_is_recorded_as_ignored(
    aiohttp_client: Any, settings: Settings, config: RelayConfig, sandbox: Sandbox, redis: Redis
) -> None:
    client = await aiohttp_client(create_app(settings, config))
    status, body = await post(client, "website-form", {**FORM, "form": "newsletter"})
    assert status == 200
    assert body["status"] == "ignored"
    assert body["jobs"] == []
    outcome = await event(client, body["event_id"])
    assert outcome["event"]["status"] == "ignored"
    assert outcome["runs"] == []
    assert redis.llen(f"rq:queue:{settings.queue_name}") == 0


async def test_missing_required_field_dead_letters_the_route_with_its_reason(
    aiohttp_client: Any, settings: Settings, config: RelayConfig, sandbox: Sandbox, redis: Redis
) -> None:
    client = await aiohttp_client(create_app(settings, config))
    without_phone = {key: value for key, value in FORM.items() if key != "phone"}
    status, body = await post(client, "website-form", without_phone)
    assert status == 202
    assert body["jobs"] == []
    [dead] = body["dead_lettered"]
    assert dead["route"] == "callback"
    assert "'to'" in dead["reason"] and "phone" in dead["reason"]

    registry = FailedJobRegistry(settings.queue_name, connection=redis, serializer=JSONSerializer)
    [job_id] = registry.get_job_ids()
    job = Job.fetch(job_id, connection=redis, serializer=JSONSerializer)
    assert "required payload key 'to'" in failure_reason(job)
    [run] = (await event(client, body["event_id"]))["runs"]
    assert run["status"] == "dead_lettered"
    drain_queue(settings)
    assert sandbox.runs() == []


async def test_runner_5xx_is_retried_then_dead_lettered_with_its_reason(
    aiohttp_client: Any, settings: Settings, config: RelayConfig, sandbox: Sandbox, redis: Redis
) -> None:
    sandbox.fail(500, None, error="server error, retry after a few seconds")
    client = await aiohttp_client(create_app(settings, config))
    _, body = await post(client, "website-form", FORM)
    drain_queue(settings)

    assert [run["status"] for run in sandbox.runs()] == [500] * settings.run_attempts
    [run] = (await event(client, body["event_id"]))["runs"]
    assert run["status"] == "dead_lettered"
    assert run["attempts"] == settings.run_attempts
    assert run["http_status"] == 500
    assert "server error" in run["last_error"]
    registry = FailedJobRegistry(settings.queue_name, connection=redis, serializer=JSONSerializer)
    assert registry.get_job_ids() == [run["job_id"]]
    job = Job.fetch(run["job_id"], connection=redis, serializer=JSONSerializer)
    # One line, as dashboards show it: the relay's reason, not a traceback.
    reason = failure_reason(job)
    assert reason.startswith("RunnerRejected: runner answered HTTP 500: server error") and "\n" not in reason


async def test_transient_failure_then_success(
    aiohttp_client: Any, settings: Settings, config: RelayConfig, sandbox: Sandbox
) -> None:
    sandbox.fail(503, 1)
    client = await aiohttp_client(create_app(settings, config))
    _, body = await post(client, "website-form", FORM)
    drain_queue(settings)
    assert [run["status"] for run in sandbox.runs()] == [503, 201]
    [run] = (await event(client, body["event_id"]))["runs"]
    assert run["status"] == "succeeded"
    assert run["attempts"] == 2
    assert run["last_error"] is None


async def test_a_timeout_after_sending_is_retried_and_the_run_marked_ambiguous(
    aiohttp_client: Any, settings: Settings, config: RelayConfig, sandbox: Sandbox
) -> None:
    impatient = settings.model_copy(update={"runner_read_timeout_s": 0.3})
    sandbox.http.post("/_sandbox/faults", json={"latency_ms": 1000, "count": 1}).raise_for_status()
    client = await aiohttp_client(create_app(impatient, config))
    _, body = await post(client, "website-form", FORM)
    drain_queue(impatient)
    assert len(sandbox.runs()) == 2  # the first request reached the runner: the PHLO may have run twice
    [run] = (await event(client, body["event_id"]))["runs"]
    assert run["status"] == "succeeded"
    assert run["attempts"] == 2
    assert run["ambiguous"] is True


async def test_runner_4xx_is_dead_lettered_without_retry(
    aiohttp_client: Any, settings: Settings, config: RelayConfig, sandbox: Sandbox, redis: Redis
) -> None:
    client = await aiohttp_client(create_app(settings, config))
    _, body = await post(client, "misrouted", {"id": "m-1"})
    drain_queue(settings)
    assert [run["status"] for run in sandbox.runs()] == [404]
    [run] = (await event(client, body["event_id"]))["runs"]
    assert run["status"] == "dead_lettered"
    assert run["attempts"] == 1
    assert run["http_status"] == 404
    registry = FailedJobRegistry(settings.queue_name, connection=redis, serializer=JSONSerializer)
    assert registry.get_job_ids() == [run["job_id"]]
    assert UNKNOWN_PHLO in run["last_error"] or "404" in run["last_error"]


async def test_jobs_are_json_with_readable_descriptions_and_no_secret_is_stored(
    aiohttp_client: Any, settings: Settings, config: RelayConfig, sandbox: Sandbox, redis: Redis
) -> None:
    sandbox.fail(401, 1)
    client = await aiohttp_client(create_app(settings, config))
    _, body = await post(client, "website-form", {**FORM, "company_size": "500+"})
    job = Job.fetch(body["jobs"][0]["job_id"], connection=redis, serializer=JSONSerializer)
    assert job.func_name == "relay.worker.job.deliver"
    assert job.description is not None
    assert (
        "website-form" in job.description and "callback" in job.description and KNOWN_PHLO in job.description
    )
    assert job.kwargs["payload"] == {"from": "+14155550100", "to": "+14155550123", "name": "Ada"}
    drain_queue(settings)
    stored = everything_in(redis)
    assert b"callback" in stored and b"+14155550123" in stored  # the scan does see job data
    assert SANDBOX_AUTH_TOKEN.encode() not in stored


def everything_in(redis: Redis) -> bytes:
    """Every key and value in Redis, RQ's zlib-compressed job data decompressed."""
    dumped: list[Any] = []
    for key in redis.scan_iter():
        kind = redis.type(key)
        if kind == b"string":
            dumped.append(redis.get(key))
        elif kind == b"hash":
            dumped += [item for pair in redis.hgetall(key).items() for item in pair]
        elif kind == b"list":
            dumped += redis.lrange(key, 0, -1)
        elif kind == b"set":
            dumped += redis.smembers(key)
        elif kind == b"zset":
            dumped += redis.zrange(key, 0, -1)
        dumped.append(key)
    expanded = []
    for value in dumped:
        try:
            expanded.append(zlib.decompress(value))
        except zlib.error:
            expanded.append(value)
    return b"\n".join(expanded)


async def test_unknown_event_is_404_json(
    aiohttp_client: Any, settings: Settings, config: RelayConfig
) -> None:
    client = await aiohttp_client(create_app(settings, config))
    response = await client.get("/events/evt_nope", headers=ADMIN_HEADERS)
    assert response.status == 404
    assert (await response.json())["error"] == "unknown_event"


def as_an_older_relay_stored_it(redis: Redis, job_id: str) -> None:
    """Rewrite a job's hash as relays before the packages wrote it: its function under ``relay.delivery``."""
    fields: dict[bytes, bytes] = redis.hgetall(Job.key_for(job_id))  # type: ignore[assignment]
    older = {
        name: value.replace(b"relay.worker.job.", b"relay.delivery.")
        for name, value in fields.items()
        if b"relay.worker.job." in value
    }
    assert {b"data", b"failure_callback_name"} <= set(older)  # the job's function and failure callback
    redis.hset(Job.key_for(job_id), mapping=older)  # type: ignore[arg-type]
    stored = Job.fetch(job_id, connection=redis, serializer=JSONSerializer)
    assert stored.func_name == "relay.delivery.deliver"


async def test_a_run_queued_under_the_former_job_path_still_runs(
    aiohttp_client: Any, settings: Settings, config: RelayConfig, sandbox: Sandbox, redis: Redis
) -> None:
    client = await aiohttp_client(create_app(settings, config))
    _, body = await post(client, "website-form", FORM)
    [job] = body["jobs"]
    as_an_older_relay_stored_it(redis, job["job_id"])
    drain_queue(settings)
    assert [run["status"] for run in sandbox.runs()] == [201]
    [run] = (await event(client, body["event_id"]))["runs"]
    assert (run["status"], run["attempts"]) == ("succeeded", 1)


async def test_a_dead_letter_stored_under_the_former_job_path_replays(
    aiohttp_client: Any, settings: Settings, config: RelayConfig, sandbox: Sandbox, redis: Redis
) -> None:
    client = await aiohttp_client(create_app(settings, config))
    _, body = await post(client, "website-form", FORM)
    [job] = body["jobs"]
    as_an_older_relay_stored_it(redis, job["job_id"])
    sandbox.fail(400, 1)  # refused: dead-lettered at once, through the former path's failure callback
    drain_queue(settings)
    [run] = (await event(client, body["event_id"]))["runs"]
    assert run["status"] == "dead_lettered"

    assert replay(redis, settings, config, job["job_id"]).replayed
    drain_queue(settings)
    assert [run["status"] for run in sandbox.runs()] == [400, 201]
    [run] = (await event(client, body["event_id"]))["runs"]
    assert (run["status"], run["attempts"]) == ("succeeded", 2)
