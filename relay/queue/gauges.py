"""The queue's state read from Redis at scrape time: depths, ages, workers, circuit breakers, and Redis's
memory (used and ``maxmemory``: with ``noeviction`` a full Redis refuses every webhook).

These figures belong to the deployment, not to a process, so every scraped process reports the same values.
rq-exporter would read them, but it does not support RQ 3; the few reads are written here instead.
"""

from __future__ import annotations

import json
import logging
import struct
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector
from redis import Redis
from redis.exceptions import RedisError, ResponseError
from rq.job import Job
from rq.registry import FailedJobRegistry, ScheduledJobRegistry, StartedJobRegistry
from rq.utils import str_to_date
from rq.worker_registration import get_keys

from relay.infra.metrics import (
    BREAKER_STATE,
    QUEUE_OLDEST_AGE,
    QUEUE_RUNS,
    REDIS_MEMORY_MAX,
    REDIS_MEMORY_USED,
    REDIS_UP,
    RUNS_HELD,
    WORKERS,
    RelayMetrics,
    multiprocess_directory,
)
from relay.queue.jobs import relay_queue
from relay.queue.pause import Pause, list_paused
from relay.runner.breaker import CircuitBreaker
from relay.settings import Settings

BREAKER_STATES = ("closed", "half_open", "open")
SCRAPE_ATTEMPTS = 3
log = logging.getLogger(__name__)


def scrape_registry(
    metrics: RelayMetrics | None, redis: Callable[[], Redis], settings: Settings
) -> CollectorRegistry:
    """What a scrape shows: the counters of this process (or of every process of its metrics directory)
    and the queue's state, read through ``redis()``. Build it once per process."""
    directory = multiprocess_directory()
    if directory is None:
        registry = metrics.registry if metrics is not None else CollectorRegistry()
    else:
        registry = CollectorRegistry()
        registry.register(_SteadyMultiProcessCollector(None, path=str(directory)))  # type: ignore[no-untyped-call]
    registry.register(QueueStateCollector(redis, settings))
    return registry


class _SteadyMultiProcessCollector(MultiProcessCollector):
    """prometheus_client's reader of the processes' files, tried again when a file is caught half made.

    A process that starts (a worker the supervisor restarts) creates its file while a scrape may be
    reading the directory; the scrape then fails with a 500 (the metrics test saw one in CI).
    """

    def collect(self) -> Iterator[Any]:
        for attempt in range(SCRAPE_ATTEMPTS):
            try:
                return iter(list(super().collect()))  # type: ignore[no-untyped-call]
            except (OSError, ValueError, struct.error, json.JSONDecodeError):
                if attempt == SCRAPE_ATTEMPTS - 1:
                    raise
                log.warning("a metrics file was being written; reading the directory again")
                time.sleep(0.01)
        raise AssertionError("unreachable")


class QueueStateCollector(Collector):
    """Prometheus collector of the relay queue's state in Redis."""

    def __init__(self, redis: Callable[[], Redis], settings: Settings) -> None:
        self._redis_source = redis
        self._settings = settings

    def collect(self) -> Iterator[GaugeMetricFamily]:
        up = GaugeMetricFamily(REDIS_UP, "1 when this scrape could read the queue's state from Redis.")
        try:
            families = list(self._read())
        except RedisError:
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        yield from families

    def _read(self) -> Iterator[GaugeMetricFamily]:
        settings, redis = self._settings, self._redis_source()
        queue_name = relay_queue(redis, settings).name
        counts = read_queue_counts(redis, settings)

        runs = GaugeMetricFamily(
            QUEUE_RUNS, "Runs in the queue by state: queued, running, scheduled (retries), dead_lettered.",
            labels=["queue", "state"],
        )  # fmt: skip
        for state in ("queued", "running", "scheduled", "dead_lettered"):
            runs.add_metric([queue_name, state], getattr(counts, state))
        yield runs

        ages = GaugeMetricFamily(
            QUEUE_OLDEST_AGE,
            "queued: how long the run at the head of the queue has waited; scheduled: how long the most "
            "overdue scheduled run is past its due time (0: none is due).",
            labels=["queue", "state"],
        )
        ages.add_metric([queue_name, "queued"], counts.oldest_queued_age_s)
        ages.add_metric([queue_name, "scheduled"], counts.most_overdue_scheduled_s)
        yield ages

        workers = GaugeMetricFamily(WORKERS, "RQ workers registered on the queue.", labels=["queue"])
        workers.add_metric([queue_name], counts.workers)
        yield workers

        breakers = GaugeMetricFamily(
            BREAKER_STATE, "Circuit breaker of each Plivo account: 1 for its current state.",
            labels=["account", "state"],
        )  # fmt: skip
        for account in sorted(settings.account_names()):
            state = CircuitBreaker(redis, account).state().state
            for name in BREAKER_STATES:
                breakers.add_metric([account, name], 1 if name == state else 0)
        yield breakers

        held = GaugeMetricFamily(
            RUNS_HELD, "Runs held by each paused route, account or source (a series per pause).",
            labels=["kind", "name"],
        )  # fmt: skip
        for each in counts.pauses:
            held.add_metric([each.kind, each.name], each.held)
        yield held
        yield from _memory(redis)


