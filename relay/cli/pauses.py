"""The commands that pause and resume routes, accounts and sources: `pause`, `resume`, `paused`."""

from __future__ import annotations

import argparse
import getpass
import json
import sys
from typing import Any

from redis import Redis

from relay.cli.records import _when, _with_redis
from relay.queue import pause
from relay.queue.jobs import relay_queue
from relay.settings import Settings


def _checked(args: argparse.Namespace) -> bool:
    problem = pause.check_scope(args.kind, args.name)
    if problem is not None:
        print(f"error: {problem}", file=sys.stderr)
    return problem is None


@_with_redis
def _pause(redis: Redis, settings: Settings, args: argparse.Namespace) -> int:
    if not _checked(args):
        return 2
    new = pause.pause(redis, args.kind, args.name, args.reason, args.by or getpass.getuser())
    state = "paused" if new else "already paused; reason and author updated"
    print(f"{args.kind} {args.name}: {state}; its runs are held until `relay resume {args.kind} {args.name}`")
    return 0


@_with_redis
def _resume(redis: Redis, settings: Settings, args: argparse.Namespace) -> int:
    if not _checked(args):
        return 2
    released = pause.resume(redis, relay_queue(redis, settings), args.kind, args.name)
    if released is None:
        print(f"error: {args.kind} {args.name!r} is not paused", file=sys.stderr)
        return 1
    print(f"{args.kind} {args.name}: resumed; {released} held runs queued")
    return 0


@_with_redis
def _paused(redis: Redis, settings: Settings, args: argparse.Namespace) -> int:
    pauses = pause.list_paused(redis)
    if args.json:
        print(json.dumps({"paused": [each.model_dump() for each in pauses]}, indent=2))
        return 0
    if not pauses:
        print("nothing is paused")
    for each in pauses:
        print(f"{each.kind:<8} {each.name:<24} {each.held:>6} held  since {_when(each.at)} by {each.by}: "
              f"{each.reason}")  # fmt: skip
    return 0


def add_pause(commands: Any) -> None:
    """The ``pause``, ``resume`` and ``paused`` commands."""
    for name, handler, does in (
        ("pause", _pause, "hold the runs of a route, account or source, unattempted, until resumed"),
        ("resume", _resume, "lift a pause: its held runs are queued under the account's rate limit"),
    ):
        sub = commands.add_parser(name, help=does)
        sub.add_argument("kind", choices=pause.KINDS)
        sub.add_argument("name")
        if name == "pause":
            sub.add_argument("--reason", default="", help="why (shown by `relay paused`)")
            sub.add_argument("--by", help="who (default: the OS user)")
        sub.set_defaults(handler=handler)
    paused = commands.add_parser("paused", help="list pauses: who, when, why, runs held")
    paused.add_argument("--json", action="store_true", help="print JSON")
    paused.set_defaults(handler=_paused)
