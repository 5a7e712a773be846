"""The commands that read and change records in Redis: `events show`, and `dlq` list, show, replay, purge."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

from redis import Redis
from redis.exceptions import RedisError

from relay.cli.arguments import positive_int, time_arg
from relay.errors import DeadLetterError
from relay.infra.redis_client import connect
from relay.mapping.config import load_config
from relay.outcome.deadletters import DeadLetterFilter, Target, list_dead_letters, purge, show_dead_letter
from relay.outcome.replay import ReplayResult, replay_many
from relay.queue import records
from relay.settings import Settings


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
def events_show(redis: Redis, settings: Settings, args: argparse.Namespace) -> int:
    view = records.read_event(redis, args.event_id)
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
        return print_replays(replay_many(redis, settings, config, target), "replayed", "dead letter(s)")

    return _with_redis(run)(settings, args)


def print_replays(results: Sequence[ReplayResult], done: str, noun: str) -> int:
    """Print one line per replay and the count; exit status 0 when every one was replayed."""
    for result in results:
        if result.replayed:
            print(f"{result.job_id}: {done} (PHLO {result.new_phlo_id})")
        else:
            print(f"{result.job_id}: not replayed: {result.reason}")
    replayed = sum(result.replayed for result in results)
    print(f"{replayed} of {len(results)} {noun} replayed")
    return 0 if replayed == len(results) else 1


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
    parser.add_argument("--since", type=time_arg, help=f"failed at or after ({when})")
    parser.add_argument("--until", type=time_arg, help=f"failed at or before ({when})")


def add_dlq(commands: Any) -> None:
    dlq = commands.add_parser("dlq", help="list, show, replay and purge dead letters")
    dlq_commands = dlq.add_subparsers(dest="dlq_command", required=True, metavar="COMMAND")

    dlq_list = dlq_commands.add_parser("list", help="list dead letters, newest first")
    _add_dlq_filters(dlq_list)
    dlq_list.add_argument("--limit", type=positive_int, help="at most this many")
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
