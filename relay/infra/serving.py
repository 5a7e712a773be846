"""Serving aiohttp apps in-process: in the running event loop, or on a thread of their own.

``relay dev`` serves the ingress and the sandbox side by side in one loop; tests and benchmarks run the
sandbox on a background thread so synchronous code (an RQ worker) can call it over real HTTP.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Callable
from typing import Self

from aiohttp import web

from relay.infra.logs import AccessLogger

log = logging.getLogger(__name__)


async def start_site(
    app: web.Application, host: str, port: int, *, access_log: bool = True, shutdown_timeout_s: float = 60.0
) -> tuple[web.AppRunner, int]:
    """Serve ``app`` on ``host:port``; returns the runner and the port bound (read back, for port 0).

    On cleanup, requests in flight get ``shutdown_timeout_s`` to finish.
    """
    options: dict[str, object] = {"access_log_class": AccessLogger} if access_log else {"access_log": None}
    runner = web.AppRunner(app, shutdown_timeout=shutdown_timeout_s, **options)  # type: ignore[arg-type]
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port).start()
    except BaseException:
        await runner.cleanup()
        raise
    return runner, int(runner.addresses[0][1])


class AppThread:
    """An app served on 127.0.0.1 and a free port, on a background thread with its own event loop."""

    host = "127.0.0.1"

    def __init__(
        self, app_factory: Callable[[], web.Application], *, startup_timeout_s: float = 10.0
    ) -> None:
        self._app_factory = app_factory
        self._startup_timeout_s = startup_timeout_s
        self._ready = threading.Event()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._port: int | None = None
        self._error: BaseException | None = None

    @property
    def port(self) -> int:
        """The port it serves on; RuntimeError when it is not running."""
        if self._port is None:
            raise RuntimeError("the app is not running")
        return self._port

    @property
    def url(self) -> str:
        """Its base URL, ``http://127.0.0.1:PORT``."""
        return f"http://{self.host}:{self.port}"

    def __enter__(self) -> Self:
        if self._thread is not None:
            raise RuntimeError("an AppThread runs once")
        self._thread = threading.Thread(target=self._run, name=type(self).__name__, daemon=True)
        self._thread.start()
        if not self._ready.wait(self._startup_timeout_s):
            raise RuntimeError(f"the app did not start within {self._startup_timeout_s} s")
        if self._error is not None:
            self._thread.join()
            raise RuntimeError("the app failed to start") from self._error
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._loop is not None and self._stop is not None:
            with contextlib.suppress(RuntimeError):  # the loop is already closed: the thread has ended
                self._loop.call_soon_threadsafe(self._stop.set)
        if self._thread is not None:
            self._thread.join()
        self._port = None

    def _run(self) -> None:
        try:
            asyncio.run(self._serve())
        except BaseException as exc:
            self._error = exc
            log.exception("the %s thread failed", type(self).__name__)
        finally:
            self._ready.set()

    async def _serve(self) -> None:
        self._loop, self._stop = asyncio.get_running_loop(), asyncio.Event()
        # A test's slow request (a sandbox fault's latency) must not hold up the thread's exit.
        runner, self._port = await start_site(
            self._app_factory(), self.host, 0, access_log=False, shutdown_timeout_s=1.0
        )
        try:
            self._ready.set()
            await self._stop.wait()
        finally:
            await runner.cleanup()
