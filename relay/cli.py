"""``relay``: the command line. Each command builds the settings once and passes them down."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
from pathlib import Path

from aiohttp import web
from redis import Redis
from redis.exceptions import RedisError

from relay import __version__, outcome
from relay.config import load_config
from relay.errors import ConfigError, RelayError, SettingsError
from relay.settings import Settings, load_settings, secret_environment
from relay.verify import build_verifiers


def _serve(settings: Settings, args: argparse.Namespace) -> int:
    from relay.ingress import create_app

    config = load_config(settings.config_path, settings.account_names())
    web.run_app(
        create_app(settings, config), host=args.host or settings.host, port=args.port or settings.port
    )
    return 0


def _worker(settings: Settings, args: argparse.Namespace) -> int:
    from relay.worker import run_workers

    config = load_config(settings.config_path, settings.account_names())  # refuse to start on a broken config
    without_credentials = [route.name for route in config.routes if settings.account(route.account) is None]
    if without_credentials:
        names = ", ".join(without_credentials)
        raise SettingsError(f"PLIVO_AUTH_ID and PLIVO_AUTH_TOKEN are not set; routes {names} need them")
    run_workers(settings, processes=args.processes, burst=args.burst)
    return 0


def _check(settings: Settings, args: argparse.Namespace) -> int:
    path = Path(args.path) if args.path else settings.config_path
    config = load_config(path, settings.account_names())
    build_verifiers(config.sources, secret_environment(), str(path))  # every source's secrets are set
    print(f"{path}: OK ({len(config.sources)} source(s), {len(config.routes)} route(s))")
    return 0


def _events_show(settings: Settings, args: argparse.Namespace) -> int:
    redis = Redis.from_url(settings.redis_url, socket_connect_timeout=3)
    try:
        view = outcome.read_event(redis, args.event_id)
    except RedisError as exc:
        print(f"error: Redis at {settings.redis_url} did not answer: {type(exc).__name__}", file=sys.stderr)
        return 1
    if view is None:
        print(f"error: no event {args.event_id!r} (never received, or expired)", file=sys.stderr)
        return 1
    print(json.dumps(view.model_dump(mode="json"), indent=2))
    return 0


def _sandbox(settings: Settings, args: argparse.Namespace) -> int:
    from relay.sandbox import SANDBOX_AUTH_ID, SANDBOX_AUTH_TOKEN, SandboxConfig, serve_sandbox

    auth_id = settings.plivo_auth_id or SANDBOX_AUTH_ID
    token = settings.plivo_auth_token.get_secret_value() if settings.plivo_auth_token else SANDBOX_AUTH_TOKEN
    phlo_ids = set(args.phlo) if args.phlo else None
    asyncio.run(
        serve_sandbox(SandboxConfig(credentials={auth_id: token}, phlo_ids=phlo_ids), args.host, args.port)
    )
    return 0


def _dev(settings: Settings, args: argparse.Namespace) -> int:
    from relay.dev import run_dev

    return run_dev(settings, data_dir=Path(args.data_dir), sandbox_port=args.sandbox_port)


def build_parser() -> argparse.ArgumentParser:
    """The ``relay`` argument parser."""
    parser = argparse.ArgumentParser(prog="relay", description="Webhooks in, Plivo PHLO runs out.")
    parser.add_argument("--version", action="version", version=f"phlo-relay {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = commands.add_parser("serve", help="run the ingress (POST /hooks/{source})")
    serve.add_argument("--host", help="bind address (default: RELAY_HOST)")
    serve.add_argument("--port", type=int, help="port (default: RELAY_PORT)")
    serve.set_defaults(handler=_serve)

    worker = commands.add_parser("worker", help="run RQ workers that deliver PHLO runs")
    worker.add_argument("--processes", type=int, default=1, help="worker processes (default 1)")
    worker.add_argument("--burst", action="store_true", help="exit once the queue is empty")
    worker.set_defaults(handler=_worker)

    check = commands.add_parser("check", help="validate a mapping config and list every error")
    check.add_argument("path", nargs="?", help="config file (default: RELAY_CONFIG_PATH)")
    check.set_defaults(handler=_check)

    events = commands.add_parser("events", help="read event outcomes")
    events_commands = events.add_subparsers(dest="events_command", required=True, metavar="COMMAND")
    show = events_commands.add_parser("show", help="show one event and its runs")
    show.add_argument("event_id")
    show.set_defaults(handler=_events_show)

    sandbox = commands.add_parser("sandbox", help="run the local PHLO runner sandbox")
    sandbox.add_argument("--host", default="127.0.0.1")
    sandbox.add_argument("--port", type=int, default=8099)
    sandbox.add_argument("--phlo", action="append", help="a known PHLO id (repeat; default: any id)")
    sandbox.set_defaults(handler=_sandbox)

    dev = commands.add_parser("dev", help="run Redis, the ingress, a worker and the sandbox on this machine")
    dev.add_argument("--data-dir", default=".relay", help="where the embedded Redis keeps its data")
    dev.add_argument(
        "--sandbox-port", type=int, default=8099, help="port of the runner sandbox (default 8099)"
    )
    dev.set_defaults(handler=_dev)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``relay`` console script."""
    args = build_parser().parse_args(argv)
    try:
        settings = load_settings()
        logging.basicConfig(
            level=settings.log_level,
            format="%(asctime)s %(levelname)s %(name)s: %(message)s",
            stream=sys.stderr,
        )
        code: int = args.handler(settings, args)
        return code
    except ConfigError as exc:
        print(f"config errors ({len(exc.problems)}):", file=sys.stderr)
        for problem in exc.problems:
            print(f"  {problem}", file=sys.stderr)
        return 2
    except RelayError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
