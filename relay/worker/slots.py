"""The runs one worker process has in flight: a thread and a deadline each, and a slot freed exactly once.

A run ends in one of two ways, and only one of them happens: its thread finishes it (``claim_finish``, then
RQ's bookkeeping), or the worker abandons it (``claim_abandon``: past its deadline, or cut short by a
shutdown), records it interrupted and requeues it. A thread whose run was abandoned does nothing more with
RQ when it finally returns; its slot was freed when the run was abandoned. Python cannot stop a thread,
so a thread stuck in a system call stays behind (daemon, it does not hold the process up), but its run
does not: it is retried.
"""

from __future__ import annotations

import contextvars
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from rq import Queue
from rq.executions import Execution
from rq.job import Job

# Set in a run's thread: the event that says the run was abandoned (relay.worker.job reads it).
abandoned_flag: contextvars.ContextVar[threading.Event | None] = contextvars.ContextVar(
    "abandoned_flag", default=None
)


@dataclass(eq=False)
class InFlight:
    """One run a worker has started: its RQ job and execution, and how long it may take."""

    job: Job
    queue: Queue
    execution: Execution
    timeout_s: float
    started: float = field(default_factory=time.monotonic)
    abandoned: threading.Event = field(default_factory=threading.Event)
    finishing: bool = False

    @property
    def deadline(self) -> float:
        """When it is abandoned, on the ``time.monotonic()`` clock."""
        return self.started + self.timeout_s


class Slots:
    """Up to ``limit`` runs in flight, each on a thread of its own."""

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError("limit must be at least 1")
        self.limit = limit
        self._runs: dict[str, InFlight] = {}  # by execution id
        self._changed = threading.Condition()

    def __len__(self) -> int:
        return len(self._runs)

    def snapshot(self) -> list[InFlight]:
        """The runs in flight now."""
        with self._changed:
            return list(self._runs.values())

    def overdue(self, now: float) -> list[InFlight]:
        """The runs in flight past their deadline at ``now`` (``time.monotonic()``)."""
        return [run for run in self.snapshot() if now > run.deadline and not run.finishing]

    def wait_for_free(self, timeout_s: float) -> bool:
        """Wait up to ``timeout_s`` for a free slot; whether there is one."""
        with self._changed:
            return self._changed.wait_for(lambda: len(self._runs) < self.limit, timeout_s)

    def wait_until_empty(self, timeout_s: float) -> bool:
        """Wait up to ``timeout_s`` for every run to end or be abandoned; whether none is left."""
        with self._changed:
            return self._changed.wait_for(lambda: not self._runs, timeout_s)

    def start(self, run: InFlight, target: Callable[[InFlight], None]) -> None:
        """Take a slot for ``run``; call ``target(run)`` on a new thread, which frees the slot as it ends."""
        with self._changed:
            self._runs[run.execution.id] = run
        context = contextvars.Context()  # a fresh one: no log fields of the main thread leak into the run
        context.run(abandoned_flag.set, run.abandoned)
        thread = threading.Thread(
            target=context.run, args=(self._run, run, target), name=f"run-{run.job.id}", daemon=True
        )
        thread.start()

    def claim_finish(self, run: InFlight) -> bool:
        """The run's thread is done: True if it finishes the run with RQ, False if it was abandoned."""
        with self._changed:
            if run.abandoned.is_set():
                return False
            run.finishing = True
            return True

    def claim_abandon(self, run: InFlight) -> bool:
        """Abandon the run and free its slot now; False if its thread is finishing it (or it is gone)."""
        with self._changed:
            if run.finishing or run.abandoned.is_set() or run.execution.id not in self._runs:
                return False
            run.abandoned.set()
            del self._runs[run.execution.id]
            self._changed.notify_all()
            return True

    def _run(self, run: InFlight, target: Callable[[InFlight], None]) -> None:
        try:
            target(run)
        finally:
            with self._changed:
                if self._runs.get(run.execution.id) is run:
                    del self._runs[run.execution.id]
                self._changed.notify_all()
