"""The Python load generator: filling queues through the ingress, and sending at a precisely paced rate.

Throughput is measured with wrk (bench/wrk.py); this generator is for what wrk cannot do: a fixed set of
webhooks whose answers (job ids) are kept, and a steady 50 events/s with each send's time recorded.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

import aiohttp
import httpx

from bench.harness import BenchError
from bench.signing import SIGNATURE_HEADER, SignedRequest, sign, signed_requests
from bench.stack import Settings, Stack


@dataclass
class Sent:
    """Answers by status, the job ids of the accepted webhooks, and each send's wall-clock time."""

    statuses: Counter[int] = field(default_factory=Counter)
    job_ids: list[str] = field(default_factory=list)
    sent_at: dict[str, float] = field(default_factory=dict)
    answer_ms: list[float] = field(default_factory=list)

    def require_all_accepted(self, expected: int) -> None:
        if self.statuses.get(202, 0) != expected:
            raise BenchError(f"expected {expected} webhooks answered 202, got {dict(self.statuses)}")


async def _post(session: aiohttp.ClientSession, url: str, request: SignedRequest, sent: Sent) -> None:
    started = time.perf_counter()
    sent.sent_at[request.event_id] = time.time()  # just before the request is written
    async with session.post(url, data=request.body, headers=request.headers) as answer:
        body = await answer.json(content_type=None)
    sent.answer_ms.append((time.perf_counter() - started) * 1000)
    sent.statuses[answer.status] += 1
    if answer.status == 202:
        sent.job_ids.extend(job["job_id"] for job in body["jobs"])


async def _post_each(url: str, requests: Sequence[SignedRequest], concurrency: int) -> Sent:
    sent = Sent()
    pending = iter(requests)
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def sender() -> None:
            for request in pending:
                await _post(session, url, request, sent)

        await asyncio.gather(*(sender() for _ in range(concurrency)))
    return sent


def post_each(url: str, requests: Sequence[SignedRequest], concurrency: int = 32) -> Sent:
    """Send every request once with ``concurrency`` senders; returns when all are answered."""
    return asyncio.run(_post_each(url, requests, concurrency))


def queue_runs(stack: Stack, runs: int, prefix: str = "dlv", settings: Settings | None = None) -> Sent:
    """Queue ``runs`` real runs through a ``relay serve`` started for it (and stopped); all must be 202.

    The event ids, which the payload's ``ref`` carries to the runner, are ``{prefix}-{hex}-{n}``. A run's
    retry policy comes from the ingress's ``settings`` (``RELAY_RETRY_*``): it travels with the job.
    """
    ingress, url = stack.start_ingress(settings=settings)
    try:
        sent = post_each(url, list(signed_requests(stack.secret, f"{prefix}-{uuid.uuid4().hex[:12]}", runs)))
    finally:
        stack.stop(ingress)
    sent.require_all_accepted(runs)
    return sent


async def _post_paced(url: str, requests: Sequence[SignedRequest], rate_per_s: float) -> Sent:
    sent = Sent()
    loop = asyncio.get_running_loop()
    connector = aiohttp.TCPConnector(limit=64)
    async with aiohttp.ClientSession(connector=connector) as session:
        tasks = []
        start = loop.time()
        for number, request in enumerate(requests):
            delay_s = start + number / rate_per_s - loop.time()
            if delay_s > 0:
                await asyncio.sleep(delay_s)  # pacing: the n-th send is due at start + n / rate
            tasks.append(asyncio.create_task(_post(session, url, request, sent)))
        await asyncio.gather(*tasks)
    return sent


def post_paced(url: str, requests: Sequence[SignedRequest], rate_per_s: float) -> Sent:
    """Send the requests at ``rate_per_s``, each at its due time whatever the answers take."""
    return asyncio.run(_post_paced(url, requests, rate_per_s))


def check_verification(url: str, request: SignedRequest, secret: str) -> None:
    """Prove the ingress verifies: the signed request is accepted, a wrongly signed one refused with 401."""
    forged = {**request.headers, SIGNATURE_HEADER: sign(secret + "-wrong", request.body)}
    refused = httpx.post(url, content=request.body, headers=forged, timeout=10)
    if refused.status_code != 401:
        raise BenchError(f"a wrongly signed webhook got {refused.status_code}, not 401: {refused.text}")
    accepted = httpx.post(url, content=request.body, headers=request.headers, timeout=10)
    if accepted.status_code != 202:
        raise BenchError(f"a signed webhook got {accepted.status_code}, not 202: {accepted.text}")
