"""The worker processes that run the relay's jobs (``relay.worker.job``), and what each process shares.

Workers are RQ ``SimpleWorker``s (no fork per job), so each process keeps one runner client and its
connection pool, its breakers and rate limits from job to job. A worker that dies mid-job is found by any
other worker within ``RELAY_JOB_TIMEOUT_S`` + 5 s + ``RELAY_MAINTENANCE_INTERVAL_S`` and its run retried.
A Redis restart does not end ``relay worker``: once Redis answers again it starts a fresh RQ worker.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
from dataclasses import dataclass, field
from functools import partial
from types import FrameType
from typing import Any

from prometheus_client import start_http_server
from redis import Redis
from redis.client import Pipeline
from redis.exceptions import RedisError
from rq import Queue, SimpleWorker
from rq.executions import Execution
from rq.job import Job
from rq.serializers import JSONSerializer

from relay import keys
from relay.infra.logs import bind
from relay.infra.metrics import RelayMetrics
from relay.infra.redis_client import connect
from relay.infra.supervisor import Child, supervise
from relay.queue.gauges import scrape_registry
from relay.queue.jobs import failure_reason_of
from relay.runner.breaker import CircuitBreaker
from relay.runner.client import RunnerClient
from relay.runner.ratelimit import AccountRateLimit
from relay.settings import PlivoAccount, Settings, load_settings

log = logging.getLogger(__name__)
# KEYS: RQ's intermediate list, the queue, the relay's marks (job id: when first seen there). ARGV: seconds.
# One script, so that workers sweeping at once agree: a job goes back only once it has stayed in the list
# through every sweep for ARGV[1] seconds, and a sweep that finds it gone forgets it. (The relay's workers
# take from one queue, so RQ drops a job from the list in the step that starts it.)
_REQUEUE_STRANDED = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local here, requeued = {}, {}
for _, id in ipairs(redis.call('LRANGE', KEYS[1], 0, -1)) do here[id] = true end
local marks = redis.call('HGETALL', KEYS[3])
for i = 1, #marks, 2 do
    local id = marks[i]
    if not here[id] then
        redis.call('HDEL', KEYS[3], id)
    elseif now - tonumber(marks[i + 1]) > tonumber(ARGV[1]) then
        redis.call('LREM', KEYS[1], 1, id)
        redis.call('LPUSH', KEYS[2], id)
        redis.call('HDEL', KEYS[3], id)
        table.insert(requeued, id)
    end
    here[id] = nil
end
for id in pairs(here) do
    redis.call('HSET', KEYS[3], id, tostring(now))
end
if redis.call('EXISTS', KEYS[3]) == 1 then
    redis.call('EXPIRE', KEYS[3], 86400)
end
return requeued
"""
# A run whose worker dies is found once its RQ execution entry expires: the job timeout plus this.
ABANDONED_GRACE_S = 5


@dataclass
class WorkerContext:
    """What every job of a worker process shares: built once per process."""

    settings: Settings
    redis: Redis
    runner: RunnerClient
    metrics: RelayMetrics = field(default_factory=RelayMetrics)
    breakers: dict[str, CircuitBreaker] = field(default_factory=dict)
    rate_limits: dict[str, AccountRateLimit] = field(default_factory=dict)

    @classmethod
    def build(cls, settings: Settings) -> WorkerContext:
        runner = RunnerClient(
            settings.runner_url,
            connect_timeout_s=settings.runner_connect_timeout_s,
            read_timeout_s=settings.runner_read_timeout_s,
        )
        return cls(settings=settings, redis=connect(settings), runner=runner)

    def breaker(self, account: str) -> CircuitBreaker:
        """The account's circuit breaker (its state lives in Redis)."""
        if account not in self.breakers:
            settings = self.settings
            self.breakers[account] = CircuitBreaker(
                self.redis,
                account,
                failure_threshold=settings.breaker_failures,
                window_s=settings.breaker_window_s,
                open_s=settings.breaker_open_s,
                max_open_s=settings.breaker_max_open_s,
            )
        return self.breakers[account]

    def rate_limit(self, account: str, credentials: PlivoAccount) -> AccountRateLimit:
        """The account's rate limit at the runner (its log lives in Redis)."""
        if account not in self.rate_limits:
            self.rate_limits[account] = AccountRateLimit(
                self.redis, account, credentials.rate_limit, credentials.rate_window_s
            )
        return self.rate_limits[account]

    def close(self) -> None:
        self.runner.close()
        self.redis.close()


