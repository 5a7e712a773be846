"""A frequency cap across real processes: 20 identical events for one phone number posted at once to two
``relay serve`` processes and delivered by three ``relay worker`` processes (real Redis, the runner sandbox),
under a cap of 1 per 24 h. Exactly one run reaches the runner; the 19 others are suppressed naming it, their
RQ jobs finished, nothing retried or dead-lettered; a replay past the cap delivers one more.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
from redis import Redis
from rq import Worker
from rq.job import Job, JobStatus
from rq.registry import FailedJobRegistry
from rq.serializers import JSONSerializer

from relay.dev.redis_server import free_port
from relay.mapping.caps import recipient_hash
from relay.queue.jobs import relay_queue
from relay.queue.records import RunOutcome, read_event
from relay.settings import Settings
from tests.conftest import KNOWN_PHLO, Sandbox, answers, clean_environment, poll, with_admin_token
from tests.infra.test_metric_counts import scrape, value

PHONE = "+14155550123"
EVENTS = 20
# Each event has an id of its own (so none is a duplicate of another); all else is the same.
CONFIG = f"""
sources:
  forms: {{event_id: {{path: ref}}}}
routes:
  - name: call
    source: forms
    phlo_id: {KNOWN_PHLO}
    payload:
      from: "+14155550100"
      to: {{path: phone, required: true}}
    limit_per_recipient: {{max: 1, per: 24h}}
