"""The relay's RQ worker: one process, up to ``RELAY_WORKER_CONCURRENCY`` runs in flight, a thread each.

A run is an HTTP request that waits on Plivo for up to a second, so a worker that holds one run at a time
needs about 60 processes (~3.9 GB RSS here) to reach Plivo's ceiling of 60 runs/s. Why threads:
- the relay's steps (runner client, rate limit, breaker, records) and RQ's job bookkeeping are blocking
  code; each run keeps them on its own thread over one shared ``httpx.Client`` and one Redis pool, so every
  guarantee they keep for a process they keep for a run;
- RQ 3 workers already track several executions each (``Worker.executions``), so each run in flight is in
  RQ's StartedJobRegistry with its own heartbeat, and results and failures go through RQ's own code;
- a waiting run costs no CPU; the GIL is held only for the few ms of a run's own work. An asyncio worker
  would need every one of those steps rewritten, RQ's included, for no gain at Plivo's rate.
RQ's own thread-pool worker (rq/rq#1803, closed unmerged) listed what goes wrong: job timeouts (SIGALRM
reaches only the main thread) and registries (one heartbeat for many jobs) became unreliable. Here each
run has its own execution and heartbeat, and its deadline is kept by the main loop.
Measured on this project's 2-core machine (docs/performance.md, one run): at a 1 s runner latency one
process sustains 57-58 runs/s, the account rate limiter's ceiling, in 82 MiB RSS, where ``--processes 20
--concurrency 1`` (one run per process, as before) sustains 20 runs/s in 1,297 MiB.

The main thread dequeues while a slot is free and, every tick, beats every run's heartbeat (a crashed
process's runs are found within ``HEARTBEAT_TTL_S`` + ``RELAY_MAINTENANCE_INTERVAL_S``), moves due retries
into the queue (``relay.queue.due``: no scheduler lock that a dead worker holds), and abandons a run past
its deadline: no SIGALRM, which reaches only the main thread. SIGTERM stops dequeuing and lets the runs in
flight finish within ``RELAY_SHUTDOWN_GRACE_S``; a second signal cuts them short and requeues them at once.
"""

from __future__ import annotations

import logging
import signal
import sys
import time
from types import FrameType
from typing import Any

from redis.client import Pipeline
from rq.exceptions import DequeueTimeout, NoSuchJobError
from rq.job import Job
from rq.job_lifecycle import record_job_failure
from rq.queue import Queue
from rq.registry import clean_registries
from rq.utils import now
from rq.worker import BaseWorker, WorkerStatus
from rq.worker_registration import clean_worker_registry

from relay.infra.logs import bind
from relay.queue.due import PROMOTE_INTERVAL_S, DuePromoter
from relay.queue.jobs import failure_reason_of
from relay.queue.records import trim_index
from relay.settings import load_settings
from relay.worker.context import WorkerContext
from relay.worker.job import requeue_abandoned
from relay.worker.rq_worker import NoDeathPenalty, RelayJob, RelayQueue
from relay.worker.slots import InFlight, Slots
from relay.worker.stranded import requeue_stranded

log = logging.getLogger(__name__)
HEARTBEAT_TTL_S = 8  # a run whose process stops beating for this long is taken for dead
HEARTBEAT_INTERVAL_S = 2.0
TICK_S = 0.5  # the main loop's longest wait: dequeue, slot and shutdown waits alike
_REPEATED_SIGNAL_S = 1.0  # a supervisor's SIGTERM right after the terminal's SIGINT is one request