_context: WorkerContext | None = None


def use_context(context: WorkerContext | None) -> None:
    """Set the context the jobs of this process use (None: build from the environment on first use)."""
    global _context
    _context = context


def current_context() -> WorkerContext:
    """This process's context; a worker started by other means (``rq worker``) builds it from settings."""
    global _context
    if _context is None:
        _context = WorkerContext.build(load_settings())
    return _context


# KEYS[1]: RQ's maintenance lock. ARGV[1]: seconds. Take it; or cut one held for longer down to ARGV[1].
_MAINTENANCE_LOCK = """
if redis.call('SET', KEYS[1], 1, 'NX', 'EX', ARGV[1]) then
    return 1
end
if redis.call('TTL', KEYS[1]) > tonumber(ARGV[1]) then
    redis.call('EXPIRE', KEYS[1], ARGV[1])
end
return 0
"""


class RelayQueue(Queue):
    """The relay's queue as its workers use it: RQ's maintenance lock lasts a job timeout, not 15 minutes.

    Only the worker holding that lock looks for crashed runs. One killed (or cut off from Redis) while
    holding it stopped every worker from finding crashed runs for the 15 minutes of RQ's lock.
    """

    def acquire_maintenance_lock(self) -> bool:
        lock_s = current_context().settings.job_timeout_s  # a cleaning pass takes far less
        return bool(self.connection.eval(_MAINTENANCE_LOCK, 1, self.registry_cleaning_key, lock_s))


class RelayWorker(SimpleWorker):
    """A SimpleWorker whose runs, when it dies, are found within ``job timeout + 5 s`` (RQ adds 60 s)."""

    queue_class = RelayQueue
    # An idle worker that lost Redis retries with a doubling wait; RQ's cap of 60 s would leave it idle
    # for up to a minute after Redis is back.
    max_connection_wait_time = 5.0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("maintenance_interval", current_context().settings.maintenance_interval_s)
        super().__init__(*args, **kwargs)
        self.stop_requested = False

    def request_stop(self, signum: int, frame: FrameType | None) -> None:
        self.stop_requested = True  # a warm shutdown: work() returns, and must not be started again
        super().request_stop(signum, frame)  # type: ignore[no-untyped-call]

    @property
    def dequeue_timeout(self) -> int:
        # An idle worker waits on BLPOP this long before it looks for dead workers' runs again; RQ's
        # default (worker TTL - 15 s, about 7 minutes) would leave a crashed run unnoticed that long.
        return max(1, min(self.worker_ttl - 15, int(self.maintenance_interval)))

    def perform_job(self, job: Job, queue: Queue, execution: Execution) -> bool:
        # Every line of the job, RQ's own included, carries the job's id and its event, source and route.
        meta = job.meta or {}
        fields = {key: str(meta[key]) for key in ("event_id", "source", "route") if meta.get(key)}
        with bind(job_id=job.id, **fields):
            return super().perform_job(job, queue, execution)

    def heartbeat(self, timeout: int | None = None, pipeline: Pipeline | None = None) -> None:
        # RQ sends a heartbeat's three commands one round trip each, three times a job: one round trip
        # each instead, the same commands. (RQ spends ~20 round trips on a job; this saves six.)
        if pipeline is not None:
            super().heartbeat(timeout, pipeline=pipeline)
            return
        with self.connection.pipeline(transaction=False) as own:
            super().heartbeat(timeout, pipeline=own)
            own.execute()

    def handle_job_failure(
        self,
        job: Job,
        queue: Queue,
        started_job_registry: Any = None,
        exc_string: str = "",
        execution: Execution | None = None,
    ) -> None:
        exc_string = failure_reason_of(exc_string)
        super().handle_job_failure(job, queue, started_job_registry, exc_string, execution)

    def get_heartbeat_ttl(self, job: Job, working_time: float = 0.0) -> int:
        if job.timeout is None or job.timeout < 0:
            return super().get_heartbeat_ttl(job, working_time)
        return int(job.timeout) + ABANDONED_GRACE_S

    def clean_registries(self) -> None:
        super().clean_registries()  # type: ignore[no-untyped-call]
        after_s = current_context().settings.job_timeout_s + ABANDONED_GRACE_S
        for queue in self.queues:
            for job_id in requeue_stranded(self.connection, queue, after_s):
                log.warning("job %s was taken by a worker that never started it; queued again", job_id)


