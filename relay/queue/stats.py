"""Counts for the console's Overview: events by source and outcome, runs by route and outcome, per minute.

Prometheus has these as counters per process, but the console reads Redis only (a deployment may have no
Prometheus), so the same facts are kept in Redis as well: one hash per kind and minute
(``keys.stats_key``), field ``<name>|<outcome>``, incremented with HINCRBY and expiring. Runs also go into
hourly buckets, so that a day's totals are 25 reads, not 1,440.

The ingress counts in memory and writes once a second (``EventCounter``): a webhook costs a dict update,
not a Redis command. A worker writes a run's count in the pipeline that saves the run's outcome.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field

import redis.asyncio
from redis import Redis
from redis.client import Pipeline
from redis.exceptions import RedisError

from relay import keys

log = logging.getLogger(__name__)
EVENTS, RUNS, RUNS_HOURLY = "events", "runs", "runs-hourly"
MINUTE_TTL_S = 2 * 3600  # the Overview reads the last hour per minute
HOUR_TTL_S = 26 * 3600  # and the last 24 h per hour
FLUSH_INTERVAL_S = 1.0
CLOSE_FLUSH_TIMEOUT_S = 5.0  # a last write at shutdown is worth this much, not a hung shutdown
ERROR_CHARS = 300
RUN_OUTCOMES = ("succeeded", "failed", "dead_lettered")


def _field(name: str, outcome: str) -> str:
    return f"{name}|{outcome}"


def minute_of(at_s: float) -> int:
    return int(at_s // 60)


def hour_of(at_s: float) -> int:
    return int(at_s // 3600) * 60  # the hour's first minute: hourly keys share the minutes' numbering


def count_run(pipe: Pipeline, route: str, outcome: str, at_s: float, error: str | None = None) -> None:
    """Queue on ``pipe`` the count of a run's outcome (succeeded, failed attempt, dead_lettered) and its
    route's last error."""
    minute_key, hour_key = keys.stats_key(RUNS, minute_of(at_s)), keys.stats_key(RUNS_HOURLY, hour_of(at_s))
    pipe.hincrby(minute_key, _field(route, outcome), 1)
    pipe.expire(minute_key, MINUTE_TTL_S)
    pipe.hincrby(hour_key, _field(route, outcome), 1)
    pipe.expire(hour_key, HOUR_TTL_S)
    if error is not None:
        pipe.hset(keys.last_error_key(), route, json.dumps({"at": at_s, "error": error[:ERROR_CHARS]}))


