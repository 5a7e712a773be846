"""Shared by the browser tests: Debian's Chromium as Playwright drives it, the child processes of a test
(``relay serve``, ``relay worker``, dashboards), and where screenshots go.

Screenshots go to the test's tmp dir, and also to ``RELAY_SCREENSHOT_DIR`` when it is set
(``python docs/screenshots.py`` refreshes docs/img/ that way).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

from relay.dev.redis_server import free_port
from relay.settings import Settings
from tests.conftest import answers, clean_environment, missing, poll

CHROMIUM_ARGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def chromium_path() -> str:
    """Debian's Chromium; skipped without it, unless RELAY_REQUIRE_BROWSER=1 (CI) makes that a failure."""
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        missing("no chromium on PATH (apt-get install chromium)", switch="RELAY_REQUIRE_BROWSER")
    return path


class Processes:
    """The test's child processes, stopped at its end however it ends, the last started first."""

    def __init__(self) -> None:
        self.started: list[tuple[subprocess.Popen[bytes], bool]] = []

    def start(self, args: list[str], env: dict[str, str], *, kill: bool = False) -> None:
        # A session of its own: a killed worker's RQ scheduler (its fork) is killed with it, instead of
        # living on and writing its lock into the next tests' Redis.
        popen = subprocess.Popen(
            args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
        )
        self.started.append((popen, kill))

    def stop(self) -> None:
        for popen, kill in reversed(self.started):
            if kill:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(popen.pid, signal.SIGKILL)
            else:
                popen.terminate()
            popen.wait(timeout=30)


def screenshot_dirs(tmp_path: Path) -> list[Path]:
    """The test's tmp dir, and RELAY_SCREENSHOT_DIR when set."""
    directories = [tmp_path]
    if os.environ.get("RELAY_SCREENSHOT_DIR"):
        directories.append(Path(os.environ["RELAY_SCREENSHOT_DIR"]))
    for directory in directories:
        directory.mkdir(parents=True, exist_ok=True)
    return directories


def start_relay(processes: Processes, settings: Settings, *, worker: bool = True) -> str:
    """A real ``relay serve`` (and, unless told not to, a ``relay worker``) on ``settings``; its URL once it
    answers. Both are killed at the end: SIGTERM would wait for runs and drain requests, at no use here."""
    env = clean_environment(**settings.as_environment())
    port = free_port()
    processes.start([sys.executable, "-m", "relay", "serve", "--port", str(port)], env, kill=True)
    if worker:
        processes.start([sys.executable, "-m", "relay", "worker"], env, kill=True)
    url = f"http://127.0.0.1:{port}"
    poll(lambda: answers(f"{url}/healthz"))
    return url
