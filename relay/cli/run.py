"""The commands that run the relay's processes: ``serve``, ``worker``, ``sandbox``, ``dev``; and ``check``.

Each imports its process's code when it runs, so that ``relay check`` or ``relay dlq`` load none of it.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from pathlib import Path

from relay.errors import ConfigError, SettingsError
from relay.infra import metrics
from relay.infra.redis_client import require_redis
from relay.infra.supervisor import Child, supervise
from relay.ingress.verify import build_verifiers
from relay.mapping.config import RelayConfig, load_config
from relay.settings import Settings, secret_environment

log = logging.getLogger(__name__)


def serve(settings: Settings, args: argparse.Namespace) -> int:
    from relay.ingress.serve import serve_ingress

    config = load_config(settings.config_path, settings.account_names())
    host, port = args.host or settings.host, settings.port if args.port is None else args.port
    require_redis(settings)  # stop now, saying which Redis and why, not at the first webhook
    metrics.prepare_directory(settings.metrics_dir, processes=args.processes)
    if args.processes == 1:
        asyncio.run(serve_ingress(settings, config, host=host, port=port))
        return 0
    if port == 0:
        raise SettingsError("--processes needs a fixed port: each process binds it (SO_REUSEPORT)")

    def one() -> None:
        # A child restarted after a reload serves the file as it is now (invalid: the one checked at start).
        asyncio.run(
            serve_ingress(settings, _config_now(settings, config), host=host, port=port, reuse_port=True)
        )

    children = [Child(f"ingress-{number}", one) for number in range(1, args.processes + 1)]
    return supervise(children, stop_timeout_s=settings.shutdown_grace_s + 5)


def _config_now(settings: Settings, checked: RelayConfig) -> RelayConfig:
    try:
        return load_config(settings.config_path, settings.account_names())
    except ConfigError as exc:
        problems = "; ".join(map(str, exc.problems))
        log.error("the config file is invalid, serving the one checked at start: %s", problems)
        return checked


def worker(settings: Settings, args: argparse.Namespace) -> int:
    from relay.worker.context import worker_config
    from relay.worker.loop import run_workers

    worker_config(settings)  # refuse to start on a broken config
    require_redis(settings)  # RQ would otherwise retry a missing Redis forever
    if args.concurrency is not None:
        settings = settings.model_copy(update={"worker_concurrency": args.concurrency})
    metrics.prepare_directory(settings.metrics_dir, processes=args.processes)
    return run_workers(settings, processes=args.processes, burst=args.burst)


def check(settings: Settings, args: argparse.Namespace) -> int:
    path = Path(args.path) if args.path else settings.config_path
    config = load_config(path, settings.account_names())
    build_verifiers(config.sources, secret_environment(), str(path))  # every source's secrets are set
    print(f"{path}: OK ({len(config.sources)} source(s), {len(config.routes)} route(s))")
    if not args.runner:
        return 0
    from relay.cli.runner_check import check_runner

    problems = check_runner(settings, config, float(args.timeout_s))
    if problems:
        print(f"{settings.runner_url}: {len(problems)} problem(s):", file=sys.stderr)
        for problem in problems:
            print(f"  {problem}", file=sys.stderr)
        return 1
    print(f"{settings.runner_url}: OK (the PHLO of each of {len(config.routes)} route(s) fetched)")
    return 0


def sandbox(settings: Settings, args: argparse.Namespace) -> int:
    from relay.runner.sandbox import SANDBOX_AUTH_ID, SANDBOX_AUTH_TOKEN, SandboxConfig, serve_sandbox

    auth_id = settings.plivo_auth_id or SANDBOX_AUTH_ID
    token = settings.plivo_auth_token.get_secret_value() if settings.plivo_auth_token else SANDBOX_AUTH_TOKEN
    phlo_ids = set(args.phlo) if args.phlo else None
    asyncio.run(
        serve_sandbox(SandboxConfig(credentials={auth_id: token}, phlo_ids=phlo_ids), args.host, args.port)
    )
    return 0


def dev(settings: Settings, args: argparse.Namespace) -> int:
    from relay.dev.stack import run_dev

    # The ingress runs here and the worker in a child: one metrics directory shows both on /metrics.
    metrics.prepare_directory(settings.metrics_dir, processes=2)
    return run_dev(settings, data_dir=Path(args.data_dir), sandbox_port=args.sandbox_port)
