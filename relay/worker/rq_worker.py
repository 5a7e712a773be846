"""The relay's RQ job and queue: RQ's ``Job`` and ``Queue``, the relay's way (the worker: ``threaded``).

A job hands the worker's ``WorkerContext`` to its function and failure callback as the first argument, and
puts its retry in RQ's scheduled registry at the exact time its run asked for. The queue's maintenance lock
lasts a maintenance pass, not RQ's 15 minutes.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any, ClassVar, cast

from redis.client import Pipeline
from rq import Queue
from rq.job import Job, JobStatus
from rq.timeouts import BaseDeathPenalty
from rq.types import FailureCallbackType

from relay.queue import pause
from relay.settings import load_settings
from relay.worker.context import WorkerContext

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
    due_at: float | None = None  # set by the run's keeper: when its retry is due (epoch seconds)
    held_by: pause.Scope | None = None  # set by the run's keeper: the pause that parks it

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

    def retry(self, queue: Queue, pipeline: Pipeline) -> None:
        if self.held_by is not None:
            # Parked in the transaction that ends its execution with RQ: a worker dying before it leaves the
            # run in RQ's started registry, found and queued again like any run of a dead worker.
            pause.park(pipeline, queue, self, self.held_by)
            return
        # RQ scores a scheduled retry in whole seconds, rounded down: it could come up to a second early
        # (Retry-After is a floor). The relay's promoter reads exact scores, so the retry is due when asked.
        super().retry(queue, pipeline)
        if self.due_at is not None and self.get_status(refresh=False) == JobStatus.SCHEDULED:
            pipeline.zadd(queue.scheduled_job_registry.key, {self.id: self.due_at})

    def _with_context(self, func: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        if self.worker_context is not None:
            return func(self.worker_context, *args, **kwargs)
        context = WorkerContext.build(load_settings())
        try:
            return func(context, *args, **kwargs)
        finally:
            context.close()


class NoDeathPenalty(BaseDeathPenalty):
    """No SIGALRM: it only reaches the main thread. A run's deadline is kept by its worker's loop."""

    def setup_death_penalty(self) -> None:
        pass

    def cancel_death_penalty(self) -> None:
        pass


class RelayQueue(Queue):
    """The relay's queue as its workers use it: RQ's maintenance lock lasts a pass, not 15 minutes.

    Only the worker holding that lock looks for crashed runs. One killed (or cut off from Redis) while
    holding it stopped every worker from finding crashed runs for the 15 minutes of RQ's lock.
    """

    maintenance_lock_s: int | None = None  # set by the worker: a little over its maintenance interval

    def acquire_maintenance_lock(self) -> bool:
        if self.maintenance_lock_s is None:
            return super().acquire_maintenance_lock()
        lock_s = self.maintenance_lock_s
        return bool(self.connection.eval(_MAINTENANCE_LOCK, 1, self.registry_cleaning_key, lock_s))