def requeue_stranded(redis: Redis, queue: Queue, after_s: float) -> list[str]:
    """Put back at the queue's front the jobs that stayed ``after_s`` in RQ's intermediate list, unstarted.

    RQ moves a job to that list as a worker takes it, and out of it as the worker starts it. A worker that
    dies (or loses Redis) in between strands it there; RQ looks again only after a minute, and then fails
    a job without retries left while its run still reads queued. Every worker calls this as it cleans.
    """
    keys_ = [queue.intermediate_queue.key, queue.key, keys.stranded_key(queue.name)]
    return [job_id.decode() for job_id in redis.eval(_REQUEUE_STRANDED, 3, *keys_, after_s)]


def work(settings: Settings, *, burst: bool = False) -> None:
    """One worker process: a RelayWorker with RQ's scheduler on the relay's queue, until stopped."""
    context = WorkerContext.build(settings)
    use_context(context)
    try:
        while True:
            # By name: RQ then builds the queue as a RelayQueue (queue_class).
            worker = RelayWorker([settings.queue_name], connection=context.redis, serializer=JSONSerializer)
            try:
                worker.work(burst=burst, with_scheduler=True, logging_level=settings.log_level)
            except RedisError as exc:  # RQ's teardown writes the worker's death to Redis
                log.warning("worker %s ended without Redis: %s", worker.name, exc)
            if burst or worker.stop_requested:
                return
            # RQ quits its work loop on any Redis error while a job is out (a Redis restart): start a
            # fresh worker once Redis answers. The job is found as abandoned and retried.
            log.error("worker %s stopped on an error; starting a new one once Redis answers", worker.name)
            if not _wait_for_redis(context.redis):
                return
            if worker.scheduler is not None:
                # Its scheduler died with it; its lock would keep every other scheduler away for a minute
                # (if Redis is gone again, it expires on its own).
                with contextlib.suppress(RedisError):
                    worker.scheduler.release_locks()  # type: ignore[no-untyped-call]
    finally:
        use_context(None)
        context.close()


def serve_metrics(settings: Settings, metrics: RelayMetrics | None = None) -> None:
    """Serve ``/metrics`` on ``RELAY_WORKER_METRICS_PORT`` from a thread of this process."""
    assert settings.worker_metrics_port is not None
    redis = connect(settings, socket_connect_timeout=2, socket_timeout=5)
    registry = scrape_registry(metrics, lambda: redis, settings)
    start_http_server(settings.worker_metrics_port, addr=settings.host, registry=registry)
    log.info("worker metrics on http://%s:%d/metrics", settings.host, settings.worker_metrics_port)


def _metrics_only(settings: Settings) -> None:
    serve_metrics(settings)
    threading.Event().wait()  # until SIGTERM ends the process


def run_workers(settings: Settings, *, processes: int = 1, burst: bool = False) -> int:
    """Run worker processes until stopped (with ``burst``: until the queue is empty); the exit code.

    With ``RELAY_WORKER_METRICS_PORT`` one more process serves their metrics (not in burst mode).
    """
    with_metrics = settings.worker_metrics_port is not None and not burst
    if processes == 1:
        if with_metrics:
            serve_metrics(settings, current_context().metrics)
        work(settings, burst=burst)
        return 0
    children = [Child(f"worker-{number}", partial(work, settings, burst=burst)) for number in
                range(1, processes + 1)]  # fmt: skip
    if with_metrics:
        children.append(Child("worker-metrics", partial(_metrics_only, settings)))
    # A worker finishes its run before it stops: give it the job timeout, then some.
    return supervise(
        children, stop_timeout_s=settings.job_timeout_s + ABANDONED_GRACE_S, restart_clean_exits=not burst
    )


def _wait_for_redis(redis: Redis) -> bool:
    """Sleep until Redis answers PING; False when SIGTERM or SIGINT comes first (nothing is in flight)."""
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    delay_s = 0.5
    while not stop.wait(delay_s):
        try:
            redis.ping()
            return True
        except RedisError:
            delay_s = min(delay_s * 2, RelayWorker.max_connection_wait_time)
    return False
