"""Several processes for one command (``relay serve --processes N``, ``relay worker --processes N``).

The supervisor forks its children after the relay's modules are imported, so they share those pages; it
restarts a child that dies, and on SIGTERM or SIGINT passes SIGTERM to each child and waits for them (each
drains or finishes its runs in flight first; a second signal stops them at once), killing what is left after
``stop_timeout_s``. SIGHUP is passed to every child: each reloads its config. Children run in a
process group of their own, so a terminal's Ctrl-C reaches only the supervisor, which stops them in order;
on Linux a child is sent SIGTERM if the supervisor itself dies. RQ's WorkerPool does the like for workers
only, and rebuilds each worker's Redis client from pool arguments, which loses Sentinel and TLS options.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import logging
import multiprocessing
import os
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import wait
from multiprocessing.process import BaseProcess
from types import FrameType
from typing import Any

from relay.infra import metrics

log = logging.getLogger(__name__)
RESTART_DELAY_S = 1.0
MAX_RESTART_DELAY_S = 30.0
STABLE_AFTER_S = 10.0  # a child that lived this long is healthy: its next restart waits the least
CRASH_LOOP_RESTARTS = 5  # children that die this many times in a row, each young, stop the supervisor
_PR_SET_PDEATHSIG = 1
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
RELOAD_SIGNAL = signal.SIGHUP
_FORK_BLOCKED = (*STOP_SIGNALS, RELOAD_SIGNAL)
_supervisor_pid: int | None = None  # in a child: the supervisor that passes SIGHUP to all its children


@dataclass
class Child:
    """One supervised process: what it runs, and its state."""

    name: str
    target: Callable[[], None]
    process: BaseProcess | None = None
    started_at: float = 0.0
    restart_at: float = 0.0
    failures: int = 0


def reload_siblings() -> None:
    """In a supervised child: have the supervisor pass SIGHUP to every child (this one included)."""
    if _supervisor_pid is not None and _supervisor_pid == os.getppid():
        os.kill(_supervisor_pid, RELOAD_SIGNAL)


def _child_main(target: Callable[[], None]) -> None:
    global _supervisor_pid
    _supervisor_pid = os.getppid()
    os.setpgid(0, 0)
    if sys.platform == "linux":  # die with the supervisor rather than run on unsupervised
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    for signum in STOP_SIGNALS:
        signal.signal(signum, signal.SIG_DFL)
    # Ignored until the child's own reload handler is installed: SIGHUP's default would end the process.
    signal.signal(RELOAD_SIGNAL, signal.SIG_IGN)
    # Blocked by the supervisor around the fork, so that none reached this process's copy of its handler.
    signal.pthread_sigmask(signal.SIG_UNBLOCK, _FORK_BLOCKED)
    target()


def _start(context: Any, child: Child) -> None:
    child.process = context.Process(target=_child_main, args=(child.target,), name=child.name)
    signal.pthread_sigmask(signal.SIG_BLOCK, _FORK_BLOCKED)
    try:
        child.process.start()
    finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, _FORK_BLOCKED)
    child.started_at = time.monotonic()
    log.info("started %s (pid %s)", child.name, child.process.pid)


def supervise(children: list[Child], *, stop_timeout_s: float, restart_clean_exits: bool = True) -> int:
    """Run every child until a stop signal; 0 once all stopped, 1 when a child keeps dying young.

    A child that exits with code 0 is started again only with ``restart_clean_exits`` (a burst worker
    ends when the queue is empty: it is done).
    """
    context = multiprocessing.get_context("fork")
    gc.freeze()  # objects made so far are never scanned again: the GC would copy their shared pages
    stopping: list[float] = []  # when the stop began

    def on_signal(signum: int, frame: FrameType | None) -> None:
        # Each signal is passed on: a second one stops the children at once, as it would stop one process.
        # The second goes as SIGINT: two SIGTERMs sent before a child runs may reach it as one.
        passed_on = signal.SIGINT if stopping else signal.SIGTERM
        if not stopping:
            stopping.append(time.monotonic())
            log.info("stopping %d process(es) (signal %d)", len(children), signum)
        for child in children:
            if child.process is not None and child.process.pid is not None:
                os.kill(child.process.pid, passed_on)

    def on_reload(signum: int, frame: FrameType | None) -> None:
        if stopping:
            return
        running = [child for child in children if child.process is not None and child.process.pid]
        log.info("reloading the config: SIGHUP passed to %d process(es)", len(running))
        for child in running:
            assert child.process is not None and child.process.pid is not None
            with contextlib.suppress(ProcessLookupError):  # it died just now: its restart loads the file
                os.kill(child.process.pid, RELOAD_SIGNAL)

    previous = {signum: signal.signal(signum, on_signal) for signum in STOP_SIGNALS}
    previous[RELOAD_SIGNAL] = signal.signal(RELOAD_SIGNAL, on_reload)
    code = 0
    try:
        while True:
            now = time.monotonic()
            if not stopping:
                for child in children:
                    if child.process is None and now >= child.restart_at:
                        _start(context, child)
            running = [child for child in children if child.process is not None]
            if not running and (stopping or not restart_clean_exits):
                return code
            if stopping and now - stopping[0] > stop_timeout_s:
                for child in running:
                    log.warning("killing %s: still running %.0f s after the stop", child.name, stop_timeout_s)
                    assert child.process is not None
                    child.process.kill()
            sentinels = [child.process.sentinel for child in running if child.process is not None]
            wait(sentinels, timeout=0.5)
            for child in running:
                if _reap(child, restart_clean_exits, stopping=bool(stopping)):
                    code = 1
                    on_signal(signal.SIGTERM, None)
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _reap(child: Child, restart_clean_exits: bool, *, stopping: bool) -> bool:
    """Collect a child that ended; True when children keep dying young and the supervisor must stop."""
    process = child.process
    if process is None or process.is_alive():
        return False
    process.join()
    child.process = None
    if process.pid is not None:
        metrics.mark_process_dead(process.pid)
    exit_code = process.exitcode
    if stopping:
        log.info("%s stopped (exit code %s)", child.name, exit_code)
        return False
    if exit_code == 0 and not restart_clean_exits:
        log.info("%s finished", child.name)
        child.restart_at = float("inf")
        return False
    lived_s = time.monotonic() - child.started_at
    child.failures = 0 if lived_s >= STABLE_AFTER_S else child.failures + 1
    delay_s = min(RESTART_DELAY_S * 2 ** max(child.failures - 1, 0), MAX_RESTART_DELAY_S)
    child.restart_at = time.monotonic() + delay_s
    log.error("%s exited with code %s after %.1f s; restarting in %.0f s", child.name, exit_code,
              lived_s, delay_s)  # fmt: skip
    return child.failures >= CRASH_LOOP_RESTARTS
