"""Metrics after a scripted run: every count matches what happened, across two ingress and two workers."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families
from redis import Redis

from relay.dev.redis_server import free_port
from relay.ingress.app import create_app
from relay.mapping.config import RelayConfig
from relay.settings import Settings
from tests.conftest import (
    ADMIN_HEADERS,
    KNOWN_PHLO,
    Sandbox,
    answers,
    clean_environment,
    poll,
    with_admin_token,
)
from tests.worker.test_delivery_to_runner import FORM

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(url: str) -> Samples:
    """Every sample of a /metrics page, by name and labels (with the admin token: harmless where the page is
    public)."""
    text = httpx.get(url, headers=ADMIN_HEADERS, timeout=10).raise_for_status().text
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


@contextlib.contextmanager
def relay_process(command: str, settings: Settings, *args: str, **env: str) -> Iterator[None]:
    process = subprocess.Popen(
        [sys.executable, "-m", "relay", command, *args],
        env=clean_environment(**{**settings.as_environment(), **env}),
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        yield
    finally:
        os.kill(process.pid, signal.SIGTERM)  # the supervisor stops its children in order
        try:
            process.wait(timeout=40)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def _pids(directory: Path) -> set[str]:
    return {path.stem.rsplit("_", 1)[1] for path in directory.glob("*.db")}


def test_counts_match_a_scripted_run_across_two_ingress_and_two_worker_processes(
    settings: Settings, sandbox: Sandbox, redis: Redis, tmp_path: Path
) -> None:
    # The ingress's /metrics takes the admin token; the workers' port is public (RELAY_METRICS_PUBLIC).
    settings = with_admin_token(settings)
    port, worker_port = free_port(), free_port()
    ingress_dir, worker_dir = tmp_path / "ingress-metrics", tmp_path / "worker-metrics"
    base = f"http://127.0.0.1:{port}"
    with relay_process("serve", settings, "--port", str(port), "--processes", "2",
                       RELAY_METRICS_DIR=str(ingress_dir)):  # fmt: skip
        poll(lambda: answers(f"{base}/readyz") == 200 or None, timeout_s=30)

        def post(path: str, **request: Any) -> int:
            # A fresh connection per request: the kernel spreads them over both processes.
            return httpx.post(f"{base}{path}", **request).status_code

        accepted = [post("/hooks/website-form", json={**FORM, "submission_id": f"s-{n}"}) for n in range(6)]
        duplicates = [post("/hooks/website-form", json={**FORM, "submission_id": "s-0"}) for _ in range(3)]
        ignored = post("/hooks/website-form", json={**FORM, "submission_id": "s-x", "form": "newsletter"})
        unmappable = post("/hooks/website-form", json={"submission_id": "s-y", "form": "callback-request"})
        rejected = post("/hooks/misrouted", json={"id": f"m-{uuid.uuid4().hex}"})
        malformed = post(
            "/hooks/website-form", content=b"{nope", headers={"Content-Type": "application/json"}
        )
        unknown = post("/hooks/no-such-source", json={})
        assert accepted == [202] * 6 and duplicates == [200] * 3
        assert (ignored, unmappable, rejected, malformed, unknown) == (200, 202, 202, 400, 404)
        assert len(_pids(ingress_dir)) == 2  # both processes counted

        ingress = scrape(f"{base}/metrics")
        events = "relay_events_received_total"
        for result, count in (("accepted", 8), ("duplicate", 3), ("ignored", 1)):
            source_counts = value(ingress, events, source="website-form", result=result, reason="")
            source_counts += value(ingress, events, source="misrouted", result=result, reason="")
            assert source_counts == count, result
        assert value(ingress, events, source="website-form", result="refused", reason="malformed_body") == 1
        assert value(ingress, events, source="_unknown", result="refused", reason="unknown_source") == 1
        assert value(ingress, "relay_runs_enqueued_total", route="callback") == 6
        assert value(ingress, "relay_dead_letters_total", route="callback", reason="unmappable") == 1
        requests = value(ingress, "relay_ingress_request_duration_seconds_count", source="website-form")
        assert requests == 6 + 3 + 1 + 1 + 1
        queue = settings.queue_name
        # 6 callbacks and the misrouted run; the unmappable one is a dead letter already
        assert value(ingress, "relay_queue_runs", queue=queue, state="queued") == 7
        assert value(ingress, "relay_queue_runs", queue=queue, state="dead_lettered") == 1
        assert value(ingress, "relay_queue_oldest_run_age_seconds", queue=queue, state="queued") > 0
        assert value(ingress, "relay_redis_up") == 1

        sandbox.fail(500, 1)  # the first run's first attempt fails, and is retried at once
        sandbox.fail(None, None, latency_ms=150)  # then each run takes a while: both workers get some
        public = {"RELAY_WORKER_METRICS_PORT": str(worker_port), "RELAY_METRICS_PUBLIC": "true"}
        with relay_process("worker", settings, "--processes", "2", RELAY_METRICS_DIR=str(worker_dir),
                           **public):  # fmt: skip
            worker_url = f"http://127.0.0.1:{worker_port}/metrics"
            poll(lambda: answers(worker_url) == 200 or None, timeout_s=30)

            def drained() -> Samples | None:
                samples = scrape(worker_url)
                runs = value(samples, "relay_queue_runs", queue=queue, state="queued")
                running = value(samples, "relay_queue_runs", queue=queue, state="running")
                scheduled = value(samples, "relay_queue_runs", queue=queue, state="scheduled")
                done = value(samples, "relay_runs_total", route="callback", outcome="succeeded") == 6
                return samples if done and runs == running == scheduled == 0 else None

            worker = poll(drained, timeout_s=60)
            assert value(worker, "relay_workers", queue=queue) == 2
    assert value(worker, "relay_runs_total", route="callback", outcome="retried") == 1
    assert value(worker, "relay_run_retries_total", route="callback", reason="http_500") == 1
    assert value(worker, "relay_runs_total", route="not-deployed", outcome="dead_lettered") == 1
    assert value(worker, "relay_dead_letters_total", route="not-deployed", reason="rejected") == 1
    assert value(worker, "relay_runner_request_duration_seconds_count", account="default", status="2xx") == 6
    assert value(worker, "relay_runner_request_duration_seconds_count", account="default", status="5xx") == 1
    assert value(worker, "relay_runner_request_duration_seconds_count", account="default", status="4xx") == 1
    assert value(worker, "relay_run_end_to_end_seconds_count", route="callback") == 6
    assert value(worker, "relay_queue_runs", queue=queue, state="dead_lettered") == 2
    assert value(worker, "relay_circuit_breaker_state", account="default", state="closed") == 1
    assert len(_pids(worker_dir)) == 2  # both workers counted
    assert len([run for run in sandbox.runs() if run["phlo_id"] == KNOWN_PHLO]) == 7  # 6 + the retry


async def test_a_single_worker_process_serves_the_counts_of_its_own_runs(
    aiohttp_client: Any, settings: Settings, config: RelayConfig, sandbox: Sandbox
) -> None:
    # Regression: `relay worker` (one process, no metrics directory) served the counters of a context
    # built for the metrics server, while its jobs counted in another one: its runs never showed.
    client = await aiohttp_client(create_app(settings, config))
    response = await client.post("/hooks/website-form", json={**FORM, "submission_id": "s-single"})
    assert response.status == 202
    worker_port = free_port()
    # The worker's own port takes the admin token, like the ingress's /metrics: 401 without it.
    with relay_process("worker", with_admin_token(settings), RELAY_WORKER_METRICS_PORT=str(worker_port)):
        worker_url = f"http://127.0.0.1:{worker_port}/metrics"
        poll(lambda: answers(worker_url) == 401 or None, timeout_s=30)

        def delivered() -> Samples | None:
            samples = scrape(worker_url)
            done = value(samples, "relay_runs_total", route="callback", outcome="succeeded") == 1
            return samples if done else None

        worker = poll(delivered, timeout_s=30)
    assert value(worker, "relay_runner_request_duration_seconds_count", account="default", status="2xx") == 1
    assert len(sandbox.runs()) == 1
