"""The commands on single runs: `runs replay JOB_ID ... --override-cap` (a suppressed run, past its cap)."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from redis import Redis

from relay.cli.records import _with_redis, print_replays
from relay.mapping.config import load_config
from relay.outcome.override import replay_many_suppressed
from relay.settings import Settings


def _replay(settings: Settings, args: argparse.Namespace) -> int:
    if not args.override_cap:
        print("error: a suppressed run is sent only past its cap: add --override-cap", file=sys.stderr)
        return 2
    config = load_config(settings.config_path, settings.account_names())  # replays map with this config

    def run(redis: Redis, settings: Settings, args: argparse.Namespace) -> int:
        results = replay_many_suppressed(redis, settings, config, list(args.job_ids))
        return print_replays(results, "replayed past its cap", "run(s)")

    return _with_redis(run)(settings, args)


def add_runs(commands: Any) -> None:
    runs = commands.add_parser("runs", help="act on single runs: replay a suppressed run past its cap")
    runs_commands = runs.add_subparsers(dest="runs_command", required=True, metavar="COMMAND")
    replay = runs_commands.add_parser(
        "replay", help="queue suppressed runs again, past their frequency cap: JOB_ID ... --override-cap"
    )
    replay.add_argument("job_ids", nargs="+", metavar="JOB_ID")
    replay.add_argument(
        "--override-cap", action="store_true", help="required: send it although the cap says no"
    )
    replay.set_defaults(handler=_replay)
