"""``relay``: the command line. Each command builds the settings once and passes them down."""

from __future__ import annotations

import argparse
import sys

from relay import __version__
from relay.cli import events as events_cli
from relay.cli import hooks, pauses, records, run, runs
from relay.cli.arguments import positive_int
from relay.errors import ConfigError, RelayError
from relay.infra.logs import configure_logging
from relay.settings import load_settings


def build_parser() -> argparse.ArgumentParser:
    """The ``relay`` argument parser."""
    parser = argparse.ArgumentParser(prog="relay", description="Webhooks in, Plivo PHLO runs out.")
    parser.add_argument("--version", action="version", version=f"phlo-relay {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = commands.add_parser("serve", help="run the ingress (POST /hooks/{source})")
    serve.add_argument("--host", help="bind address (default: RELAY_HOST)")
    serve.add_argument("--port", type=int, help="port (default: RELAY_PORT)")
    serve.add_argument(
        "--processes", type=positive_int, default=1, help="ingress processes on the port (default 1)"
    )
    serve.set_defaults(handler=run.serve)

    worker = commands.add_parser("worker", help="run RQ workers that deliver PHLO runs")
    worker.add_argument(
        "--processes", type=positive_int, default=1, help="worker processes (default 1; one per core)"
    )
    worker.add_argument(
        "--concurrency",
        type=positive_int,
        default=None,
        help="runs in flight per process (default RELAY_WORKER_CONCURRENCY, 64)",
    )
    worker.add_argument("--burst", action="store_true", help="exit once the queue is empty")
    worker.set_defaults(handler=run.worker)

    check = commands.add_parser("check", help="validate a mapping config and list every error")
    check.add_argument("path", nargs="?", help="config file (default: RELAY_CONFIG_PATH)")
    check.add_argument("--runner", action="store_true", help="also fetch each route's PHLO at the runner")
    check.add_argument(
        "--timeout-s", type=positive_int, default=15, metavar="SECONDS", help="bound of --runner (default 15)"
    )
    check.set_defaults(handler=run.check)

    events = commands.add_parser("events", help="read event outcomes")
    events_commands = events.add_subparsers(dest="events_command", required=True, metavar="COMMAND")
    show = events_commands.add_parser("show", help="show one event and its runs")
    show.add_argument("event_id")
    show.set_defaults(handler=records.events_show)
    events_cli.add_events_list(events_commands)

    sandbox = commands.add_parser("sandbox", help="run the local PHLO runner sandbox")
    sandbox.add_argument("--host", default="127.0.0.1")
    sandbox.add_argument("--port", type=int, default=8099)
    sandbox.add_argument("--phlo", action="append", help="a known PHLO id (repeat; default: any id)")
    sandbox.set_defaults(handler=run.sandbox)

    dev = commands.add_parser("dev", help="run Redis, the ingress, a worker and the sandbox on this machine")
    dev.add_argument("--data-dir", default=".relay", help="where the embedded Redis keeps its data")
    dev.add_argument(
        "--sandbox-port", type=int, default=8099, help="port of the runner sandbox (default 8099)"
    )
    dev.set_defaults(handler=run.dev)

    records.add_dlq(commands)
    hooks.add_hook_commands(commands)
    pauses.add_pause(commands)
    runs.add_runs(commands)
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
