"""The event stream of a fault scenario: webhooks with unique refs at a steady rate, every answer recorded.

Webhook ``i`` alternates between the unsigned and the signed source, fans out to a second run every third
time, now and then lacks the phone its call needs (a dead letter at once) or names a region whose PHLO
does not exist (a dead letter at the runner's 404). Half of the senders retry a request that got no 2xx
(a 503, or no answer at all) on the next ingress, as CRMs do; the other half give up at once.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import time
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from tests.faults.harness import SIGNING_SECRET


@dataclass
class Attempt:
    """One HTTP request of a webhook: the answer's status and body, or the client error."""

    url: str
    at: float
    status: int | None = None
    body: Any = None
    error: str | None = None


@dataclass
class Webhook:
    ref: str
    source: str
    body: dict[str, Any]
    retries: bool
    attempts: list[Attempt] = field(default_factory=list)

    @property
    def accepted(self) -> Attempt | None:
        """The first attempt answered 2xx, if any."""
        return next((a for a in self.attempts if a.status is not None and 200 <= a.status < 300), None)

    @property
    def expects_call(self) -> bool:
        return bool(self.body.get("phone"))


def webhook(prefix: str, index: int) -> Webhook:
    source = "form" if index % 2 == 0 else "signed"
    ref = f"{prefix}-{index:06d}"
    body: dict[str, Any] = {"ref": ref, "fanout": index % 3 == 0, "name": "Ada"}
    if index % 50 != 7:
        body["phone"] = f"+1415555{index % 10_000:04d}"
    if source == "form" and index % 100 == 12:
        body["region"] = "nowhere"
    return Webhook(ref=ref, source=source, body=body, retries=(index // 2) % 2 == 0)


class Stream:
    """Sends ``count`` webhooks at ``rate_per_s`` to ``urls`` in turn, without waiting for answers."""

    def __init__(
        self,
        urls: list[str],
        *,
        count: int,
        rate_per_s: float,
        prefix: str,
        retry_delay_s: float = 0.5,
        max_attempts: int = 60,
        timeout_s: float = 30.0,
    ) -> None:
        self.urls, self.count, self.rate_per_s, self.prefix = urls, count, rate_per_s, prefix
        self.retry_delay_s, self.max_attempts, self.timeout_s = retry_delay_s, max_attempts, timeout_s
        self.webhooks: list[Webhook] = []
        self.started_at = 0.0
        self.done = 0

    @property
    def sent(self) -> int:
        """Webhooks whose first request has gone out."""
        return len(self.webhooks)

    async def run(self) -> list[Webhook]:
        timeout = aiohttp.ClientTimeout(total=self.timeout_s)
        connector = aiohttp.TCPConnector(limit=300)
        async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
            loop = asyncio.get_running_loop()
            self.started_at = loop.time()
            tasks = []
            for index in range(self.count):
                delay = self.started_at + index / self.rate_per_s - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)  # the stream's pace: one webhook every 1/rate seconds
                hook = webhook(self.prefix, index)
                self.webhooks.append(hook)
                tasks.append(asyncio.create_task(self._deliver(session, hook, index)))
            await asyncio.gather(*tasks)
        return self.webhooks

    async def _deliver(self, session: aiohttp.ClientSession, hook: Webhook, index: int) -> None:
        raw = json.dumps(hook.body).encode()
        headers = {"Content-Type": "application/json"}
        if hook.source == "signed":
            digest = hmac.new(SIGNING_SECRET.encode(), raw, hashlib.sha256).hexdigest()
            headers["X-Hub-Signature-256"] = f"sha256={digest}"
        for number in range(self.max_attempts):
            url = f"{self.urls[(index + number) % len(self.urls)]}/hooks/{hook.source}"
            attempt = Attempt(url=url, at=time.time())
            hook.attempts.append(attempt)
            try:
                async with session.post(url, data=raw, headers=headers) as response:
                    attempt.status = response.status
                    attempt.body = await response.json(content_type=None)
            except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
                attempt.error = type(exc).__name__
            if hook.accepted is not None or not hook.retries:
                break
            if attempt.status is not None and attempt.status != 503:
                break  # a refusal other than 503 is not retried by anyone
            await asyncio.sleep(self.retry_delay_s)  # the sender's own retry interval
        self.done += 1


async def wait_for(condition: Any, timeout_s: float = 60.0, interval_s: float = 0.02) -> None:
    """Poll ``condition()`` on the event loop until it is true, with a deadline."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not reached before the deadline"
        await asyncio.sleep(interval_s)