"""


@contextlib.contextmanager
def relay(settings: Settings, *args: str, **env: str) -> Iterator[subprocess.Popen[bytes]]:
    """A real ``relay`` command in a session of its own; the session killed at the end."""
    process = subprocess.Popen(
        [sys.executable, "-m", "relay", *args],
        env=clean_environment(**{**settings.as_environment(), **env}),
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        yield process
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=30)


async def post_all(urls: list[str]) -> list[str]:
    """EVENTS events at once, one phone number, spread over the ingress processes; the event ids."""
    async with httpx.AsyncClient(timeout=20) as client:
        sends = [
            client.post(f"{urls[n % len(urls)]}/hooks/forms", json={"ref": f"r-{n}", "phone": PHONE})
            for n in range(EVENTS)
        ]
        responses = await asyncio.gather(*sends)
    assert [response.status_code for response in responses] == [202] * EVENTS
    return [response.json()["event_id"] for response in responses]


def runs_when_final(redis: Redis, event_ids: list[str]) -> list[RunOutcome] | None:
    views = [read_event(redis, event_id) for event_id in event_ids]
    runs = [run for view in views if view is not None for run in view.runs]
    done = len(runs) == EVENTS and all(run.status in ("succeeded", "suppressed") for run in runs)
    return runs if done else None


def cli(settings: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "relay", *args],
        env=clean_environment(**settings.as_environment()),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_20_events_for_one_number_across_2_ingress_and_3_workers_send_1_and_suppress_19(
    settings: Settings, sandbox: Sandbox, redis: Redis, tmp_path: Path
) -> None:
    settings = with_admin_token(settings)  # the worker's /metrics takes the admin token
    settings.config_path.write_text(CONFIG, encoding="utf-8")
    ports, metrics_port = [free_port(), free_port()], free_port()
    urls = [f"http://127.0.0.1:{port}" for port in ports]
    metrics = {"RELAY_METRICS_DIR": str(tmp_path / "worker-metrics")}
    queue = relay_queue(redis, settings)
    with contextlib.ExitStack() as stack:
        for port in ports:
            stack.enter_context(relay(settings, "serve", "--port", str(port)))
        stack.enter_context(relay(settings, "worker", **metrics, RELAY_WORKER_METRICS_PORT=str(metrics_port)))
        for _ in range(2):
            stack.enter_context(relay(settings, "worker", **metrics))
        for url in urls:
            poll(lambda url=url: answers(f"{url}/readyz") == 200 or None, timeout_s=30)  # type: ignore[misc]
        poll(lambda: len(Worker.all(queue=queue)) == 3 or None, timeout_s=30)

        event_ids = asyncio.run(post_all(urls))
        runs = poll(lambda: runs_when_final(redis, event_ids), timeout_s=60)

        [sent] = sandbox.runs()
        assert sent["phlo_id"] == KNOWN_PHLO
        [first] = [run for run in runs if run.status == "succeeded"]
        suppressed = [run for run in runs if run.status == "suppressed"]
        assert len(suppressed) == EVENTS - 1
        assert first.phlo_run_id == sent["api_id"]
        first_event = first.job_id.partition("-")[0]
        for run in suppressed:
            assert run.collided_with is not None
            assert (run.collided_with.job_id, run.collided_with.event_id) == (first.job_id, first_event)
            assert (run.collided_with.kind, run.collided_with.max, run.collided_with.per_s) == (
                "route",
                1,
                86400,
            )
            assert run.attempts == 0 and [step.status for step in run.history] == ["suppressed"]
            # Its RQ job ended finished, its result saying why; not retried, not a dead letter.
            job = Job.fetch(run.job_id, connection=redis, serializer=JSONSerializer)
            assert job.get_status() == JobStatus.FINISHED
            assert job.return_value() == {"suppressed": True, "collided_with": run.collided_with.model_dump()}
        # The runs were decided by several worker processes at once, not one after another by one.
        jobs = [Job.fetch(run.job_id, connection=redis, serializer=JSONSerializer) for run in runs]
        assert len({job.worker_name for job in jobs}) >= 2
        assert len(FailedJobRegistry(queue.name, connection=redis, serializer=JSONSerializer)) == 0
        # The cap's key names the number by its hash only; no key name holds the number.
        all_keys: list[bytes] = redis.keys("*")  # type: ignore[assignment]
        [cap_key] = [key.decode() for key in all_keys if key.startswith(b"relay:cap:")]
        assert cap_key == f"relay:cap:route:call:{recipient_hash(PHONE)}"
        assert not any(PHONE.lstrip("+").encode() in key for key in all_keys)

        worker_metrics = scrape(f"http://127.0.0.1:{metrics_port}/metrics")
        assert value(worker_metrics, "relay_runs_suppressed_total", route="call") == EVENTS - 1
        assert value(worker_metrics, "relay_runs_total", route="call", outcome="suppressed") == EVENTS - 1

        # `relay events show` shows the suppressed run and what it collided with.
        shown = cli(settings, "events", "show", suppressed[0].job_id.partition("-")[0])
        assert shown.returncode == 0, shown.stderr
        [shown_run] = json.loads(shown.stdout)["runs"]
        assert shown_run["status"] == "suppressed"
        assert shown_run["collided_with"]["job_id"] == first.job_id

        # A replay must say it overrides the cap; then it delivers the run, and only that one.
        refused = cli(settings, "runs", "replay", suppressed[0].job_id)
        assert refused.returncode == 2 and "--override-cap" in refused.stderr
        replayed = cli(settings, "runs", "replay", suppressed[0].job_id, "--override-cap")
        assert replayed.returncode == 0, replayed.stdout + replayed.stderr
        event_id = suppressed[0].job_id.partition("-")[0]

        def delivered() -> RunOutcome | None:
            view = read_event(redis, event_id)
            return view.runs[0] if view is not None and view.runs[0].status == "succeeded" else None

        run = poll(delivered, timeout_s=30)
        assert len(sandbox.runs()) == 2
        assert run.collided_with is None and run.attempts == 1
        assert [step.status for step in run.history] == ["suppressed", "queued", "succeeded"]
        assert "cap overridden" in (run.history[1].note or "")
        assert redis.zcard(cap_key) == 2  # the override counts: later runs see it
        again = cli(settings, "runs", "replay", suppressed[0].job_id, "--override-cap")
        assert again.returncode == 1 and "not suppressed: it is succeeded" in again.stdout
