"""Worker processes as operators run them: the account rate limit across processes, the circuit breaker,
a worker killed mid-run, and warm and cold shutdown of a pool (real processes, Redis and sandbox)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from redis import Redis
from rq.executions import Execution
from rq.job import Job, JobStatus
from rq.serializers import JSONSerializer

from relay.dev.redis_server import EmbeddedRedis, free_port
from relay.ingress.app import create_app
from relay.mapping.config import RelayConfig
from relay.queue.jobs import relay_queue
from relay.runner.breaker import CircuitBreaker
from relay.settings import DEFAULT_ACCOUNT, Settings
from relay.worker.stranded import requeue_stranded
from tests.conftest import (
    ADMIN_HEADERS,
    Sandbox,
    assert_attempts_are_its_attempt_steps,
    clean_environment,
    drain_queue,
    poll,
    with_admin_token,
)
from tests.worker.test_delivery_to_runner import FORM, as_an_older_relay_stored_it


@contextlib.contextmanager
def worker_process(
    settings: Settings, *args: str, log: Path | None = None
) -> Iterator[subprocess.Popen[bytes]]:
    """A real ``relay worker`` with ``args`` in a session of its own, its log in ``log`` if given.

    At the end the whole session is killed: a pool's forked workers and RQ's scheduler process outlive a
    killed parent, and would go on taking later tests' jobs.
    """
    process = subprocess.Popen(
        [sys.executable, "-m", "relay", "worker", *args],
        env=clean_environment(**settings.as_environment()),
        stderr=subprocess.DEVNULL if log is None else log.open("wb"),
        start_new_session=True,
    )
    try:
        yield process
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=30)


async def post_events(
    aiohttp_client: Any, settings: Settings, config: RelayConfig, count: int
) -> tuple[Any, list[str]]:
    client = await aiohttp_client(create_app(with_admin_token(settings), config))
    event_ids = []
    for _ in range(count):
        response = await client.post(
            "/hooks/website-form", json={**FORM, "submission_id": f"sub-{uuid.uuid4().hex}"}
        )
        assert response.status == 202
        event_ids.append((await response.json())["event_id"])
    return client, event_ids


async def runs_of(client: Any, event_ids: list[str]) -> list[dict[str, Any]]:
    views = [
        await (await client.get(f"/events/{event_id}", headers=ADMIN_HEADERS)).json()
        for event_id in event_ids
    ]
    return [run for view in views for run in view["runs"]]


def wait_for_runs(sandbox: Sandbox, count: int, timeout_s: float = 60.0) -> list[dict[str, Any]]:
    """Poll the sandbox until it recorded ``count`` requests."""
    return poll(lambda: runs if len(runs := sandbox.runs()) >= count else None, timeout_s)


async def until_all(
    client: Any, event_ids: list[str], status: str, timeout_s: float = 60.0
) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout_s
    while True:
        runs = await runs_of(client, event_ids)
        if all(run["status"] == status for run in runs):
            return runs
        assert time.monotonic() < deadline, [run["status"] for run in runs]
        await asyncio.sleep(0.1)


def busiest_window(times: list[float], window_s: float) -> int:
    """The most requests in any window of ``window_s`` seconds (sliding)."""
    times = sorted(times)
    return max(
        sum(1 for other in times[index:] if other - start < window_s) for index, start in enumerate(times)
    )


async def test_several_worker_processes_never_exceed_the_account_rate_limit(
    aiohttp_client: Any, settings: Settings, config: RelayConfig, sandbox: Sandbox
) -> None:
    limited = settings.model_copy(update={"rate_limit": 10, "rate_window_s": 1.0})
    client, event_ids = await post_events(aiohttp_client, limited, config, 45)
    started = time.monotonic()
    with worker_process(limited, "--processes", "3"):
        runs = await asyncio.to_thread(wait_for_runs, sandbox, 45)
    took_s = time.monotonic() - started
    received = [run["received_at"] for run in runs]
    assert busiest_window(received, 1.0) <= 10
    assert busiest_window(received, 1.0) >= 8  # the limit is used, not merely respected
    # Runs keep flowing: 45 runs at 10 per 1.2 s (window plus margin) take about 4.2 s, not much more.
    assert took_s < 15, took_s
    assert {run["status"] for run in await until_all(client, event_ids, "succeeded")} == {"succeeded"}


async def test_the_breaker_pauses_an_account_in_an_outage_and_resumes_without_losing_a_run(
    aiohttp_client: Any, settings: Settings, config: RelayConfig, sandbox: Sandbox, redis: Redis
) -> None:
    fragile = settings.model_copy(
        update={"breaker_failures": 3, "breaker_open_s": 1.0, "run_attempts": 6, "retry_base_delay_s": 0}
    )
    breaker = CircuitBreaker(redis, DEFAULT_ACCOUNT)
    sandbox.fail(503, None)
    client, event_ids = await post_events(aiohttp_client, fragile, config, 8)
    with worker_process(fragile):
        await asyncio.to_thread(poll, lambda: True if breaker.state().state != "closed" else None, 30.0)

        # While the runner is down, runs wait instead of burning their attempts.
        async def some_wait() -> list[dict[str, Any]]:
            deadline = time.monotonic() + 30
            while True:
                runs = await runs_of(client, event_ids)
                if any(run["status"] == "waiting" for run in runs):
                    return runs
                assert time.monotonic() < deadline
                await asyncio.sleep(0.1)

        during = await some_wait()
        for run in during:
            if run["status"] not in ("running", "queued"):  # a running run's attempt has no step yet
                assert_attempts_are_its_attempt_steps(run)
        sandbox.reset()  # the runner recovers
        after = await until_all(client, event_ids, "succeeded")
    assert breaker.state().state == "closed"
    for run in after:
        assert_attempts_are_its_attempt_steps(run)
    notes = [step.get("note") or "" for run in after for step in run["history"]]
    assert any("circuit breaker" in note for note in notes)
    assert sum(run["status"] == 201 for run in sandbox.runs()) == 8


async def test_a_run_whose_rate_limit_wait_would_outlast_its_job_is_rescheduled_without_an_attempt(
    aiohttp_client: Any, settings: Settings, config: RelayConfig, sandbox: Sandbox
) -> None:
    # One request per 4 s, and a job that may wait at most 7 - 2 - 2 - 2 = 1 s for its turn (the job
    # timeout less the request's connect and read time and a margin): the later runs must be rescheduled.
    window_s = 4.0
    tight = settings.model_copy(
        update={
            "rate_limit": 1,
            "rate_window_s": window_s,
            "job_timeout_s": 7,
            "runner_connect_timeout_s": 2.0,
            "runner_read_timeout_s": 2.0,
        }
    )
    client, event_ids = await post_events(aiohttp_client, tight, config, 3)
    with worker_process(tight):
        runs = await until_all(client, event_ids, "succeeded", timeout_s=60.0)
    received = sorted(run["received_at"] for run in sandbox.runs())
    assert len(received) == 3  # each delivered once
    assert busiest_window(received, window_s) == 1  # never over the limit
    rescheduled = [
        step
        for run in runs
        for step in run["history"]
        if step["status"] == "waiting" and "rate limit" in (step.get("note") or "")
    ]
    assert rescheduled, [run["history"] for run in runs]
    assert all("is taken for the next" in step["note"] and step["retry_in_s"] > 0 for step in rescheduled)
    for run in runs:
        assert run["attempts"] == 1
        assert_attempts_are_its_attempt_steps(run)


async def kill_a_worker_mid_run(
    aiohttp_client: Any, quick: Settings, config: RelayConfig, sandbox: Sandbox
) -> tuple[Any, list[str], float]:
    """One run whose worker is SIGKILLed while its request is out; the client, its event and the kill time."""
    sandbox.fail(None, 1, latency_ms=4000)
    client, event_ids = await post_events(aiohttp_client, quick, config, 1)
    with worker_process(quick) as doomed:
        await asyncio.to_thread(wait_for_runs, sandbox, 1)  # the request is in flight
        doomed.send_signal(signal.SIGKILL)
        doomed.wait(timeout=10)
    return client, event_ids, time.monotonic()


async def test_a_run_whose_worker_is_killed_mid_run_is_retried_and_succeeds(
    aiohttp_client: Any, settings: Settings, config: RelayConfig, sandbox: Sandbox
) -> None:
    quick = settings.model_copy(update={"job_timeout_s": 5, "maintenance_interval_s": 1})
    client, event_ids, killed_at = await kill_a_worker_mid_run(aiohttp_client, quick, config, sandbox)
    with worker_process(quick):
        [run] = await until_all(client, event_ids, "succeeded", timeout_s=60)
    assert time.monotonic() - killed_at < 30  # found well within a minute (job timeout 5 s + 5 s + 1 s)
    assert run["ambiguous"] is True  # the killed attempt may have reached the runner
    assert any(step["error"] == "the worker died mid-run" for step in run["history"]), [
        s["error"] for s in run["history"]
    ]
    assert len(sandbox.runs()) == 2


async def test_a_run_stored_under_the_old_job_path_runs_and_its_crash_is_recorded(
    aiohttp_client: Any, settings: Settings, config: RelayConfig, sandbox: Sandbox, redis: Redis
) -> None:
    # Jobs queued before the modules became packages name relay.delivery.*: they run with the worker's
    # context like new ones, and a crash mid-run is recorded by their failure callback.
    quick = settings.model_copy(update={"job_timeout_s": 5, "maintenance_interval_s": 1})
    sandbox.fail(None, 1, latency_ms=4000)
    client, event_ids = await post_events(aiohttp_client, quick, config, 1)
    [job_id] = relay_queue(redis, quick).get_job_ids()
    as_an_older_relay_stored_it(redis, job_id)
    with worker_process(quick) as doomed:
        await asyncio.to_thread(wait_for_runs, sandbox, 1)  # the request is in flight
        doomed.send_signal(signal.SIGKILL)
        doomed.wait(timeout=10)
    with worker_process(quick):
        [run] = await until_all(client, event_ids, "succeeded", timeout_s=60)
    assert (
        Job.fetch(job_id, connection=redis, serializer=JSONSerializer).func_name == "relay.delivery.deliver"
    )
    assert run["ambiguous"] is True
    assert any(step["error"] == "the worker died mid-run" for step in run["history"])
    assert len(sandbox.runs()) == 2


async def test_a_worker_that_loses_redis_mid_run_carries_on_once_redis_is_back(
    aiohttp_client: Any, settings: Settings, config: RelayConfig, sandbox: Sandbox, tmp_path: Path
) -> None:
    # Regression: RQ's work loop quits on a Redis error while a job is out, and `relay worker` ended
    # with it, so a Redis restart left the relay without workers.
    with EmbeddedRedis(tmp_path / "redis", port=free_port(), appendonly=True) as own_redis:
        quick = settings.model_copy(
            update={"redis_url": own_redis.url, "job_timeout_s": 5, "maintenance_interval_s": 1}
        )
        sandbox.fail(None, 1, latency_ms=1000)
        client, event_ids = await post_events(aiohttp_client, quick, config, 1)
        log = tmp_path / "worker.log"
        with worker_process(quick, log=log) as worker:
            await asyncio.to_thread(wait_for_runs, sandbox, 1)  # the run is out
            own_redis.stop()  # Redis goes: the worker cannot record what the runner answers

            def restarting() -> bool | None:
                assert worker.poll() is None, "the worker exited when Redis went away"
                return True if "starting a new one once Redis answers" in log.read_text() else None

            await asyncio.to_thread(poll, restarting, 60)
            own_redis.start()  # same port, same append-only file
            more = await post_events(aiohttp_client, quick, config, 1)
            [first] = await until_all(client, event_ids, "succeeded")
            await until_all(more[0], more[1], "succeeded")
            assert worker.poll() is None
    # Its answer is recorded once Redis is back (the client retries the write), or the run is found
    # abandoned and sent again: then, and only then, it is marked ambiguous.
    assert first["ambiguous"] is (first["attempts"] > 1), first["history"]


async def test_a_run_that_succeeded_is_not_sent_again_when_rq_runs_its_job_again(
    aiohttp_client: Any, settings: Settings, config: RelayConfig, sandbox: Sandbox, redis: Redis
) -> None:
    # Regression: a worker killed after recording a success, before RQ marked the job finished, leaves
    # the job started; RQ's cleanup retries it, and the PHLO ran a second time, not marked ambiguous.
    client, event_ids = await post_events(aiohttp_client, settings, config, 1)
    drain_queue(settings)
    [before] = await runs_of(client, event_ids)
    assert before["status"] == "succeeded"
    job = Job.fetch(before["job_id"], connection=redis, serializer=JSONSerializer)
    with redis.pipeline() as pipe:  # what the killed worker leaves: the job started, its execution expired
        job.set_status(JobStatus.STARTED, pipeline=pipe)
        Execution.create(job, ttl=0, pipeline=pipe)
        pipe.execute()
    drain_queue(settings)  # the worker's maintenance finds the job abandoned, and RQ runs it again
    [after] = await runs_of(client, event_ids)
    assert len(sandbox.runs()) == 1
    assert after["status"] == "succeeded"
    assert (after["phlo_run_id"], after["attempts"]) == (before["phlo_run_id"], 1)
    assert job.get_status() == JobStatus.FINISHED


async def test_a_dead_lettered_run_is_not_sent_again_when_rq_runs_its_job_again(
    aiohttp_client: Any, settings: Settings, config: RelayConfig, sandbox: Sandbox, redis: Redis
) -> None:
    # The same crash, after a run was given up: it stays a dead letter, and the runner is not asked again.
    client = await aiohttp_client(create_app(with_admin_token(settings), config))
    response = await client.post("/hooks/misrouted", json={"id": f"m-{uuid.uuid4().hex}"})
    event_ids = [(await response.json())["event_id"]]
    drain_queue(settings)
    [before] = await runs_of(client, event_ids)
    assert before["status"] == "dead_lettered" and len(sandbox.runs()) == 1  # the runner's 404
    job = Job.fetch(before["job_id"], connection=redis, serializer=JSONSerializer)
    # What a worker killed after recording the dead letter leaves: the job started, its execution
    # expired, and RQ's retry budget as it was queued (the worker never wrote it down to zero).
    with redis.pipeline() as pipe:
        job.set_status(JobStatus.STARTED, pipeline=pipe)
        pipe.hset(job.key, "retries_left", settings.run_attempts - 1)
        Execution.create(job, ttl=0, pipeline=pipe)
        pipe.execute()
    drain_queue(settings)
    [after] = await runs_of(client, event_ids)
    assert len(sandbox.runs()) == 1
    assert (after["status"], after["attempts"]) == ("dead_lettered", 1)
    assert job.get_status() == JobStatus.FAILED


async def test_a_run_taken_by_a_worker_that_died_before_starting_it_is_delivered_within_seconds(
    aiohttp_client: Any, settings: Settings, config: RelayConfig, sandbox: Sandbox, redis: Redis
) -> None:
    # Regression: RQ moves a job to an intermediate list as a worker takes it; a worker that died (or
    # lost Redis) before starting it left it there for over a minute, out of every worker's reach.
    quick = settings.model_copy(update={"job_timeout_s": 5, "maintenance_interval_s": 1})
    client, event_ids = await post_events(aiohttp_client, quick, config, 1)
    queue = relay_queue(redis, quick)
    assert redis.lmove(queue.key, queue.intermediate_queue.key)  # what the dead worker's BLMOVE did
    taken_at = time.monotonic()
    with worker_process(quick):
        await until_all(client, event_ids, "succeeded", timeout_s=60)
    # Found within the job timeout + 5 s and two maintenance intervals; RQ alone waits over a minute.
    assert time.monotonic() - taken_at < 30
    assert len(sandbox.runs()) == 1


async def test_workers_sweeping_at_once_put_a_stranded_run_back_once(
    aiohttp_client: Any, settings: Settings, config: RelayConfig, redis: Redis
) -> None:
    # Regression: each worker kept its own memory of stranded jobs; two put the same job back, and the
    # second took it away from the worker that had just taken it again, which then ran it twice.
    await post_events(aiohttp_client, settings, config, 1)
    queue = relay_queue(redis, settings)
    taken = queue.intermediate_queue.key
    job_id = redis.lmove(queue.key, taken)  # taken by a worker that died
    assert isinstance(job_id, bytes)
    assert requeue_stranded(redis, queue, after_s=0) == []  # worker A's sweep notes it
    assert requeue_stranded(redis, queue, after_s=0) == [job_id.decode()]  # worker B's puts it back
    assert redis.lmove(queue.key, taken) == job_id  # a live worker takes it at once
    assert requeue_stranded(redis, queue, after_s=0) == []  # worker A's next sweep leaves it
    assert redis.lrange(taken, 0, -1) == [job_id]
    assert redis.llen(queue.key) == 0


async def test_a_worker_killed_while_holding_rqs_maintenance_lock_does_not_hold_up_crash_recovery(
    aiohttp_client: Any, settings: Settings, config: RelayConfig, sandbox: Sandbox, redis: Redis
) -> None:
    # Regression: only the holder of RQ's maintenance lock finds crashed runs, and RQ takes it for 15
    # minutes; a worker that died holding it left every crashed run unnoticed that long.
    quick = settings.model_copy(update={"job_timeout_s": 5, "maintenance_interval_s": 1})
    client, event_ids, killed_at = await kill_a_worker_mid_run(aiohttp_client, quick, config, sandbox)
    assert relay_queue(redis, quick).acquire_maintenance_lock()  # as RQ takes it, in the dead worker
    with worker_process(quick):
        [run] = await until_all(client, event_ids, "succeeded", timeout_s=60)
    assert time.monotonic() - killed_at < 30  # job timeout 5 s + 5 s, the lock cut to the job timeout
    assert run["ambiguous"] is True


async def test_sigterm_finishes_the_runs_in_flight_and_a_second_sigterm_stops_at_once(
    aiohttp_client: Any, settings: Settings, config: RelayConfig, sandbox: Sandbox
) -> None:
    sandbox.fail(None, 2, latency_ms=1500)
    client, event_ids = await post_events(aiohttp_client, settings, config, 2)
    with worker_process(settings, "--processes", "2") as pool:
        await asyncio.to_thread(wait_for_runs, sandbox, 2)
        pool.send_signal(signal.SIGTERM)  # warm: both runs in flight finish
        assert await asyncio.to_thread(pool.wait, 30) == 0
    assert {run["status"] for run in await runs_of(client, event_ids)} == {"succeeded"}
    assert len(sandbox.runs()) == 2

    sandbox.reset()
    sandbox.fail(None, 1, latency_ms=20_000)
    patient = settings.model_copy(update={"runner_read_timeout_s": 30.0})  # only a signal ends the run
    client, event_ids = await post_events(aiohttp_client, patient, config, 1)
    with worker_process(patient, "--processes", "2") as pool:
        await asyncio.to_thread(wait_for_runs, sandbox, 1)
        pool.send_signal(signal.SIGTERM)
        # RQ ignores a second signal within 1 s of the first (the pool forwards signals to its workers).
        await asyncio.sleep(1.5)
        pool.send_signal(signal.SIGTERM)
        stopped_at = time.monotonic()
        await asyncio.to_thread(pool.wait, 30)
        assert time.monotonic() - stopped_at < 10  # it did not wait for the 20 s run
    [run] = await runs_of(client, event_ids)
    assert run["ambiguous"] is True
    assert "cut short by the worker's shutdown" in run["last_error"]
    with worker_process(settings):
        [run] = await until_all(client, event_ids, "succeeded")
    assert len(sandbox.runs()) == 2
