"""``relay``: the command line. Each command builds the settings once and passes them down."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from redis import Redis
from redis.exceptions import RedisError

from relay import __version__
from relay.errors import ConfigError, DeadLetterError, RelayError, SettingsError
from relay.infra import metrics
from relay.infra.logs import configure_logging
from relay.infra.redis_client import connect, require_redis
from relay.infra.supervisor import Child, supervise
from relay.ingress.verify import build_verifiers
from relay.mapping.config import load_config
from relay.outcome.deadletters import (
    DeadLetterFilter,
    Target,
    list_dead_letters,
    parse_time,
    purge,
    show_dead_letter,
)
from relay.outcome.replay import replay_many
from relay.queue import records as outcome
from relay.settings import Settings, load_settings, secret_environment

log = logging.getLogger(__name__)


def _serve(settings: Settings, args: argparse.Namespace) -> int:
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
        asyncio.run(serve_ingress(settings, config, host=host, port=port, reuse_port=True))

    children = [Child(f"ingress-{number}", one) for number in range(1, args.processes + 1)]
    return supervise(children, stop_timeout_s=settings.shutdown_grace_s + 5)


def _worker(settings: Settings, args: argparse.Namespace) -> int:
    from relay.worker.loop import run_workers

    config = load_config(settings.config_path, settings.account_names())  # refuse to start on a broken config
    without_credentials = [route.name for route in config.routes if settings.account(route.account) is None]
    if without_credentials:
        names = ", ".join(without_credentials)
        raise SettingsError(f"PLIVO_AUTH_ID and PLIVO_AUTH_TOKEN are not set; routes {names} need them")
    require_redis(settings)  # RQ would otherwise retry a missing Redis forever
    metrics.prepare_directory(settings.metrics_dir, processes=args.processes)
    return run_workers(settings, processes=args.processes, burst=args.burst)


def _check(settings: Settings, args: argparse.Namespace) -> int:
    path = Path(args.path) if args.path else settings.config_path
    config = load_config(path, settings.account_names())
    build_verifiers(config.sources, secret_environment(), str(path))  # every source's secrets are set
    print(f"{path}: OK ({len(config.sources)} source(s), {len(config.routes)} route(s))")
    return 0


def _sandbox(settings: Settings, args: argparse.Namespace) -> int:
    from relay.runner.sandbox import SANDBOX_AUTH_ID, SANDBOX_AUTH_TOKEN, SandboxConfig, serve_sandbox

    auth_id = settings.plivo_auth_id or SANDBOX_AUTH_ID
    token = settings.plivo_auth_token.get_secret_value() if settings.plivo_auth_token else SANDBOX_AUTH_TOKEN
    phlo_ids = set(args.phlo) if args.phlo else None
    asyncio.run(
        serve_sandbox(SandboxConfig(credentials={auth_id: token}, phlo_ids=phlo_ids), args.host, args.port)
    )
    return 0


def _dev(settings: Settings, args: argparse.Namespace) -> int:
    from relay.dev.stack import run_dev

    # The ingress runs here and the worker in a child: one metrics directory shows both on /metrics.
    metrics.prepare_directory(settings.metrics_dir, processes=2)
    return run_dev(settings, data_dir=Path(args.data_dir), sandbox_port=args.sandbox_port)


def _time_arg(text: str) -> float:
    try:
        return parse_time(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _dlq_filter(args: argparse.Namespace) -> DeadLetterFilter:
    return DeadLetterFilter(
        source=args.source,
        route=args.route,
        phlo_id=args.phlo,
        reason=args.reason,
        since=args.since,
        until=args.until,
    )


def _dlq_target(args: argparse.Namespace, verb: str) -> Target | None:
    """Job ids, ``--all`` or filters: exactly one of them (None, after saying so, when not)."""
    selected = _dlq_filter(args)
    given = [bool(args.job_ids), args.all, not selected.is_empty()]
    if sum(given) != 1:
        print(f"error: {verb} takes job ids, filters or --all (exactly one of them)", file=sys.stderr)
        return None
    return list(args.job_ids) if args.job_ids else selected


def _with_redis(
    run: Callable[[Redis, Settings, argparse.Namespace], int],
) -> Callable[[Settings, argparse.Namespace], int]:
    """A handler with a Redis connection: exit 1 when Redis or the operation fails."""

    def handler(settings: Settings, args: argparse.Namespace) -> int:
        redis = connect(settings, socket_connect_timeout=3, socket_timeout=30)
        try:
            return run(redis, settings, args)
        except RedisError as exc:
            print(f"error: Redis did not answer: {type(exc).__name__}", file=sys.stderr)
            return 1
        except DeadLetterError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        finally:
            redis.close()

    return handler


def _when(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%d %H:%M:%SZ")


@_with_redis
def _events_show(redis: Redis, settings: Settings, args: argparse.Namespace) -> int:
    view = outcome.read_event(redis, args.event_id)
    if view is None:
        print(f"error: no event {args.event_id!r} (never received, or expired)", file=sys.stderr)
        return 1
    print(json.dumps(view.model_dump(mode="json"), indent=2))
    return 0


@_with_redis
def _dlq_list(redis: Redis, settings: Settings, args: argparse.Namespace) -> int:
    letters = list_dead_letters(redis, settings, _dlq_filter(args), args.limit)
    if args.json:
        print(json.dumps([letter.model_dump(mode="json") for letter in letters], indent=2))
        return 0
    for letter in letters:
        attempts = "?" if letter.attempts is None else letter.attempts
        print(
            f"{_when(letter.failed_at)}  {letter.job_id}  {letter.source} -> {letter.route} -> "
            f"PHLO {letter.phlo_id}  attempts {attempts}  {letter.reason}"
        )
    print(f"{len(letters)} dead letter(s)")
    return 0


@_with_redis
def _dlq_show(redis: Redis, settings: Settings, args: argparse.Namespace) -> int:
    print(json.dumps(show_dead_letter(redis, settings, args.job_id), indent=2))
    return 0


def _dlq_replay(settings: Settings, args: argparse.Namespace) -> int:
    target = _dlq_target(args, "replay")
    if target is None:
        return 2
    config = load_config(settings.config_path, settings.account_names())  # replays map with this config

    def run(redis: Redis, settings: Settings, args: argparse.Namespace) -> int:
        results = replay_many(redis, settings, config, target)
        for result in results:
            if result.replayed:
                print(f"{result.job_id}: replayed (PHLO {result.new_phlo_id})")
            else:
                print(f"{result.job_id}: not replayed: {result.reason}")
        replayed = sum(result.replayed for result in results)
        print(f"{replayed} of {len(results)} dead letter(s) replayed")
        return 0 if replayed == len(results) else 1

    return _with_redis(run)(settings, args)


def _dlq_purge(settings: Settings, args: argparse.Namespace) -> int:
    target = _dlq_target(args, "purge")
    if target is None:
        return 2
    if not args.yes:
        print("error: purge deletes dead letters for good; add --yes to do it", file=sys.stderr)
        return 2

    def run(redis: Redis, settings: Settings, args: argparse.Namespace) -> int:
        purged = purge(redis, settings, target)
        print(f"purged {purged} dead letter(s)")
        if isinstance(target, list) and purged < len(set(target)):
            print(f"error: {len(set(target)) - purged} of the job ids are not dead letters", file=sys.stderr)
            return 1
        return 0

    return _with_redis(run)(settings, args)


def _add_dlq_filters(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--source", help="only dead letters of this source")
    parser.add_argument("--route", help="only dead letters of this route")
    parser.add_argument("--phlo", help="only dead letters of this PHLO id")
    parser.add_argument("--reason", help="only dead letters whose reason contains this (any case)")
    when = "ISO-8601, epoch seconds, or a duration ago: 30m, 2h, 7d"
    parser.add_argument("--since", type=_time_arg, help=f"failed at or after ({when})")
    parser.add_argument("--until", type=_time_arg, help=f"failed at or before ({when})")


def _add_dlq(commands: Any) -> None:
    dlq = commands.add_parser("dlq", help="list, show, replay and purge dead letters")
    dlq_commands = dlq.add_subparsers(dest="dlq_command", required=True, metavar="COMMAND")

    dlq_list = dlq_commands.add_parser("list", help="list dead letters, newest first")
    _add_dlq_filters(dlq_list)
    dlq_list.add_argument("--limit", type=_positive, help="at most this many")
    dlq_list.add_argument("--json", action="store_true", help="print JSON")
    dlq_list.set_defaults(handler=_dlq_list)

    dlq_show = dlq_commands.add_parser("show", help="one dead letter: payload, run history, event (JSON)")
    dlq_show.add_argument("job_id")
    dlq_show.set_defaults(handler=_dlq_show)

    for name, handler, does in (
        ("replay", _dlq_replay, "map again with the current config and queue"),
        ("purge", _dlq_purge, "delete for good"),
    ):
        sub = dlq_commands.add_parser(name, help=f"{does}: JOB_ID ..., filters, or --all")
        sub.add_argument("job_ids", nargs="*", metavar="JOB_ID")
        sub.add_argument("--all", action="store_true", help="every dead letter")
        _add_dlq_filters(sub)
        if name == "purge":
            sub.add_argument("--yes", action="store_true", help="confirm: purge deletes for good")
        sub.set_defaults(handler=handler)


def _positive(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive integer")
    return int(text)


def build_parser() -> argparse.ArgumentParser:
    """The ``relay`` argument parser."""
    parser = argparse.ArgumentParser(prog="relay", description="Webhooks in, Plivo PHLO runs out.")
    parser.add_argument("--version", action="version", version=f"phlo-relay {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = commands.add_parser("serve", help="run the ingress (POST /hooks/{source})")
    serve.add_argument("--host", help="bind address (default: RELAY_HOST)")
    serve.add_argument("--port", type=int, help="port (default: RELAY_PORT)")
    serve.add_argument(
        "--processes", type=_positive, default=1, help="ingress processes on the port (default 1)"
    )
    serve.set_defaults(handler=_serve)

    worker = commands.add_parser("worker", help="run RQ workers that deliver PHLO runs")
    worker.add_argument("--processes", type=_positive, default=1, help="worker processes (default 1)")
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

    _add_dlq(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``relay`` console script."""
    args = build_parser().parse_args(argv)
    try:
        # relay dev reads text unless RELAY_LOG_FORMAT says otherwise; its worker inherits the choice.
        settings = configure_logging(
            load_settings(), default_format="text" if args.command == "dev" else None
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
