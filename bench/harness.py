"""What every benchmark needs: child processes it owns, polling with deadlines, memory, and statistics.

Every process a benchmark measures is started here in a session of its own, with its output in a log file
of the run's work directory, and stopped by its own process group id: never by name.
"""

from __future__ import annotations

import contextlib
import math
import os
import signal
import statistics
import subprocess
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Self

import httpx

POLL_INTERVAL_S = 0.05
LOG_TAIL_CHARS = 2000


class BenchError(RuntimeError):
    """A benchmark could not measure what it claims to: it stops the run instead of printing a figure."""


class BenchTimeout(BenchError):
    """What was awaited did not happen in time (while every process it depends on still ran)."""


@dataclass
class Figures:
    """What one repetition of a benchmark measured: figures by key, and why a figure is missing."""

    values: dict[str, float] = field(default_factory=dict)
    notes: dict[str, str] = field(default_factory=dict)

    def merge(self, other: Figures) -> None:
        self.values.update(other.values)
        self.notes.update(other.notes)


@dataclass
class Service:
    """A child process in its own session (so its workers are stopped with it), logging to a file."""

    name: str
    process: subprocess.Popen[bytes]
    log_path: Path

    @classmethod
    def start(
        cls, name: str, command: Sequence[str], env: dict[str, str], log_dir: Path, cwd: Path
    ) -> Service:
        log_path = log_dir / f"{name}.log"
        with log_path.open("ab") as log:
            process = subprocess.Popen(
                list(command),
                env=env,
                cwd=cwd,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        return cls(name, process, log_path)

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        return self.process.poll() is None

    def log_tail(self) -> str:
        try:
            return self.log_path.read_text(encoding="utf-8", errors="replace")[-LOG_TAIL_CHARS:]
        except OSError:
            return "(no log)"

    def require_alive(self) -> None:
        if not self.alive():
            code = self.process.returncode
            how = f"was killed by signal {-code}" if code < 0 else f"exited with code {code}"
            raise BenchError(f"{self.name} {how} while being measured:\n{self.log_tail()}")

    def wait_exit(self, timeout_s: float) -> None:
        """Wait for a process that ends by itself (a burst worker); BenchError unless it exits with 0."""
        try:
            code = self.process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            raise BenchError(f"{self.name} did not finish within {timeout_s:.0f} s") from None
        if code != 0:
            raise BenchError(f"{self.name} exited with code {code}:\n{self.log_tail()}")

    def stop(self, timeout_s: float = 15.0) -> None:
        """SIGTERM to its process group (a warm shutdown for workers), SIGKILL after ``timeout_s``."""
        if self.process.poll() is not None:
            return
        self._signal_group(signal.SIGTERM)
        try:
            self.process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self._signal_group(signal.SIGKILL)
            self.process.wait()
        # Forked children (a worker pool's) may outlive a parent that was killed: end them too.
        self._signal_group(signal.SIGKILL)

    def kill(self) -> None:
        """SIGKILL to its process group (a crash: nothing of it runs on), and reap it."""
        self._signal_group(signal.SIGKILL)
        self.process.wait()

    def _signal_group(self, signum: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signum)  # the session we started it in: its pid is the group id


def poll_until(
    check: Callable[[], bool], timeout_s: float, what: str, interval_s: float = POLL_INTERVAL_S
) -> None:
    """Return once ``check()`` is true; BenchError naming ``what`` after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise BenchTimeout(f"timed out after {timeout_s:.0f} s waiting for {what}")
        time.sleep(interval_s)  # polling with the deadline above


def wait_http(url: str, service: Service, timeout_s: float = 30.0) -> None:
    """Return once ``url`` answers any HTTP status; BenchError if the service dies first."""

    def answers() -> bool:
        service.require_alive()
        try:
            httpx.get(url, timeout=1.0)
        except httpx.TransportError:
            return False
        return True

    poll_until(answers, timeout_s, f"{service.name} to answer at {url}")


# Memory ------------------------------------------------------------------------------------------------


def _proc_kib(path: str, field_name: str) -> int:
    """A ``Name:  123 kB`` field of a /proc file in KiB; 0 when the process has gone."""
    try:
        with open(path, encoding="ascii") as lines:
            for line in lines:
                if line.startswith(field_name + ":"):
                    return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return 0
    return 0


def rss_kib(pid: int) -> int:
    """Resident set size: every page the process maps that is in RAM, shared ones included."""
    return _proc_kib(f"/proc/{pid}/status", "VmRSS")


def pss_kib(pid: int) -> int:
    """Proportional set size: each shared page divided among the processes that share it."""
    return _proc_kib(f"/proc/{pid}/smaps_rollup", "Pss")


def descendants(pid: int) -> list[int]:
    """``pid`` and every process below it (a worker pool's forked children)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", encoding="ascii", errors="replace") as stat:
                # The command name may hold spaces and parentheses: the fields after the last ")" are fixed.
                parent = int(stat.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(parent, []).append(int(entry))
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        todo.extend(children.get(current, []))
    return found


@dataclass
class MemoryPeak:
    """The largest figures seen while sampling, in KiB."""

    rss_sum_kib: int = 0
    pss_sum_kib: int = 0
    rss_max_process_kib: int = 0
    processes: int = 0
    samples: int = 0


class MemorySampler:
    """Samples the RSS and PSS of a set of processes on a background thread, keeping the peaks.

    ``with MemorySampler(lambda: descendants(pool.pid)) as memory: ...; memory.peak.rss_sum_kib``
    """

    def __init__(self, pids: Callable[[], Iterable[int]], interval_s: float = 0.5) -> None:
        self._pids = pids
        self._interval_s = interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="memory-sampler", daemon=True)
        self.peak = MemoryPeak()

    def sample(self) -> None:
        rss = {pid: rss_kib(pid) for pid in self._pids()}
        live = [pid for pid, kib in rss.items() if kib > 0]
        if not live:
            return
        peak = self.peak
        peak.samples += 1
        peak.rss_sum_kib = max(peak.rss_sum_kib, sum(rss[pid] for pid in live))
        peak.pss_sum_kib = max(peak.pss_sum_kib, sum(pss_kib(pid) for pid in live))
        peak.rss_max_process_kib = max(peak.rss_max_process_kib, max(rss[pid] for pid in live))
        peak.processes = max(peak.processes, len(live))

    def _run(self) -> None:
        while not self._stop.wait(self._interval_s):
            self.sample()

    def __enter__(self) -> Self:
        self.sample()
        self._thread.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._stop.set()
        self._thread.join()
        self.sample()


# Statistics --------------------------------------------------------------------------------------------


def percentile(values: Sequence[float], pct: float) -> float:
    """The nearest-rank percentile: the smallest value with at least ``pct`` % of the values at or below."""
    if not values:
        raise ValueError("percentile of no values")
    if not 0 < pct <= 100:
        raise ValueError("pct must be in (0, 100]")
    ordered = sorted(values)
    return ordered[max(math.ceil(pct / 100 * len(ordered)), 1) - 1]


def max_in_window(times_s: Iterable[float], window_s: float) -> int:
    """The most timestamps that fall in any half-open window ``[t, t + window_s)``."""
    ordered = sorted(times_s)
    best, start = 0, 0
    for end, time_s in enumerate(ordered):
        while time_s - ordered[start] >= window_s:
            start += 1
        best = max(best, end - start + 1)
    return best


@dataclass(frozen=True)
class Summary:
    """The median of several repetitions, with their range."""

    median: float
    low: float
    high: float
    runs: int


def summarise(values: Sequence[float]) -> Summary:
    if not values:
        raise ValueError("no values to summarise")
    return Summary(statistics.median(values), min(values), max(values), len(values))
