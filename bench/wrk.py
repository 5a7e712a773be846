"""Driving wrk (Debian's ``wrk`` package) with bench/signed.lua, and reading back what it counted."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import threading
from dataclasses import dataclass
from pathlib import Path

from bench.harness import BenchError

SCRIPT = Path(__file__).with_name("signed.lua")
RESULT_PREFIX = "BENCH-RESULT "
THREAD_DONE = "BENCH-THREAD-DONE"


def wrk_binary() -> str:
    found = shutil.which("wrk")
    if found is None:
        raise BenchError("wrk is not installed: apt-get install wrk")
    return found


def wrk_version() -> str:
    """wrk's own version line, e.g. ``wrk debian/4.1.0-3+b2 [epoll]``."""
    if shutil.which("wrk") is None:
        return "wrk (not installed)"
    completed = subprocess.run([wrk_binary(), "--version"], capture_output=True, text=True, check=False)
    first = (completed.stdout or completed.stderr).splitlines()[:1]
    return first[0].split(" Copyright")[0].strip() if first else "wrk (version unknown)"


@dataclass(frozen=True)
class WrkResult:
    """What one wrk run counted: answers by status, socket errors, and latency in milliseconds."""

    duration_s: float
    loaded: int
    answered: int
    duplicates: int
    fillers_sent: int
    statuses: dict[int, int]
    errors: dict[str, int]
    latency_ms: dict[str, float]

    @property
    def accepted(self) -> int:
        return self.statuses.get(202, 0)

    @property
    def accepted_per_s(self) -> float:
        return self.accepted / self.duration_s

    @property
    def non_2xx(self) -> int:
        """Webhooks answered with anything but 2xx (the 404s of the filler excluded)."""
        return sum(n for status, n in self.statuses.items() if not 200 <= status < 300 and status != 404)

    @property
    def server_errors(self) -> int:
        return sum(n for status, n in self.statuses.items() if status >= 500)

    @property
    def socket_errors(self) -> int:
        return sum(self.errors.values())

    def describe(self) -> str:
        statuses = ", ".join(f"{status}: {n}" for status, n in sorted(self.statuses.items()))
        return (
            f"{self.answered} of {self.loaded} webhooks answered in {self.duration_s:.1f} s ({statuses}); "
            f"{self.duplicates} duplicates, {self.fillers_sent} sent past the data, "
            f"socket errors {self.errors}"
        )


def parse_result(output: str) -> WrkResult:
    """The BENCH-RESULT line signed.lua's done() prints."""
    lines = [line for line in output.splitlines() if line.startswith(RESULT_PREFIX)]
    if not lines:
        raise BenchError(f"wrk printed no result:\n{output[-2000:]}")
    raw = json.loads(lines[-1][len(RESULT_PREFIX) :])
    return WrkResult(
        duration_s=raw["duration_us"] / 1e6,
        loaded=raw["loaded"],
        answered=raw["answered"],
        duplicates=raw["duplicates"],
        fillers_sent=raw["fillers_sent"],
        statuses={int(status): count for status, count in raw["statuses"].items()},
        errors=raw["errors"],
        latency_ms={name: value / 1000 for name, value in raw["latency_us"].items()},
    )


def _command(
    url: str, data: Path, *, threads: int, connections: int, duration_s: float, timeout_s: float, mode: str
) -> list[str]:
    return [
        wrk_binary(),
        f"-t{threads}",
        f"-c{connections}",
        f"-d{max(round(duration_s), 1)}s",
        f"--timeout={max(round(timeout_s), 1)}s",
        "-s",
        str(SCRIPT),
        url,
        "--",
        str(data),
        str(threads),
        mode,
    ]


def run_for(
    url: str, data: Path, *, duration_s: float, threads: int = 2, connections: int = 32, timeout_s: float = 5
) -> WrkResult:
    """Send for ``duration_s``, each line of ``data`` at most once; BenchError if the data ran out."""
    command = _command(
        url,
        data,
        threads=threads,
        connections=connections,
        duration_s=duration_s,
        timeout_s=timeout_s,
        mode="duration",
    )
    completed = subprocess.run(command, capture_output=True, text=True, timeout=duration_s + 120, check=False)
    if completed.returncode != 0:
        raise BenchError(f"wrk failed ({completed.returncode}): {completed.stderr[-2000:]}")
    result = parse_result(completed.stdout)
    if result.fillers_sent:
        raise BenchError(
            f"the run used up its {result.loaded} pre-signed webhooks: generate more ({result.describe()})"
        )
    return result


def run_each_once(
    url: str, data: Path, *, deadline_s: float, threads: int = 2, connections: int = 32, timeout_s: float = 10
) -> WrkResult:
    """Send every line of ``data`` once, as fast as wrk can; return once all are answered (or some were
    lost with their connection, or ``deadline_s`` passed: ``answered`` then falls short of ``loaded``)."""
    command = _command(
        url,
        data,
        threads=threads,
        connections=connections,
        duration_s=deadline_s,
        timeout_s=timeout_s,
        mode="count",
    )
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    # wrk always runs its whole -d; an interrupt ends it early and it still prints its results.
    deadline = threading.Timer(deadline_s, process.send_signal, [signal.SIGINT])
    deadline.start()
    output, done = [], 0
    try:
        assert process.stdout is not None
        for line in process.stdout:
            output.append(line)
            if line.strip() == THREAD_DONE:
                done += 1
                if done == threads:
                    process.send_signal(signal.SIGINT)
        process.wait(timeout=60)
    finally:
        deadline.cancel()
        if process.poll() is None:
            process.kill()
            process.wait()
    if process.returncode not in (0, -signal.SIGINT):
        stderr = process.stderr.read() if process.stderr else ""
        raise BenchError(f"wrk failed ({process.returncode}): {stderr[-2000:]}")
    return parse_result("".join(output))
