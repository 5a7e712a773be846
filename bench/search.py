"""Event search among 1,000,000 stored events, beside the scanning search the index replaced, in one run:

    .venv/bin/python bench/search.py [--events N] [--baseline-events N] [--write docs/performance.md]

A private Redis gets ``--events`` events written with the store's own record and index writes
(``records.write_event``, pipelined), spread over 29 days; then ``search_events`` and ``relay events list``
are timed. The baseline, the scanning search (SCAN every event hash, read each), runs on a Redis holding
``--baseline-events`` of the same events, and its time is scaled to ``--events`` (it reads every event:
linear), labelled as such.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import msgpack
from redis import Redis

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script: the repository's packages

from bench import sections
from bench.document import load_average
from relay import keys
from relay.cli import main as cli_main
from relay.dev.redis_server import EmbeddedRedis
from relay.outcome.search import EventPage, EventQuery, matches, search_events
from relay.queue import records
from relay.queue.records import EventRecord, EventStatus, RunOutcome, RunStatus, Step
from relay.queue.store import _STORE_SCRIPT

SOURCES = {  # source: its routes (the first always runs; the second for one event in four)
    "website-form": ["callback", "sales-alert"],
    "hubspot-workflow": ["hubspot-sms"],
    "typeform": ["typeform-call"],
    "shopify": ["order-sms", "order-call"],
    "stripe": ["payment-failed-sms"],
}
SPAN_S = 29 * 86400
TTL_S = 30 * 86400
LOAD_CHUNK = 500
TARGET_LOOKUP_MS = 50.0
PHLO = "11111111-aaaa-4bbb-8ccc-000000000001"


def _status(rng: random.Random) -> RunStatus:
    roll = rng.random()
    if roll < 0.90:
        return RunStatus.SUCCEEDED
    if roll < 0.95:
        return RunStatus.FAILED
    if roll < 0.98:
        return RunStatus.DEAD_LETTERED
    return RunStatus.QUEUED


def load(redis: Redis, count: int, now_s: float, seed: int = 7) -> None:
    """``count`` events over the last SPAN_S seconds, written as the store writes them: each event's record
    and index writes recorded on a pipeline and run by the store's batch script, LOAD_CHUNK at a time. One in
    twenty ignored, the rest with one or two runs in a mix of statuses."""
    rng = random.Random(seed)
    names = list(SOURCES)
    script = redis.register_script(_STORE_SCRIPT)
    duplicates = keys.index_status_key(EventStatus.DUPLICATE.value)
    index_args = [keys.index_all_key(), keys.event_key(""), duplicates, keys.DUPLICATES_FIELD]
    pipe = redis.pipeline(transaction=False)  # only records commands
    batch: list[bytes] = []
    for number in range(count):
        source = names[number % len(names)]
        received = now_s - SPAN_S + SPAN_S * number / count
        ignored = rng.random() < 0.05
        routes = [] if ignored else SOURCES[source][: 2 if rng.random() < 0.25 else 1]
        record = EventRecord(
            event_id=f"evt_{rng.getrandbits(128):032x}",
            source=source,
            source_event_id=f"sender-{number}",
            event_type="callback-request",
            received_at=received,
            status=EventStatus.IGNORED if ignored else EventStatus.ACCEPTED,
            routes=routes,
            config_version="0123456789ab",
        )
        runs = []
        for route in routes:
            status = _status(rng)
            step = Step(at=received + 0.4, status=status, attempt=1, http_status=200)
            job_id = f"{record.event_id}-{route}"
            runs.append(RunOutcome(job_id=job_id, route=route, phlo_id=PHLO, account="default", status=status,
                                   attempts=1, history=[step]))  # fmt: skip
        document = {"submission_id": f"sender-{number}", "form": "callback-request", "phone": "+14155550123"}
        records.write_event(pipe, record, runs, TTL_S, None if ignored else document)
        commands = [args for args, _options in pipe.command_stack]
        batch.append(msgpack.packb(["", 0, record.event_id, commands], use_bin_type=False))
        pipe.command_stack.clear()
        if len(batch) == LOAD_CHUNK or number == count - 1:
            header = msgpack.packb([None] * len(batch))[: -len(batch)]
            script(args=[header + b"".join(batch), *index_args])
            batch.clear()


def scan_search(redis: Redis, query: EventQuery) -> EventPage:
    """The search before the index (the body ``search_events`` had): every event hash read, then sorted."""
    views = []
    for key in redis.scan_iter(match=keys.event_key("*"), count=1000):
        event_id = (key.decode() if isinstance(key, bytes) else key).removeprefix(keys.event_key(""))
        view = records.read_event(redis, event_id)
        if view is not None and matches(view, query):
            views.append(view)
    views.sort(key=lambda view: (view.event.received_at, view.event.event_id), reverse=True)
    page = views[: query.limit]
    return EventPage(events=page, next_before=page[-1].event.event_id if len(views) > query.limit else None)


def timed_ms(call: Callable[[], object], repeat: int) -> list[float]:
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        call()
        times.append((time.perf_counter() - started) * 1000)
    return times


def _cli_ms(url: str, args: list[str], repeat: int) -> list[float]:
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("RELAY_")}, "RELAY_REDIS_URL": url}
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        done = subprocess.run(
            [sys.executable, "-m", "relay", *args], env=env, capture_output=True, check=False
        )
        times.append((time.perf_counter() - started) * 1000)
        if done.returncode != 0:
            raise SystemExit(f"relay {' '.join(args)} failed: {done.stderr.decode()[-500:]}")
    return times


def _in_process_ms(url: str, args: list[str], repeat: int) -> list[float]:
    """A command's own time: ``relay.cli.main`` called here, its output discarded."""
    os.environ["RELAY_REDIS_URL"] = url
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        with contextlib.redirect_stdout(io.StringIO()):
            code = cli_main(args)
        times.append((time.perf_counter() - started) * 1000)
        if code != 0:
            raise SystemExit(f"relay {' '.join(args)} exited {code}")
    return times


