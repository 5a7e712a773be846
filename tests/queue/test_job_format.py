"""The ingress writes a run's job as RQ's own enqueue does, so that RQ, its workers and dashboards read it."""

from __future__ import annotations

import contextlib
import json
import time
import zlib
from datetime import UTC, datetime
from typing import Any

from redis import Redis
from rq.job import Job, JobStatus
from rq.serializers import JSONSerializer
from rq.utils import utcformat

from relay.mapping.config import RetryOverride
from relay.mapping.routes import PlannedRun
from relay.queue.jobs import queue_run, relay_queue, run_job_data, run_job_fields
from relay.queue.records import EventRecord, EventStatus
from relay.queue.retry import RetryPolicy
from relay.queue.store import _rq_time
from relay.settings import Settings
from tests.conftest import KNOWN_PHLO

TIMES = {b"created_at", b"enqueued_at"}


def _record(event_id: str) -> EventRecord:
    return EventRecord(
        event_id=event_id,
        source="website-form",
        source_event_id="sub-1",
        event_type="callback-request",
        received_at=time.time(),
        status=EventStatus.ACCEPTED,
        routes=["callback"],
    )


def _call(data: bytes) -> Any:
    """A job's call as RQ reads it: zlib-compressed or, as the ingress writes it, not."""
    with contextlib.suppress(zlib.error):
        data = zlib.decompress(data)
    return json.loads(data)


def _hash(redis: Redis, job_id: str) -> dict[bytes, bytes]:
    fields: dict[bytes, bytes] = redis.hgetall(Job.key_for(job_id))  # type: ignore[assignment]
    return fields


def test_the_ingress_job_hash_is_rqs_own(redis: Redis, settings: Settings) -> None:
    queue = relay_queue(redis, settings)
    run = PlannedRun("callback", KNOWN_PHLO, "default", {"to": "+14155550123", "n": [1, {"a": None}]})
    policy = RetryPolicy.resolve(settings, RetryOverride(attempts=4), time.time())
    by_rq, by_relay = _record("evt_by_rq"), _record("evt_by_relay")
    queue.enqueue_many([run_job_data(settings, by_rq, run, policy)])
    with redis.pipeline(transaction=True) as pipe:
        queue_run(pipe, queue, run_job_fields(settings, by_relay, run, policy), "evt_by_relay-callback")
        pipe.execute()

    theirs, ours = _hash(redis, "evt_by_rq-callback"), _hash(redis, "evt_by_relay-callback")
    assert set(ours) == set(theirs)
    for name in set(theirs) - TIMES - {b"data", b"description", b"meta"}:
        assert ours[name] == theirs[name], name
    for name in TIMES:
        assert abs(len(ours[name]) - len(theirs[name])) <= 1  # same format: ISO-8601 with microseconds
    their_call, our_call = (_call(fields[b"data"]) for fields in (theirs, ours))
    their_call[3]["event_id"] = our_call[3]["event_id"]
    assert our_call == their_call
    assert ours[b"description"] == theirs[b"description"].replace(b"evt_by_rq", b"evt_by_relay")
    assert json.loads(ours[b"meta"]) == {**json.loads(theirs[b"meta"]), "event_id": "evt_by_relay"}
    assert queue.job_ids == ["evt_by_rq-callback", "evt_by_relay-callback"]
    assert queue.key.encode() in redis.smembers(queue.redis_queues_keys)


def test_rq_reads_the_ingress_job(redis: Redis, settings: Settings) -> None:
    queue = relay_queue(redis, settings)
    run = PlannedRun("callback", KNOWN_PHLO, "default", {"to": "+14155550123"})
    policy = RetryPolicy.resolve(settings, None, time.time())
    with redis.pipeline(transaction=True) as pipe:
        queue_run(pipe, queue, run_job_fields(settings, _record("evt_1"), run, policy), "evt_1-callback")
        pipe.execute()
    job = Job.fetch("evt_1-callback", connection=redis, serializer=JSONSerializer)
    assert job.get_status() == JobStatus.QUEUED
    assert job.func_name == "relay.worker.job.deliver"
    assert job.kwargs["payload"] == {"to": "+14155550123"}
    assert job.kwargs["policy"] == policy.as_job_kwarg()
    assert job.timeout == settings.job_timeout_s
    assert job.retries_left == policy.attempts - 1
    assert job.meta == {"source": "website-form", "route": "callback", "phlo_id": KNOWN_PHLO,
                        "event_id": "evt_1"}  # fmt: skip
    assert job.origin == queue.name


def test_the_ingress_writes_times_as_rq_does() -> None:
    for epoch_s in (0.0, 1764624000.0, 1764624000.000001, 1796161263.534278, time.time()):
        assert _rq_time(epoch_s) == utcformat(datetime.fromtimestamp(epoch_s, UTC))
