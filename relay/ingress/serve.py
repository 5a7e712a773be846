"""``relay serve``: the ingress on its port, drained on SIGTERM so that a load balancer loses no request.

On SIGTERM the ingress turns not-ready (``/readyz`` answers 503 and every answer closes its connection) but
keeps serving ``RELAY_DRAIN_DELAY_S``, long enough for the load balancer's health checks to take it out.
Then it closes its port, finishes the requests in flight and exits, all within ``RELAY_SHUTDOWN_GRACE_S``.
A second signal exits at once. SIGHUP reloads the config (``relay.ingress.reload``). With ``--processes N``
every process binds the port with SO_REUSEPORT, so the kernel spreads connections across them;
``relay.infra.supervisor`` keeps them running.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal

from aiohttp import web

from relay.errors import ConfigError
from relay.infra.logs import AccessLogger
from relay.ingress.app import create_app
from relay.ingress.reload import reload_config
from relay.ingress.state import READINESS, Readiness
from relay.mapping.config import RelayConfig
from relay.settings import Settings

log = logging.getLogger(__name__)
MIN_SHUTDOWN_TIMEOUT_S = 1.0


async def serve_ingress(
    settings: Settings,
    config: RelayConfig,
    *,
    host: str,
    port: int,
    reuse_port: bool = False,
    stop_signals: tuple[signal.Signals, ...] = (signal.SIGTERM, signal.SIGINT),
) -> None:
    """Serve the ingress until one of ``stop_signals``, then drain and return."""
    app = create_app(settings, config)
    # Requests in flight when the port closes get what is left of the grace period.
    shutdown_timeout_s = max(settings.shutdown_grace_s - settings.drain_delay_s, MIN_SHUTDOWN_TIMEOUT_S)
    runner = web.AppRunner(
        app, shutdown_timeout=shutdown_timeout_s, handle_signals=False, access_log_class=AccessLogger
    )
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port, reuse_port=reuse_port or None).start()
    except BaseException:
        await runner.cleanup()
        raise
    log.info("ingress serving on http://%s:%s", host, runner.addresses[0][1])
    # A queue, not an event: two signals that come before the loop wakes must still count as two.
    signals: asyncio.Queue[int] = asyncio.Queue()
    loop = asyncio.get_running_loop()
    for signum in stop_signals:
        loop.add_signal_handler(signum, signals.put_nowait, signum)
    reloads: set[asyncio.Task[None]] = set()  # held until done: the loop keeps only weak references

    def on_sighup() -> None:
        task = asyncio.ensure_future(_reload(app))
        reloads.add(task)
        task.add_done_callback(reloads.discard)

    loop.add_signal_handler(signal.SIGHUP, on_sighup)
    await signals.get()
    app[READINESS].draining = True
    log.info(
        "draining: /readyz answers 503; serving %.1f s more, then finishing the requests in flight",
        settings.drain_delay_s,
    )
    second = asyncio.ensure_future(signals.get())
    done, _ = await asyncio.wait([second], timeout=settings.drain_delay_s)
    if not done:
        log.info("closing the port; waiting up to %.1f s for the requests in flight", shutdown_timeout_s)
        for site in list(runner.sites):
            await site.stop()
        # aiohttp's cleanup drops the data of a request whose body is still arriving, so it waits for the
        # requests in flight first.
        closing = asyncio.ensure_future(_close(runner, app[READINESS], shutdown_timeout_s))
        await asyncio.wait([closing, second], return_when=asyncio.FIRST_COMPLETED)
        if closing.done():
            second.cancel()
            closing.result()
            log.info("ingress stopped")
            return
    # The process is about to exit: what is still in flight is cut off.
    log.warning("second signal: stopping without waiting for the requests in flight")


async def _reload(app: web.Application) -> None:
    with contextlib.suppress(ConfigError):  # logged by reload_config; the old config stays in force
        await reload_config(app, "SIGHUP")


async def _close(runner: web.AppRunner, readiness: Readiness, timeout_s: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(readiness.until_idle(), timeout_s)
    await runner.cleanup()