def _ms(times: list[float]) -> str:
    median = statistics.median(times)
    shown = f"{median:.1f} ms" if median < 100 else f"{median:,.0f} ms"
    if len(times) < 5:
        return shown
    p99 = sorted(times)[min(len(times) - 1, round(0.99 * (len(times) - 1)))]
    return f"{shown} (p99 {p99:.1f})" if p99 < 100 else f"{shown} (p99 {p99:,.0f})"


def _queries(now_s: float, count: int, rng: random.Random) -> dict[str, Callable[[], EventQuery]]:
    return {
        "by the sender's event id (`--source-event-id`)": lambda: EventQuery(
            source_event_id=f"sender-{rng.randrange(count)}"
        ),
        "newest first, a page of 50, no filter": lambda: EventQuery(),
        "status dead_lettered (3 % of runs), a page of 50": lambda: EventQuery(status="dead_lettered"),
        "source stripe since 1 day ago, a page of 50": lambda: EventQuery(
            source="stripe", since=now_s - 86400
        ),
        "source shopify, route order-call, status failed, a page of 50": lambda: EventQuery(
            source="shopify", route="order-call", status="failed"
        ),
    }


def _used_memory(redis: Redis) -> int:
    return int(redis.info("memory")["used_memory"])


def measure(args: argparse.Namespace, work_dir: Path) -> list[list[str]]:
    now_s = time.time()
    rows: list[list[str]] = []
    with (
        EmbeddedRedis(work_dir / "full", appendonly=False) as big,
        EmbeddedRedis(work_dir / "small", appendonly=False) as small,
    ):
        full, subset = Redis.from_url(big.url), Redis.from_url(small.url)
        empty = _used_memory(full)
        started = time.monotonic()
        load(full, args.events, now_s)
        print(f"loaded {args.events} events in {time.monotonic() - started:.0f} s", file=sys.stderr)
        per_event = (_used_memory(full) - empty) / args.events
        load(subset, args.baseline_events, now_s)
        scale = args.events / args.baseline_events
        label = f"scan of {args.baseline_events:,} events x {scale:g}"
        indexed_queries = _queries(now_s, args.events, random.Random(11))
        scanned_queries = _queries(now_s, args.baseline_events, random.Random(3))
        for number, (name, make) in enumerate(indexed_queries.items()):
            indexed = timed_ms(lambda make=make: search_events(full, make()), args.repeat)  # type: ignore[misc]
            on_subset = scanned_queries[name]
            scanned = [t * scale for t in timed_ms(lambda q=on_subset: scan_search(subset, q()), 3)]  # type: ignore[misc]
            ratio = statistics.median(scanned) / statistics.median(indexed)
            target, verdict = ("", "")
            if number == 0:
                target = f"< {TARGET_LOOKUP_MS:.0f} ms"
                verdict = "PASS" if statistics.median(indexed) < TARGET_LOOKUP_MS else "**MISS**"
            rows.append(
                [
                    "7. Search" if number == 0 else "",
                    f"search_events: {name}",
                    target,
                    f"{_ms(scanned)} ({label})",
                    _ms(indexed),
                    f"{ratio:,.0f}x faster",
                    verdict,
                ]
            )
        event_id = search_events(full, EventQuery(source_event_id="sender-2424")).events[0].event.event_id
        cli = _cli_ms(
            big.url, ["events", "list", "--source-event-id", "sender-2424", "--json"], args.cli_repeat
        )
        show = _cli_ms(big.url, ["events", "show", event_id], args.cli_repeat)
        rows.append(
            [
                "",
                "`relay events list --source-event-id X --json`, process start to exit (baseline: "
                "`relay events show ID`, which needs the relay's own id, same process cost)",
                "",
                _ms(show),
                _ms(cli),
                f"{statistics.median(cli) / statistics.median(show):.2f}x",
                "",
            ]
        )
        inside = _in_process_ms(big.url, ["events", "list", "--source-event-id", "sender-2424", "--json"], 50)
        inside_show = _in_process_ms(big.url, ["events", "show", event_id], 50)
        rows.append(
            [
                "",
                "the same command run in-process (`relay.cli.main`: settings, connection, search, JSON "
                "printed), without the interpreter's start-up and imports (baseline: `relay events show ID`)",
                f"< {TARGET_LOOKUP_MS:.0f} ms",
                _ms(inside_show),
                _ms(inside),
                f"{statistics.median(inside) / statistics.median(inside_show):.2f}x",
                "PASS" if statistics.median(inside) < TARGET_LOOKUP_MS else "**MISS**",
            ]
        )
        rows.append(
            ["", "Redis memory per stored event, records and index", "", "", f"{per_event:,.0f} B", "", ""]
        )
        full.close()
        subset.close()
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--baseline-events", type=int, default=20_000)
    parser.add_argument("--repeat", type=int, default=200, help="timings of each indexed query (default 200)")
    parser.add_argument("--cli-repeat", type=int, default=10, help="runs of each command (default 10)")
    parser.add_argument(
        "--write", type=Path, metavar="PATH", help="write the section into docs/performance.md"
    )
    args = parser.parse_args()
    load_before = load_average()
    with tempfile.TemporaryDirectory(prefix="relay-bench-search-") as work_dir:
        rows = measure(args, Path(work_dir))
    loads = f"load average {load_before} before, {load_average()} after"
    text = sections.table(rows)
    print(text)
    if args.write is not None:
        command = " ".join([".venv/bin/python", "bench/search.py", *sys.argv[1:]])
        when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
        body = (
            f"## Search\n\nGenerated by `{command}` on {when}, on the machine above: {args.events:,} events "
            f"written with the store's own record and index writes (5 sources, 1-2 routes each, one in "
            f"twenty ignored, runs 90 % succeeded, 5 % failed, 3 % dead-lettered, 2 % queued) over 29 days. "
            f"Indexed figures: median (p99) of {args.repeat} searches (the sender's id drawn at random); "
            f"commands: median of {args.cli_repeat} runs. The baseline is the scanning search the index "
            f"replaced, on {args.baseline_events:,} of the same events in another Redis, 3 runs, scaled "
            f"linearly (it reads every event). The machine was shared ({loads}).\n\n{text}\n"
        )
        sections.write_section(args.write, "search", body)
        print(f"wrote {args.write}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
