"""Redis bytes per stored event, index included, for each sample of config/examples/samples/:

    .venv/bin/python bench/memory.py [--events 1000]

Each sample is read, split and mapped with its example config as the ingress does, and stored ``--events``
times (each copy with a sender id of its own) by the ingress's ``EventStore``, into a private Redis; every
run then records a success through ``records.append_step``, as a worker does. Redis's ``used_memory`` is
read before and after, and after deleting each part in turn, which gives each part's share per event:
the records (30 days), the index (30 days), the duplicate claim (1 day) and the RQ job (kept 1 day after it
ends; measured as queued). Done twice: documents stored as JSON (before compaction) and as they are now.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, replace
from pathlib import Path

import redis.asyncio
from multidict import CIMultiDict
from redis import Redis

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script: the repository's packages

from relay import keys
from relay.dev.redis_server import EmbeddedRedis
from relay.mapping.config import load_config
from relay.mapping.routes import map_event
from relay.mapping.split import read_events
from relay.queue import records
from relay.queue.records import RunStatus, Step
from relay.queue.store import EventStore
from relay.settings import Settings, load_settings

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "config" / "examples"
TYPES = {".json": "application/json", ".urlencoded": "application/x-www-form-urlencoded", ".xml": "text/xml"}
RATES_PER_S = (1, 10, 100)
DAY_S = 86400
HEADERS = {  # what the vendors send beside the body that the examples read (the event's type)
    "github.json": {"X-GitHub-Event": "issues"},
    "shopify.json": {"X-Shopify-Topic": "orders/create"},
}


@dataclass(frozen=True)
class Shares:
    """Bytes per stored event of each part."""

    records: float
    index: float
    claim: float
    job: float

    @property
    def kept(self) -> float:  # for the outcome TTL (30 days)
        return self.records + self.index

    @property
    def day(self) -> float:  # for a day (the duplicate window, finished jobs)
        return self.claim + self.job


def _headers(sample: Path, body: bytes) -> CIMultiDict[str]:
    content_type = TYPES.get(sample.suffix, "")
    if sample.suffix == ".multipart":
        boundary = body.split(b"\r\n", 1)[0][2:].decode("ascii")
        content_type = f"multipart/form-data; boundary={boundary}"
    return CIMultiDict({"Content-Type": content_type, **HEADERS.get(sample.name, {})})


def _used(client: Redis) -> int:
    return int(client.info("memory")["used_memory"])


def _delete(client: Redis, pattern: str) -> None:
    batch = list(client.scan_iter(match=pattern, count=1000))
    for start in range(0, len(batch), 1000):
        client.delete(*batch[start : start + 1000])


async def _store(url: str, settings: Settings, sample: Path, body: bytes, count: int) -> int:
    """Store ``count`` copies of the sample's events; the number of events stored."""
    config = load_config(EXAMPLES / f"{sample.stem}.yaml")
    [(name, source)] = config.sources.items()
    events = read_events(source, _headers(sample, body), body)
    client = redis.asyncio.Redis.from_url(url)
    recorder = Redis.from_url(url)
    store = EventStore(client, recorder, settings)
    stored = 0
    for _ in range(count):
        batch = []
        for event in events:
            sender_id = str(uuid.uuid4())
            incoming = replace(event, source_event_id=sender_id, dedupe_id=sender_id)
            batch.append((incoming, map_event(config, name, event.event_type, event.document)))
        stored += len(await store.store(name, batch, settings.dedupe_window_s, "0123456789ab"))
    await store.close()
    await client.aclose()
    recorder.close()
    return stored