@dataclass
class EventCounter:
    """The ingress's counts since its last write, written once a second: events by source and outcome,
    and the runs it dead-letters itself (a route it could not map) by route, with their error."""

    redis: redis.asyncio.Redis
    interval_s: float = FLUSH_INTERVAL_S
    _counts: Counter[tuple[str, int, str]] = field(default_factory=Counter)  # (kind, bucket, field)
    _errors: dict[str, str] = field(default_factory=dict)  # route -> JSON {at, error}
    _writer: asyncio.Task[None] | None = None
    _closing: asyncio.Event = field(default_factory=asyncio.Event)

    def count(self, source: str, outcome: str) -> None:
        """One event of ``source``: accepted, ignored, duplicate, ping or ``refused:<reason>``."""
        self._counts[(EVENTS, minute_of(time.time()), _field(source, outcome))] += 1
        self._start()

    def count_dead_letter(self, route: str, error: str | None) -> None:
        """A run of ``route`` dead-lettered as its event came in (its payload could not be built)."""
        now = time.time()
        self._counts[(RUNS, minute_of(now), _field(route, "dead_lettered"))] += 1
        self._counts[(RUNS_HOURLY, hour_of(now), _field(route, "dead_lettered"))] += 1
        if error is not None:
            self._errors[route] = json.dumps({"at": now, "error": error[:ERROR_CHARS]})
        self._start()

    def _start(self) -> None:
        if self._writer is None:
            self._writer = asyncio.get_running_loop().create_task(self._write_every_interval())

    async def _write_every_interval(self) -> None:
        # The batching interval is a timed wait on the closing event: close() stops the loop between writes,
        # never by cancelling a write in the middle of its pipeline (which could leave the close waiting).
        while not self._closing.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._closing.wait(), self.interval_s)
            await self.flush()

    async def flush(self) -> None:
        """Write the counts held; on a Redis error they are kept for the next write."""
        if not self._counts and not self._errors:
            return
        counts, self._counts = self._counts, Counter()
        errors, self._errors = self._errors, {}
        try:
            async with self.redis.pipeline(transaction=False) as pipe:
                for (kind, bucket, name), n in counts.items():
                    pipe.hincrby(keys.stats_key(kind, bucket), name, n)
                for kind, bucket in {(kind, bucket) for kind, bucket, _ in counts}:
                    pipe.expire(
                        keys.stats_key(kind, bucket), HOUR_TTL_S if kind == RUNS_HOURLY else MINUTE_TTL_S
                    )
                for route, error in errors.items():
                    pipe.hset(keys.last_error_key(), route, error)
                await pipe.execute()
        except RedisError as exc:
            log.warning("console counts not written, kept for the next try: %s", exc)
            self._counts.update(counts)
            self._errors = {**errors, **self._errors}

    async def close(self) -> None:
        """Stop writing every interval, after a last write (given up after CLOSE_FLUSH_TIMEOUT_S)."""
        self._closing.set()
        try:
            async with asyncio.timeout(CLOSE_FLUSH_TIMEOUT_S):
                if self._writer is not None:
                    await self._writer  # it writes once more as it stops
                else:
                    await self.flush()
        except TimeoutError:
            log.warning("console counts not written at shutdown: Redis did not answer in time")


@dataclass(frozen=True)
class Tally:
    """Counts by name (a source or route), then outcome; and per minute totals for a chart."""

    by_name: dict[str, Counter[str]]
    per_minute: list[int]  # oldest first


def _tally(hashes: Iterable[dict[bytes, bytes]]) -> Tally:
    by_name: dict[str, Counter[str]] = {}
    per_minute = []
    for fields in hashes:
        total = 0
        for raw, n in fields.items():
            name, _, outcome = raw.decode().rpartition("|")
            by_name.setdefault(name, Counter())[outcome] += int(n)
            total += int(n)
        per_minute.append(total)
    return Tally(by_name, per_minute)


def read_recent(redis: Redis, kind: str, minutes: int = 60, now_s: float | None = None) -> Tally:
    """The counts of ``kind`` (EVENTS or RUNS) over the last ``minutes`` (the current one included)."""
    last = minute_of(time.time() if now_s is None else now_s)
    with redis.pipeline(transaction=False) as pipe:
        for minute in range(last - minutes + 1, last + 1):
            pipe.hgetall(keys.stats_key(kind, minute))
        return _tally(pipe.execute())


def read_runs_by_day(redis: Redis, now_s: float | None = None) -> dict[str, Counter[str]]:
    """Each route's run outcomes over the last 24 h (by whole hours: the current one and the 23 before)."""
    last = hour_of(time.time() if now_s is None else now_s)
    with redis.pipeline(transaction=False) as pipe:
        for hour in range(last - 23 * 60, last + 1, 60):
            pipe.hgetall(keys.stats_key(RUNS_HOURLY, hour))
        return _tally(pipe.execute()).by_name


def read_last_errors(redis: Redis) -> dict[str, tuple[float, str]]:
    """Each route's last run error: (when, epoch s; the error)."""
    errors = {}
    fields: dict[bytes, bytes] = redis.hgetall(keys.last_error_key())  # type: ignore[assignment]
    for route, raw in fields.items():
        entry = json.loads(raw)
        errors[route.decode()] = (float(entry["at"]), str(entry["error"]))
    return errors
