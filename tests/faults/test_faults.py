"""Fault injection: real Redis, sandbox, ingress and worker processes, a stream of webhooks, a fault while
it flows, then the accounting (``tests/faults/accounting.py``).

The short form runs with the suite; ``RELAY_FAULTS=long`` runs the long form of the release checks (a few
thousand events per scenario, the sandbox down for a full minute). ``RELAY_FAULTS_REPORT=path`` appends
each scenario's figures to a JSON lines file (docs/faults.md holds those of a long run).
"""

from __future__ import annotations

import asyncio
import itertools
import os
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from relay.queue.records import RunStatus
from tests.faults.accounting import Report, account
from tests.faults.harness import Cluster
from tests.faults.stream import Stream, wait_for

LONG = os.environ.get("RELAY_FAULTS") == "long"
SETTLE_S = 300.0 if LONG else 120.0  # how long the runs may take to end once the stream is over
pytestmark = pytest.mark.timeout(1800 if LONG else 300)


@dataclass(frozen=True)
class Size:
    events: int
    rate_per_s: float


def size(short: Size, long: Size) -> Size:
    return long if LONG else short


def stream_to(cluster: Cluster, prefix: str, scale: Size) -> Stream:
    urls = [ingress.url for ingress in cluster.ingresses]
    return Stream(urls, count=scale.events, rate_per_s=scale.rate_per_s, prefix=prefix)


def finish(cluster: Cluster, report: Report) -> None:
    report.problems[:0] = cluster.unexpected_exits()  # first: it explains what follows
    report.save()
    report.assert_clean()


def killed_mid_run(report: Report) -> int:
    return sum(
        any(step.error == "the worker died mid-run" for step in run.history) for run in report.runs_of_all()
    )