class RelayWorker(BaseWorker):
    """An RQ worker with up to ``concurrency`` runs in flight, each on a thread of its own.

    It owns ``context``, which its jobs get as their first argument. Built by RQ's own ``rq worker -w``
    (no context given), it builds one from the settings.
    """

    queue_class = RelayQueue
    death_penalty_class = NoDeathPenalty
    # An idle worker that lost Redis retries with a doubling wait; RQ's cap of 60 s would leave it idle
    # for up to a minute after Redis is back.
    max_connection_wait_time = 5.0

    def __init__(
        self, *args: Any, context: WorkerContext | None = None, concurrency: int | None = None, **kwargs: Any
    ) -> None:
        self.context = context if context is not None else WorkerContext.build(load_settings())
        settings = self.context.settings
        kwargs.setdefault("maintenance_interval", settings.maintenance_interval_s)
        kwargs["job_class"] = RelayJob.bound_to(self.context)
        super().__init__(*args, **kwargs)
        for queue in self.queues:
            # RQ fetches a crashed run's job through its queue's job class: its callback gets the context.
            queue.job_class = self.job_class
            if isinstance(queue, RelayQueue):
                queue.maintenance_lock_s = settings.maintenance_interval_s + 1
        self.slots = Slots(concurrency or settings.worker_concurrency)
        self.promoters = [DuePromoter(self.connection, queue, settings.now) for queue in self.queues]
        self.stop_requested = False  # a warm shutdown: work() returns, and must not be started again
        self.cold_stop = False
        self._stop_at = 0.0  # time.monotonic() by which a warm shutdown cuts the runs in flight short
        self._next_beat = self._next_promotion = 0.0
        self.context.metrics.worker_concurrency.set(self.slots.limit)

    def work(self, burst: bool = False, logging_level: str | None = None, **_: Any) -> bool:  # type: ignore[override]
        """Run jobs until stopped (with ``burst``: until the queue is empty and no run is in flight).

        RQ's own options (``with_scheduler``, ``max_jobs``, ...) are accepted and ignored: every relay worker
        moves due jobs itself.
        """
        self.bootstrap(logging_level or self.context.settings.log_level)
        self._install_signal_handlers()
        started = 0
        try:
            while not self.stop_requested:
                self._tick()
                if not self.slots.wait_for_free(TICK_S):
                    continue
                idle = not self.slots  # before dequeuing: a run ending meanwhile may queue its retry
                taken = self._dequeue(burst)
                if taken is None:
                    if burst and idle:
                        break
                    continue
                self._start(*taken)
                started += 1
            self._finish_in_flight()
        finally:
            self.teardown()  # type: ignore[no-untyped-call]
        return started > 0

    def _dequeue(self, burst: bool) -> tuple[Job, Queue] | None:
        try:
            return self.queue_class.dequeue_any(
                self._ordered_queues,
                None if burst else TICK_S,  # type: ignore[arg-type]  # BLMOVE takes fractions
                connection=self.connection,
                job_class=self.job_class,
                serializer=self.serializer,
                death_penalty_class=self.death_penalty_class,
            )
        except DequeueTimeout:
            return None

    def _start(self, job: Job, queue: Queue) -> None:
        execution = self.prepare_execution(job)
        timeout_s = job.timeout if job.timeout and job.timeout > 0 else self.context.settings.job_timeout_s
        self.slots.start(InFlight(job, queue, execution, timeout_s), self._perform)

    def _perform(self, run: InFlight) -> None:
        """A run's thread: RQ's ``perform_job`` without SIGALRM, and without RQ's bookkeeping if abandoned."""
        job, queue = run.job, run.queue
        meta = job.meta or {}
        fields = {key: str(meta[key]) for key in ("event_id", "source", "route") if meta.get(key)}
        with bind(job_id=job.id, **fields):
            try:
                self.prepare_job_execution(job, remove_from_intermediate_queue=len(self.queues) == 1)
                job.started_at = now()
                return_value = job.perform()
                exc_info = None
            except BaseException:
                exc_info = sys.exc_info()
            if not self.slots.claim_finish(run):
                log.warning("run %s ended after it was abandoned; its retry stands", job.id)
                return
            try:
                if exc_info is None:
                    self._finalize_success(job, queue, run.execution, return_value)
                else:
                    self._finalize_failure(job, queue, run.execution, exc_info)
            except Exception:
                # Not recorded with RQ: the run's heartbeat stops and it is found as abandoned, and retried.
                log.exception("run %s: its end was not recorded with RQ", job.id)

    def _tick(self) -> None:
        """Heartbeats, due jobs, deadlines, maintenance and a config reload, each when it is due."""
        if self.context.reload_requested:
            self.context.reload_config("SIGHUP")
        at = time.monotonic()
        if at >= self._next_promotion:
            self._next_promotion = at + PROMOTE_INTERVAL_S
            self._promote_due()
        if at >= self._next_beat:
            self._next_beat = at + HEARTBEAT_INTERVAL_S
            self._beat()
        for run in self.slots.overdue(at):
            self._abandon(run, f"outlived its job timeout ({run.timeout_s:g} s)", "deadline")
        if self.should_run_maintenance_tasks:
            self.run_maintenance_tasks()
        self.context.metrics.runs_in_flight.set(len(self.slots))

    def _promote_due(self) -> None:
        for promoter in self.promoters:
            promoter.promote()

    def _beat(self) -> None:
        """One round trip: the worker's heartbeat, and every run in flight's."""
        in_flight = self.slots.snapshot()
        with self.connection.pipeline(transaction=False) as pipe:
            self.heartbeat(pipeline=pipe)
            for run in in_flight:
                run.execution.heartbeat(run.queue.started_job_registry, HEARTBEAT_TTL_S, pipe)
            if not in_flight and self.get_state() == WorkerStatus.BUSY:
                self.set_state(WorkerStatus.IDLE, pipeline=pipe)
            pipe.execute()

    def _abandon(self, run: InFlight, reason: str, why: str) -> None:
        """Free the run's slot, record it interrupted and requeue it, as if its process had died."""
        if not self.slots.claim_abandon(run):
            return
        self.context.metrics.runs_abandoned.labels(why).inc()
        with bind(job_id=run.job.id):
            log.warning("run %s abandoned: %s", run.job.id, reason)
            try:
                job = self.job_class.fetch(run.job.id, connection=self.connection, serializer=self.serializer)
            except NoSuchJobError:
                job = None
            with self.connection.pipeline() as pipe:
                if job is not None:
                    requeue_abandoned(self.context, job, reason)
                    if job.retries_left:
                        job.retry(run.queue, pipe)
                    else:
                        record_job_failure(job, f"AbandonedJobError: {reason}", pipe)
                self.cleanup_execution(run.job, pipe, run.execution)
                pipe.execute()

    def _finish_in_flight(self) -> None:
        """After a stop: let the runs in flight finish until the grace ends, then requeue the rest."""
        while self.slots and not self.cold_stop and time.monotonic() < self._stop_at:
            self._tick()
            self.slots.wait_until_empty(TICK_S)
        why = "cold shutdown" if self.cold_stop else "grace ran out"
        for run in self.slots.snapshot():
            self._abandon(run, f"cut short by the worker's shutdown ({why})", "shutdown")
        self.slots.wait_until_empty(TICK_S * 4)  # runs whose thread was already recording their end

    def _install_signal_handlers(self) -> None:
        signal.signal(signal.SIGINT, self.request_stop)
        signal.signal(signal.SIGTERM, self.request_stop)

    def request_stop(self, signum: int, frame: FrameType | None) -> None:
        """First signal: stop dequeuing, finish what is in flight. Second: cut it short, requeue it."""
        if not self.stop_requested:
            self.stop_requested = True
            self._shutdown_requested_date = now()
            self._stop_at = time.monotonic() + self.context.settings.shutdown_grace_s
            log.info("worker %s stopping: %d runs in flight finish first", self.name, len(self.slots))
            return
        requested = self._shutdown_requested_date
        if requested is not None and (now() - requested).total_seconds() < _REPEATED_SIGNAL_S:
            return
        self.cold_stop = True
        log.warning("worker %s: cold shutdown, %d runs in flight requeued", self.name, len(self.slots))

    def run_maintenance_tasks(self) -> None:
        # RQ's cleaning, without its group registries (the relay has none) and its line every pass.
        for queue in self.queues:
            if queue.acquire_maintenance_lock():
                clean_registries(queue, self._exc_handlers)
                clean_worker_registry(queue)
                queue.intermediate_queue.cleanup(self, queue)
                for job_id in requeue_stranded(self.connection, queue, HEARTBEAT_TTL_S):
                    log.warning("job %s was taken by a worker that never started it; queued again", job_id)
                trim_index(
                    self.connection, self.context.settings.outcome_ttl_s
                )  # index entries past retention
                queue.release_maintenance_lock()  # type: ignore[no-untyped-call]
        self.last_cleaned_at = now()  # type: ignore[assignment]

    def heartbeat(self, timeout: int | None = None, pipeline: Pipeline | None = None) -> None:
        # RQ sends a heartbeat's commands one round trip each: one round trip instead, the same commands.
        if pipeline is not None:
            super().heartbeat(timeout, pipeline=pipeline)
            return
        with self.connection.pipeline(transaction=False) as own:
            super().heartbeat(timeout, pipeline=own)
            own.execute()

    @property
    def dequeue_timeout(self) -> int:
        # RQ raises the Redis client's socket timeout to this + 10 s; the run threads share that client.
        return 1

    def get_heartbeat_ttl(self, job: Job, working_time: float = 0.0) -> int:
        return HEARTBEAT_TTL_S

    def handle_job_failure(self, job: Job, queue: Queue, started_job_registry: Any = None,
                           exc_string: str = "", execution: Any = None) -> None:  # fmt: skip
        exc_string = failure_reason_of(exc_string)
        super().handle_job_failure(job, queue, started_job_registry, exc_string, execution)