def _memory(redis: Redis) -> Iterator[GaugeMetricFamily]:
    """Redis's ``used_memory`` and ``maxmemory`` (0: no limit) from INFO memory."""
    try:
        info = redis.info("memory")
    except ResponseError:  # INFO renamed or refused (some managed Redis): leave the gauges out
        log.debug("INFO memory refused; no Redis memory gauges")
        return
    used = GaugeMetricFamily(REDIS_MEMORY_USED, "Memory Redis has allocated (INFO memory used_memory).")
    used.add_metric([], float(info["used_memory"]))
    yield used
    limit = GaugeMetricFamily(
        REDIS_MEMORY_MAX, "Redis's maxmemory (INFO memory maxmemory); 0: no limit is set."
    )
    limit.add_metric([], float(info.get("maxmemory", 0)))
    yield limit


def _queued_age_s(redis: Redis, head: bytes | None, now: float) -> float:
    if head is None:
        return 0.0
    enqueued = redis.hget(Job.key_for(head.decode()), "enqueued_at")
    if not enqueued:
        return 0.0
    return max(0.0, now - str_to_date(enqueued).timestamp())


@dataclass(frozen=True)
class QueueCounts:
    """The queue's state, as the gauges above and the console's Overview show it."""

    queued: int
    oldest_queued_age_s: float
    running: int
    scheduled: int
    most_overdue_scheduled_s: float  # how long the most overdue scheduled run is past due (0: none is due)
    dead_lettered: int
    pauses: list[Pause]
    workers: int

    @property
    def held(self) -> int:
        """Runs held by pauses, all of them."""
        return sum(each.held for each in self.pauses)


def read_queue_counts(redis: Redis, settings: Settings) -> QueueCounts:
    """The queue's depth, its head's age, runs in flight, scheduled retries, dead letters and pauses."""
    queue = relay_queue(redis, settings)
    now = time.time()
    scheduled_key = ScheduledJobRegistry(queue=queue).key  # type: ignore[no-untyped-call]
    with redis.pipeline(transaction=False) as pipe:
        pipe.llen(queue.key)
        pipe.lindex(queue.key, 0)
        # Entries are scored by when they expire (started, failed) or are due (scheduled).
        pipe.zcount(StartedJobRegistry(queue=queue).key, now, "+inf")
        pipe.zcard(scheduled_key)
        pipe.zcount(FailedJobRegistry(queue=queue).key, now, "+inf")
        pipe.zrange(scheduled_key, 0, 0, withscores=True)
        queued, head, running, scheduled, dead, first_due = pipe.execute()
    due_at = first_due[0][1] if first_due else None
    return QueueCounts(
        queued=queued,
        oldest_queued_age_s=_queued_age_s(redis, head, now),
        running=running,
        scheduled=scheduled,
        most_overdue_scheduled_s=max(0.0, now - due_at) if due_at else 0.0,
        dead_lettered=dead,
        pauses=list_paused(redis),
        workers=len(get_keys(queue=queue)),
    )