def _deliver(client: Redis, settings: Settings) -> None:
    """Every run records a success, as a worker does (its record grows by a step and the runner's answer)."""
    for key in client.scan_iter(match=keys.event_key("*"), count=1000):
        event_id = key.decode().removeprefix(keys.event_key(""))
        view = records.read_event(client, event_id)
        for run in view.runs if view else []:
            if run.status is RunStatus.QUEUED:
                step = Step(at=time.time(), status=RunStatus.SUCCEEDED, attempt=1, http_status=200)
                answer = {"phlo_run_id": str(uuid.uuid4()), "message": "PHLO run queued", "http_status": 200}
                records.append_step(
                    client, event_id, run, step, settings.outcome_ttl_s,
                    attempts=1, status=RunStatus.SUCCEEDED, elapsed_ms=212.4, **answer,
                )  # fmt: skip


def measure(url: str, settings: Settings, sample: Path, count: int) -> Shares:
    client = Redis.from_url(url)
    client.flushall()
    before = _used(client)
    stored = asyncio.run(_store(url, settings, sample, sample.read_bytes(), count))
    _deliver(client, settings)
    full = _used(client)
    _delete(client, "rq:*")
    no_jobs = _used(client)
    _delete(client, keys.seen_key("*", "*"))
    no_claims = _used(client)
    _delete(client, f"{keys.index_all_key().rsplit(':', 1)[0]}:*")
    records_only = _used(client)
    client.close()
    return Shares(
        records=(records_only - before) / stored,
        index=(no_claims - records_only) / stored,
        claim=(no_jobs - no_claims) / stored,
        job=(full - no_jobs) / stored,
    )


def _row(shares: Shares) -> str:
    return f"{shares.records:,.0f} B | {shares.index:,.0f} B | {shares.day:,.0f} B | **{shares.kept:,.0f} B**"


def _sizing(shares: Shares, settings: Settings) -> list[str]:
    kept_days = settings.outcome_ttl_s / DAY_S
    lines = []
    for rate in RATES_PER_S:
        per_day = rate * DAY_S * (shares.kept + shares.day)
        steady = rate * DAY_S * (shares.kept * kept_days + shares.day)
        lines.append(f"| {rate} events/s | {per_day / 2**20:,.0f} MiB | {steady / 2**30:,.1f} GiB |")
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--events", type=int, default=1000, help="copies of each sample (default 1000)")
    args = parser.parse_args()
    samples = sorted(path for path in (EXAMPLES / "samples").iterdir() if path.is_file())
    results: dict[str, tuple[Shares, Shares]] = {}
    with (
        tempfile.TemporaryDirectory(prefix="relay-bench-memory-") as work_dir,
        EmbeddedRedis(Path(work_dir), appendonly=False) as server,
    ):
        settings = load_settings(_env_file=None, redis_url=server.url)
        measure(server.url, settings, samples[0], args.events)  # warm-up: Redis's allocator grows once
        for sample in samples:
            compact = records.COMPRESS_FROM_BYTES
            records.COMPRESS_FROM_BYTES = 1 << 30  # the documents as JSON, as before compaction
            plain = measure(server.url, settings, sample, args.events)
            records.COMPRESS_FROM_BYTES = compact
            results[sample.name] = (plain, measure(server.url, settings, sample, args.events))
            print(f"{sample.name}: done", file=sys.stderr)
    print("| sample | body | records (30 d) | index (30 d) | claim + job (1 d) | kept per event | before |")
    print("|---|---|---|---|---|---|---|")
    for name, (plain, now) in results.items():
        size = (EXAMPLES / "samples" / name).stat().st_size
        print(f"| {name} | {size:,} B | {_row(now)} | {plain.kept:,.0f} B |")
    parts = Shares.__dataclass_fields__
    mean = Shares(*(statistics.mean(getattr(now, part) for _, now in results.values()) for part in parts))
    before = statistics.mean(plain.kept for plain, _ in results.values())
    print(f"| mean | | {_row(mean)} | {before:,.0f} B |")
    print()
    print("| rate | Redis memory added per day | held at the default retention (30 d) |")
    print("|---|---|---|")
    print("\n".join(_sizing(mean, settings)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