async def until_in_flight(cluster: Cluster, timeout_s: float = 10.0) -> None:
    """Return once the sandbox holds a request it has not answered yet (or after ``timeout_s``)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        runs = await asyncio.to_thread(cluster.sandbox.runs)
        if any(run["status"] is None for run in runs):
            return
        await asyncio.sleep(0.05)


async def test_workers_killed_with_sigkill_again_and_again(tmp_path: Path) -> None:
    scale = size(Size(800, 100), Size(4000, 100))
    with Cluster(tmp_path, workers=3) as cluster:
        cluster.sandbox.fault(None, None, latency_ms=50)  # every run spends a while in flight
        stream = stream_to(cluster, "kill", scale)
        flowing = asyncio.create_task(stream.run())
        kills = 0
        for round_number in itertools.count(1):
            await asyncio.sleep(1.5)  # the fault's own pace: workers lost every 1.5 s
            if flowing.done():
                break
            if round_number % 3 == 0:  # a host lost: every worker, while a request is out
                await until_in_flight(cluster)
                victims = list(cluster.workers)
            else:  # the oldest worker has been taking runs for a while
                victims = cluster.workers[:1]
            for victim in victims:
                await asyncio.to_thread(cluster.kill_worker, victim)
                cluster.start_worker()  # at once, as a supervisor would
            kills += len(victims)
        report = await asyncio.to_thread(account, cluster, await flowing, "workers SIGKILLed", SETTLE_S)
        report.notes.update(kills=kills, runs_killed_mid_run=killed_mid_run(report))
        finish(cluster, report)
    assert kills >= 5
    assert report.notes["runs_killed_mid_run"] > 0


async def test_redis_restarted_during_the_stream_loses_no_accepted_event(tmp_path: Path) -> None:
    scale = size(Size(800, 100), Size(4000, 100))
    restarts = 4 if LONG else 2
    with Cluster(tmp_path, workers=3) as cluster:
        stream = stream_to(cluster, "restart", scale)
        flowing = asyncio.create_task(stream.run())
        windows = []  # (stopped, started again) of each restart
        for number in range(1, restarts + 1):
            await wait_for(lambda n=number: stream.sent >= scale.events * n // (restarts + 1))
            stopped_at = time.time()
            await asyncio.to_thread(cluster.restart_redis)
            windows.append((stopped_at, time.time()))
        webhooks = await flowing
        report = await asyncio.to_thread(account, cluster, webhooks, "Redis restarted", SETTLE_S)
        attempts = [a for hook in webhooks for a in hook.attempts]
        met = [sum(stopped <= a.at <= started for a in attempts) for stopped, started in windows]
        cut = [a for a in attempts if a.status is None or a.status >= 500]
        report.notes.update(restarts=restarts, requests_during_each_restart=met, cut_by_restarts=len(cut))
        finish(cluster, report)
    # The scenario proves something only if its restarts hit the stream: requests sent while Redis was
    # down, and some of them answered 503 (or cut off) for it.
    assert all(met), f"a restart met no request: {met}"
    assert cut, "no request was cut by a restart"


async def test_redis_unreachable_at_the_ingress_answers_503_and_recovers_on_its_own(tmp_path: Path) -> None:
    scale = size(Size(800, 100), Size(4000, 100))
    down_s = 15.0 if LONG else 3.0
    with Cluster(tmp_path, workers=3) as cluster:
        [ingress] = cluster.ingresses
        ingress_pid = ingress.process.pid if ingress.process else None
        stream = stream_to(cluster, "unreachable", scale)
        flowing = asyncio.create_task(stream.run())
        await wait_for(lambda: stream.sent >= scale.events // 4)
        await asyncio.to_thread(cluster.redis.stop)
        stopped_at = time.time()
        await asyncio.sleep(down_s)  # the outage
        await asyncio.to_thread(cluster.redis.start)
        back_at = time.time()
        webhooks = await flowing
        report = await asyncio.to_thread(account, cluster, webhooks, "Redis unreachable", SETTLE_S)

        attempts = sorted((a for hook in webhooks for a in hook.attempts), key=lambda a: a.at)
        refused = [a for a in attempts if a.status == 503]
        for attempt in refused:
            if attempt.body.get("error") != "queue_unavailable":
                report.problem(f"a 503 without the queue_unavailable error: {attempt.body}")
        first_back = next(a.at for a in attempts if a.at >= back_at and a.status in (200, 202))
        late = [a for a in attempts if a.at > back_at + 5 and a.status not in (200, 202)]
        report.notes.update(down_s=down_s, back_after_s=round(first_back - back_at, 2))
        report.notes.update(refused_while_down=sum(stopped_at <= a.at <= back_at for a in refused))
        if late:
            report.problem(f"{len(late)} request(s) still not 2xx 5 s after Redis came back")
        if ingress.process is None or ingress.process.pid != ingress_pid:
            report.problem("the ingress was restarted")
        finish(cluster, report)
    assert refused, "no request met the outage"
    assert first_back - back_at < 5


async def test_an_ingress_killed_mid_stream_delivers_all_it_answered(tmp_path: Path) -> None:
    scale = size(Size(800, 100), Size(4000, 100))
    with Cluster(tmp_path, workers=3, ingresses=2) as cluster:
        doomed = cluster.ingresses[1]
        stream = stream_to(cluster, "ingress", scale)
        flowing = asyncio.create_task(stream.run())
        await wait_for(lambda: stream.sent >= scale.events * 2 // 5)
        await asyncio.to_thread(doomed.kill)
        await wait_for(lambda: stream.sent >= scale.events * 3 // 5)
        await asyncio.to_thread(doomed.start)  # as a supervisor would, on the same port
        report = await asyncio.to_thread(account, cluster, await flowing, "an ingress SIGKILLed", SETTLE_S)
        finish(cluster, report)
    assert report.unanswered > 0, "no request met the dead ingress"


def busiest_window(times: list[float], window_s: float) -> int:
    """The most of ``times`` in any span of ``window_s`` seconds."""
    times, most, start = sorted(times), 0, 0
    for end, at in enumerate(times):
        while at - times[start] >= window_s:
            start += 1
        most = max(most, end - start + 1)
    return most


def sooner_than_retry_after(received: list[dict[str, Any]], retry_after_s: float) -> list[float]:
    """The gaps between a 429 and the next request of the same run that were shorter than Retry-After."""
    by_run: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for run in received:
        by_run[(str((run["body"] or {}).get("ref")), run["phlo_id"])].append(run)
    gaps = []
    for requests in by_run.values():
        requests.sort(key=lambda run: run["received_at"])
        for refused, following in itertools.pairwise(requests):
            if refused["status"] == 429:
                gaps.append(following["received_at"] - refused["received_at"])
    return [gap for gap in gaps if gap < retry_after_s]


async def test_a_sandbox_down_then_slow_then_429_and_500_loses_nothing(tmp_path: Path) -> None:
    scale = size(Size(800, 100), Size(3000, 30))
    down_s, cycles = (60.0, 40) if LONG else (4.0, 10)
    limit = 50
    with Cluster(tmp_path, workers=3, rate_limit=limit, rate_window_s=1.0) as cluster:
        sandbox = cluster.sandbox
        stream = stream_to(cluster, "sandbox", scale)
        flowing = asyncio.create_task(stream.run())
        await wait_for(lambda: stream.sent >= scale.events // 10)
        await asyncio.to_thread(sandbox.go_down)
        await asyncio.sleep(down_s)  # the outage
        await asyncio.to_thread(sandbox.start)
        # The sandbox's faults apply to its next requests in order. Each failure is followed by
        # successes, which close the breaker again, so that runs are retried rather than held back.
        for _ in range(cycles):  # slow: 300 ms, and now and then beyond the relay's 1 s read timeout
            sandbox.fault(None, 1, latency_ms=1500)
            sandbox.fault(None, 4, latency_ms=300)
        for _ in range(cycles):  # flaky: 429 with Retry-After, or 500, every third request
            for status in (429, 500):
                sandbox.fault(status, 1, retry_after=2 if status == 429 else None)
                sandbox.fault(None, 2, latency_ms=1)
        sandbox.fault(500, cluster.settings.breaker_failures + 1)  # enough in a row to open the breaker
        await wait_for(lambda: not sandbox.faults(), 120, interval_s=0.5)
        report = await asyncio.to_thread(
            account, cluster, await flowing, "sandbox down, slow, 429, 500", SETTLE_S
        )

        received = sandbox.all_runs()
        busiest = busiest_window([run["received_at"] for run in received], 1.0)
        for early in sooner_than_retry_after(received, retry_after_s=2):
            report.problem(f"sent again {early:.2f} s after a 429 with Retry-After: 2")
        runs = report.runs_of_all()
        waits = sum(any("circuit breaker" in (step.note or "") for step in run.history) for run in runs)
        retried = sum(run.attempts > 1 and run.status is RunStatus.SUCCEEDED for run in runs)
        report.notes.update(down_s=down_s, rate_limit=f"{limit}/1s", busiest_1s=busiest)
        report.notes.update(breaker_waits=waits, retried_then_succeeded=retried)
        report.notes.update(refused_429=sum(run["status"] == 429 for run in received))
        if busiest > limit:
            report.problem(f"{busiest} requests reached the sandbox within one second; the limit is {limit}")
        finish(cluster, report)
    assert busiest > limit // 2, "the stream never came near the rate limit: the check proves nothing"
    assert waits > 0, "the breaker never opened"
    assert retried > 0
