"""The due-run promoter: it leaves what RQ's scheduler leaves, on time, once per job, with no lock."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime, timedelta
from typing import Any

from redis import Redis
from rq import Queue
from rq.job import Job, JobStatus
from rq.scheduler import RQScheduler
from rq.serializers import JSONSerializer

from relay.queue.due import PROMOTER_NAME, DuePromoter

TIMES_OF_THE_MOMENT = {b"enqueued_at", b"created_at"}  # times of the moment, differ per run


def scheduled_job(queue: Queue, job_id: str, due: datetime) -> Job:
    job: Job = queue.enqueue_at(due, "relay.worker.job.deliver", job_id=job_id, kwargs={"event_id": job_id})
    return job


def state_after(redis: Redis, promote: Any) -> dict[str, Any]:
    """Schedule two jobs (one due, one not), promote with ``promote``, and read what Redis holds."""
    redis.flushdb()
    queue = Queue("phlo-runs", connection=redis, serializer=JSONSerializer)
    past = datetime.now(UTC) - timedelta(seconds=5)
    scheduled_job(queue, "due", past)
    scheduled_job(queue, "later", datetime.now(UTC) + timedelta(hours=1))
    promote(queue)
    due_job = {key: value for key, value in redis.hgetall(Job.key_for("due")).items()}
    return {
        "queue": queue.get_job_ids(),
        "scheduled": queue.scheduled_job_registry.get_job_ids(),
        "queues": redis.smembers(Queue.redis_queues_keys),
        "due_status": Job.fetch("due", connection=redis, serializer=JSONSerializer).get_status(),
        "due_fields": {key: value for key, value in due_job.items() if key not in TIMES_OF_THE_MOMENT},
        "due_ttl": redis.ttl(Job.key_for("due")),
        "later_status": Job.fetch("later", connection=redis, serializer=JSONSerializer).get_status(),
    }


def by_rq(queue: Queue) -> None:
    scheduler = RQScheduler([queue], connection=queue.connection, serializer=JSONSerializer)
    scheduler.acquire_locks()  # type: ignore[no-untyped-call]
    scheduler.enqueue_scheduled_jobs()  # type: ignore[no-untyped-call]
    scheduler.release_locks()  # type: ignore[no-untyped-call]


def by_relay(queue: Queue) -> None:
    assert DuePromoter(queue.connection, queue).promote() == ["due"]


def test_the_promoter_leaves_what_rqs_scheduler_leaves(redis: Redis) -> None:
    # If an RQ upgrade changes what its scheduler writes, this fails, not production.
    expected = state_after(redis, by_rq)
    assert expected["queue"] == ["due"] and expected["scheduled"] == ["later"]
    assert state_after(redis, by_relay) == expected
    assert expected["due_status"] == JobStatus.QUEUED and expected["later_status"] == JobStatus.SCHEDULED


def test_a_run_is_due_at_its_exact_time_not_its_whole_second(redis: Redis) -> None:
    queue = Queue("phlo-runs", connection=redis, serializer=JSONSerializer)
    job = scheduled_job(queue, "soon", datetime.now(UTC) + timedelta(hours=1))
    due_at = time.time() + 0.4
    redis.zadd(queue.scheduled_job_registry.key, {job.id: due_at})  # as RelayJob.retry scores it
    promoter = DuePromoter(redis, queue)
    assert promoter.promote() == []  # RQ's whole-second score would already be due
    while time.time() < due_at:
        time.sleep(0.05)
    assert promoter.promote() == ["soon"]


def test_promoters_racing_move_each_job_once_and_drop_jobs_that_expired(redis: Redis) -> None:
    queue = Queue("phlo-runs", connection=redis, serializer=JSONSerializer)
    past = datetime.now(UTC) - timedelta(seconds=1)
    with redis.pipeline() as pipe:
        for number in range(600):
            job = Job.create("relay.worker.job.deliver", id=f"job-{number}", connection=redis,
                             serializer=JSONSerializer, origin=queue.name)  # fmt: skip
            queue.schedule_job(job, past, pipeline=pipe)
        pipe.execute()
    redis.delete(Job.key_for("job-7"))  # its hash expired while it waited
    moved: list[str] = []

    def promote() -> None:
        promoter = DuePromoter(Redis(connection_pool=redis.connection_pool), queue)
        for _ in range(5):
            moved.extend(promoter.promote(max_jobs=50))

    threads = [threading.Thread(target=promote) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(moved) == sorted(queue.get_job_ids())
    assert len(moved) == len(set(moved)) == 599
    assert "job-7" not in moved and len(queue.scheduled_job_registry) == 0


def test_the_promoter_keeps_stock_rq_schedulers_off_the_queue(redis: Redis) -> None:
    queue = Queue("phlo-runs", connection=redis, serializer=JSONSerializer)
    DuePromoter(redis, queue).promote()
    assert redis.get(RQScheduler.get_locking_key(queue.name)) == PROMOTER_NAME.encode()
    scheduler = RQScheduler([queue], connection=redis, serializer=JSONSerializer)
    assert scheduler.acquire_locks() == set()  # type: ignore[no-untyped-call]  # a stock `rq worker --with-scheduler` would move nothing
