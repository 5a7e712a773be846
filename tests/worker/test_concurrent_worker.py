"""One worker process with many runs in flight: RQ's registries per run, a crash of the process, warm and
cold shutdown, a run past its deadline, and due retries when a worker is SIGKILLed (real processes, Redis
and sandbox)."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from redis import Redis
from rq import Worker
from rq.registry import StartedJobRegistry
from rq.scheduler import RQScheduler
from rq.serializers import JSONSerializer

from relay.mapping.config import RelayConfig
from relay.queue.due import PROMOTER_NAME
from relay.queue.jobs import relay_queue
from relay.settings import Settings
from tests.conftest import Sandbox, poll
from tests.worker.test_worker_processes import (
    post_events,
    runs_of,
    until_all,
    wait_for_runs,
    worker_process,
)


def started_registry(redis: Redis, settings: Settings) -> StartedJobRegistry:
    return StartedJobRegistry(settings.queue_name, connection=redis, serializer=JSONSerializer)


async def test_one_process_holds_every_run_in_flight_each_in_rqs_registries(
    aiohttp_client: Any, settings: Settings, config: RelayConfig, sandbox: Sandbox, redis: Redis
) -> None:
    sandbox.fail(None, 48, latency_ms=3000)
    patient = settings.model_copy(update={"runner_read_timeout_s": 10.0})
    client, event_ids = await post_events(aiohttp_client, patient, config, 48)
    with worker_process(patient, "--concurrency", "64"):
        # All 48 are out at once, from one process: each in RQ's started registry with its own execution,
        # and the worker (as rq-dashboard lists workers) running all of them.
        await asyncio.to_thread(wait_for_runs, sandbox, 48, 10.0)
        assert len(started_registry(redis, settings)) == 48
        [worker] = Worker.all(queue=relay_queue(redis, settings))
        assert len(worker.get_current_executions(refresh=True)) == 48
        runs = await until_all(client, event_ids, "succeeded", timeout_s=30)
    received = sorted(run["received_at"] for run in sandbox.runs())
    assert len(received) == 48  # each sent once
    assert received[-1] - received[0] < 2.5  # together, not one after another (48 x 3 s)
    assert all(run["attempts"] == 1 and not run["ambiguous"] for run in runs)
    assert len(started_registry(redis, settings)) == 0


async def test_sigkill_of_a_process_with_64_runs_in_flight_retries_every_one_within_15_s(
    aiohttp_client: Any, settings: Settings, config: RelayConfig, sandbox: Sandbox
) -> None:
    sandbox.fail(None, 64, latency_ms=60_000)
    patient = settings.model_copy(update={"runner_read_timeout_s": 60.0})
    client, event_ids = await post_events(aiohttp_client, patient, config, 64)
    with worker_process(patient, "--concurrency", "64") as doomed:
        await asyncio.to_thread(wait_for_runs, sandbox, 64, 20.0)
        doomed.send_signal(signal.SIGKILL)
        doomed.wait(timeout=10)
    killed_at = time.time()
    with worker_process(patient):
        await asyncio.to_thread(wait_for_runs, sandbox, 128, 30.0)
        runs = await until_all(client, event_ids, "succeeded", timeout_s=30)
    resent = sorted(run["received_at"] for run in sandbox.runs())[64:]
    assert resent[-1] - killed_at <= 15.0, resent[-1] - killed_at  # every one found and sent again
    assert len(sandbox.runs()) == 128  # each once more, none lost, none a third time
    for run in runs:
        assert run["ambiguous"] is True  # its first request may have reached the runner
        assert run["attempts"] == 2
        assert any(step["error"] == "the worker died mid-run" for step in run["history"])


async def test_sigterm_with_64_runs_in_flight_finishes_all_and_sends_none_twice(
    aiohttp_client: Any, settings: Settings, config: RelayConfig, sandbox: Sandbox, redis: Redis
) -> None:
    sandbox.fail(None, 64, latency_ms=1500)  # under the read timeout (2 s)
    client, event_ids = await post_events(aiohttp_client, settings, config, 64)
    with worker_process(settings, "--concurrency", "64") as worker:
        await asyncio.to_thread(wait_for_runs, sandbox, 64, 20.0)
        worker.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(worker.wait, settings.shutdown_grace_s) == 0
    runs = await runs_of(client, event_ids)
    assert {run["status"] for run in runs} == {"succeeded"}
    assert all(run["attempts"] == 1 and not run["ambiguous"] for run in runs)
    assert len(sandbox.runs()) == 64
    assert len(started_registry(redis, settings)) == 0


async def test_a_second_signal_requeues_the_runs_in_flight_at_once(
    aiohttp_client: Any, settings: Settings, config: RelayConfig, sandbox: Sandbox, redis: Redis
) -> None:
    sandbox.fail(None, 16, latency_ms=60_000)
    patient = settings.model_copy(update={"runner_read_timeout_s": 60.0})
    client, event_ids = await post_events(aiohttp_client, patient, config, 16)
    with worker_process(patient, "--concurrency", "64") as worker:
        await asyncio.to_thread(wait_for_runs, sandbox, 16, 20.0)
        worker.send_signal(signal.SIGTERM)  # warm: it would wait for the runs
        await asyncio.sleep(1.5)  # a second signal within 1 s is taken as the same request
        worker.send_signal(signal.SIGTERM)
        stopped_at = time.monotonic()
        await asyncio.to_thread(worker.wait, 10)
        assert time.monotonic() - stopped_at < 3
    assert len(relay_queue(redis, patient)) == 16  # back in the queue, not left to be found as crashed
    assert len(started_registry(redis, patient)) == 0
    for run in await runs_of(client, event_ids):
        assert run["ambiguous"] is True
        assert "cut short by the worker's shutdown (cold shutdown)" in run["last_error"]
    with worker_process(patient):
        await until_all(client, event_ids, "succeeded", timeout_s=30)
    assert len(sandbox.runs()) == 32


async def test_a_run_past_its_deadline_is_abandoned_recorded_retried_and_its_slot_freed(
    aiohttp_client: Any, settings: Settings, config: RelayConfig, sandbox: Sandbox
) -> None:
    # The runner holds the first request for a minute and the client would wait as long: only the
    # worker's deadline (the job timeout, 5 s) ends that attempt. One slot: the second run goes only
    # once the stuck run's slot is freed.
    sandbox.fail(None, 1, latency_ms=60_000)
    stuck = settings.model_copy(update={"job_timeout_s": 5, "runner_read_timeout_s": 60.0})
    client, event_ids = await post_events(aiohttp_client, stuck, config, 2)
    started = time.monotonic()
    with worker_process(stuck, "--concurrency", "1"):
        runs = await until_all(client, event_ids, "succeeded", timeout_s=30)
    assert time.monotonic() - started < 15
    first = next(run for run in runs if run["attempts"] == 2)
    assert first["ambiguous"] is True
    errors = [step["error"] or "" for step in first["history"]]
    assert any("outlived its job timeout (5 s)" in error for error in errors), errors
    assert len(sandbox.runs()) == 3


@contextlib.contextmanager
def workers(settings: Settings, count: int, tmp_path: Path) -> Iterator[list[Any]]:
    """``count`` separate ``relay worker`` processes, each in a session of its own."""
    with contextlib.ExitStack() as stack:
        yield [
            stack.enter_context(worker_process(settings, log=tmp_path / f"worker-{number}.log"))
            for number in range(count)
        ]


async def test_due_retries_go_out_on_time_when_a_worker_is_sigkilled(
    aiohttp_client: Any,
    settings: Settings,
    config: RelayConfig,
    sandbox: Sandbox,
    redis: Redis,
    tmp_path: Path,
) -> None:
    # RQ's scheduler lock outlived its SIGKILLed holder by a minute, and due retries waited 63 s. Every
    # relay worker moves due retries itself: a kill delays none of them.
    sandbox.fail(500, 12, retry_after=4)
    client, event_ids = await post_events(aiohttp_client, settings, config, 12)
    with workers(settings, 3, tmp_path) as [doomed, *_]:
        await asyncio.to_thread(wait_for_runs, sandbox, 12, 20.0)
        scheduled = relay_queue(redis, settings).scheduled_job_registry
        await asyncio.to_thread(poll, lambda: len(scheduled) == 12 or None)  # every retry waits in RQ
        scheduler_lock = RQScheduler.get_locking_key(settings.queue_name)
        assert poll(lambda: redis.get(scheduler_lock)) == PROMOTER_NAME.encode()  # stock RQ stays out
        doomed.send_signal(signal.SIGKILL)  # with every retry still waiting
        runs = await until_all(client, event_ids, "succeeded", timeout_s=30)
    requests = sandbox.runs()
    assert len(requests) == 24  # each run twice: the 500, then its retry
    received_at = {request["api_id"]: request["received_at"] for request in requests if request["api_id"]}
    late_s = []
    for run in runs:
        [failed] = [step for step in run["history"] if step["status"] == "failed"]
        assert failed["retry_in_s"] >= 4  # the runner's Retry-After
        late_s.append(received_at[run["phlo_run_id"]] - (failed["at"] + failed["retry_in_s"]))
    assert min(late_s) >= -0.1, late_s  # never before its due time (Retry-After is a floor)
    assert max(late_s) <= 2.0, late_s
