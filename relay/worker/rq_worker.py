"""The relay's RQ worker, queue and job: RQ's ``SimpleWorker``, ``Queue`` and ``Job``, the relay's way.

The worker owns the process's ``WorkerContext`` and its jobs hand it to their function and failure callback
as the first argument. A worker that dies mid-job is found by any other worker within
``RELAY_JOB_TIMEOUT_S`` + 5 s + ``RELAY_MAINTENANCE_INTERVAL_S`` and its run retried (RQ alone takes over a
minute, or 15 once a worker died holding its maintenance lock), and each line a job logs carries the job's
id, event, source and route.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from functools import partial
from types import FrameType
from typing import Any, ClassVar, cast

from redis.client import Pipeline
from rq import Queue, SimpleWorker
from rq.executions import Execution
from rq.job import Job
from rq.types import FailureCallbackType

from relay.infra.logs import bind
from relay.queue.jobs import failure_reason_of
from relay.settings import load_settings
from relay.worker.context import WorkerContext
from relay.worker.stranded import requeue_stranded

log = logging.getLogger(__name__)
# A run whose worker dies is found once its RQ execution entry expires: the job timeout plus this.
ABANDONED_GRACE_S = 5


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


class RelayJob(Job):
    """A relay job as RQ runs it: its function and failure callback get the worker's context first (``ctx``).

    A worker's jobs are of a subclass bound to its context (``bound_to``). RQ fetches the jobs of the
    registries it cleans through the queue's job class too, so the callback of a run whose worker died
    gets the context of the worker that found it. Unbound (``rq worker --job-class`` naming this class), a
    job builds a context from the settings for its call and closes it after.
    """

    worker_context: ClassVar[WorkerContext | None] = None

    @classmethod
    def bound_to(cls, context: WorkerContext) -> type[RelayJob]:
        """The job class of a worker whose jobs share ``context``."""
        return cast("type[RelayJob]", type(cls.__name__, (cls,), {"worker_context": context}))

    def _execute(self) -> Any:
        return self._with_context(self.func, *self.args, **self.kwargs)

    @property
    def failure_callback(self) -> FailureCallbackType | None:
        callback = super().failure_callback
        return None if callback is None else partial(self._with_context, callback)

    def _with_context(self, func: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        if self.worker_context is not None:
            return func(self.worker_context, *args, **kwargs)
        context = WorkerContext.build(load_settings())
        try:
            return func(context, *args, **kwargs)
        finally:
            context.close()


class RelayQueue(Queue):
    """The relay's queue as its workers use it: RQ's maintenance lock lasts a job timeout, not 15 minutes.

    Only the worker holding that lock looks for crashed runs. One killed (or cut off from Redis) while
    holding it stopped every worker from finding crashed runs for the 15 minutes of RQ's lock.
    """

    maintenance_lock_s: int | None = (
        None  # set by the worker: its job timeout (a cleaning pass takes far less)
    )

    def acquire_maintenance_lock(self) -> bool:
        if self.maintenance_lock_s is None:
            return super().acquire_maintenance_lock()
        lock_s = self.maintenance_lock_s
        return bool(self.connection.eval(_MAINTENANCE_LOCK, 1, self.registry_cleaning_key, lock_s))


class RelayWorker(SimpleWorker):
    """A SimpleWorker whose runs, when it dies, are found within ``job timeout + 5 s`` (RQ adds 60 s).

    It owns ``context``, which its jobs get as their first argument. Built by RQ's own ``rq worker -w``
    (no context given), it builds one from the settings.
    """

    queue_class = RelayQueue
    # An idle worker that lost Redis retries with a doubling wait; RQ's cap of 60 s would leave it idle
    # for up to a minute after Redis is back.
    max_connection_wait_time = 5.0

    def __init__(self, *args: Any, context: WorkerContext | None = None, **kwargs: Any) -> None:
        self.context = context if context is not None else WorkerContext.build(load_settings())
        settings = self.context.settings
        kwargs.setdefault("maintenance_interval", settings.maintenance_interval_s)
        kwargs["job_class"] = RelayJob.bound_to(self.context)
        super().__init__(*args, **kwargs)
        for queue in self.queues:
            # RQ fetches a crashed run's job through its queue's job class: its callback gets the context.
            queue.job_class = self.job_class
            if isinstance(queue, RelayQueue):
                queue.maintenance_lock_s = settings.job_timeout_s
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
        after_s = self.context.settings.job_timeout_s + ABANDONED_GRACE_S
        for queue in self.queues:
            for job_id in requeue_stranded(self.connection, queue, after_s):
                log.warning("job %s was taken by a worker that never started it; queued again", job_id)
