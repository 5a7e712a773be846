"""The worker processes that run the relay's jobs (``relay.worker.job``): ``relay worker``.

Each process is one ``RelayWorker`` (``relay.worker.threaded``) with up to ``RELAY_WORKER_CONCURRENCY`` runs
in flight, all sharing one context (runner client and its connection pool, breakers, rate limits). A Redis
restart does not end ``relay worker``: once Redis answers again it starts a fresh RQ worker. Several
processes run under one supervisor, and the worker metrics are served from this process or one more.
SIGHUP reloads the config (``WorkerContext.reload_config``, run by the worker's main loop).
"""

from __future__ import annotations

import logging
import signal
import threading
from functools import partial
from wsgiref.simple_server import WSGIServer

from redis import Redis
from redis.exceptions import RedisError
from rq.serializers import JSONSerializer

from relay.infra.metrics import RelayMetrics
from relay.infra.metrics_http import start_metrics_server
from relay.infra.redis_client import connect
from relay.infra.supervisor import Child, supervise
from relay.queue.gauges import scrape_registry
from relay.settings import Settings
from relay.worker.context import WorkerContext
from relay.worker.threaded import RelayWorker

log = logging.getLogger(__name__)


def work(settings: Settings, *, burst: bool = False, context: WorkerContext | None = None) -> None:
    """One worker process: a RelayWorker on the relay's queue, until stopped.

    Its jobs share ``context`` (default: one built from ``settings``), which it closes when done.
    """
    context = context if context is not None else WorkerContext.build(settings)
    if threading.current_thread() is threading.main_thread():  # signal handlers live on the main thread
        signal.signal(signal.SIGHUP, context.request_reload)
    # Read again here: a worker restarted by its supervisor takes the file as it is now (one that became
    # invalid since the start is logged, and the worker runs on: its jobs carry their payloads).
    context.reload_config("start")
    try:
        while True:
            # By name: RQ then builds the queue as a RelayQueue (queue_class).
            worker = RelayWorker(
                [settings.queue_name], connection=context.redis, serializer=JSONSerializer, context=context
            )
            try:
                worker.work(burst=burst, logging_level=settings.log_level)
            except RedisError as exc:  # RQ's teardown writes the worker's death to Redis
                log.warning("worker %s ended without Redis: %s", worker.name, exc)
            if burst or worker.stop_requested:
                return
            # RQ quits its work loop on any Redis error while a job is out (a Redis restart): start a
            # fresh worker once Redis answers. The job is found as abandoned and retried.
            log.error("worker %s stopped on an error; starting a new one once Redis answers", worker.name)
            if not _wait_for_redis(context.redis):
                return
    finally:
        context.close()


def serve_metrics(settings: Settings, metrics: RelayMetrics | None = None) -> WSGIServer:
    """Serve ``/metrics`` on ``RELAY_WORKER_METRICS_PORT`` from a thread of this process, to whom
    ``relay.infra.access`` allows (the admin bearer token, or anyone with RELAY_METRICS_PUBLIC)."""
    assert settings.worker_metrics_port is not None
    redis = connect(settings, socket_connect_timeout=2, socket_timeout=5)
    registry = scrape_registry(metrics, lambda: redis, settings)
    server = start_metrics_server(settings.worker_metrics_port, settings.host, registry, settings)
    log.info("worker metrics on http://%s:%d/metrics", settings.host, server.server_port)
    return server


def _metrics_only(settings: Settings) -> None:
    serve_metrics(settings)
    threading.Event().wait()  # until SIGTERM ends the process


def run_workers(settings: Settings, *, processes: int = 1, burst: bool = False) -> int:
    """Run worker processes until stopped (with ``burst``: until the queue is empty); the exit code.

    With ``RELAY_WORKER_METRICS_PORT`` one more process serves their metrics (not in burst mode).
    """
    with_metrics = settings.worker_metrics_port is not None and not burst
    if processes == 1:
        context = WorkerContext.build(settings)
        if with_metrics:
            serve_metrics(settings, context.metrics)  # the counters this process's jobs count in
        work(settings, burst=burst, context=context)
        return 0
    children = [Child(f"worker-{number}", partial(work, settings, burst=burst)) for number in
                range(1, processes + 1)]  # fmt: skip
    if with_metrics:
        children.append(Child("worker-metrics", partial(_metrics_only, settings)))
    # A worker finishes its runs within the shutdown grace, then requeues the rest: give it that, and some.
    return supervise(children, stop_timeout_s=settings.shutdown_grace_s + 5, restart_clean_exits=not burst)


def _wait_for_redis(redis: Redis) -> bool:
    """Sleep until Redis answers PING; False when SIGTERM or SIGINT comes first (nothing is in flight)."""
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    delay_s = 0.5
    while not stop.wait(delay_s):
        try:
            redis.ping()
            return True
        except RedisError:
            delay_s = min(delay_s * 2, RelayWorker.max_connection_wait_time)
    return False
