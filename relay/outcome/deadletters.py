"""Dead letters: list, show and purge the runs in RQ's failed registry (``relay dlq``, the admin API).

Replaying them is ``relay.outcome.replay``.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, field_validator
from redis import Redis
from redis.client import Pipeline
from rq.exceptions import NoSuchJobError
from rq.job import Job
from rq.registry import FailedJobRegistry
from rq.serializers import JSONSerializer

from relay.errors import DeadLetterError
from relay.queue import records
from relay.queue.records import Step
from relay.settings import Settings

REASON_CHARS = 500
_DURATION = re.compile(r"^(\d+(?:\.\d+)?)\s*([smhdw])$")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_time(text: str, now: float | None = None) -> float:
    """Epoch seconds from epoch seconds, ISO-8601 (naive: UTC) or a duration ago (``30m``, ``2h``, ``7d``)."""
    value = text.strip()
    if match := _DURATION.match(value.lower()):
        return (time.time() if now is None else now) - float(match[1]) * _UNIT_S[match[2]]
    try:
        seconds = float(value)
    except ValueError:
        try:
            parsed = datetime.fromisoformat(value)
        except ValueError:
            raise ValueError(
                f"{text!r} is not a time: give ISO-8601 (2025-01-31T12:00:00Z), epoch seconds, "
                "or a duration ago (30m, 2h, 7d)"
            ) from None
        return (parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)).timestamp()
    if not math.isfinite(seconds):
        raise ValueError(f"{text!r} is not a time")
    return seconds


class DeadLetter(BaseModel):
    """One dead-lettered run as listings show it."""

    model_config = ConfigDict(frozen=True)

    job_id: str
    event_id: str
    source: str
    route: str
    phlo_id: str
    reason: str
    failed_at: float  # epoch seconds
    attempts: int | None = None  # None when the run's outcome has expired


class DeadLetterFilter(BaseModel):
    """Which dead letters an operation takes; every given field must match. ``reason``: a substring."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    source: str | None = None
    route: str | None = None
    phlo_id: str | None = None
    reason: str | None = None
    since: float | None = None  # failed at or after (epoch seconds; text is read with parse_time)
    until: float | None = None  # failed at or before

    @field_validator("since", "until", mode="before")
    @classmethod
    def _time(cls, raw: Any) -> Any:
        return parse_time(raw) if isinstance(raw, str) else raw

    def is_empty(self) -> bool:
        return all(value is None for value in self.model_dump().values())

    def admits(self, letter: DeadLetter) -> bool:
        """Whether the letter matches every field but ``reason`` (which costs a read per letter)."""
        return (
            self.source in (None, letter.source)
            and self.route in (None, letter.route)
            and self.phlo_id in (None, letter.phlo_id)
            and (self.since is None or letter.failed_at >= self.since)
            and (self.until is None or letter.failed_at <= self.until)
        )


Target = Sequence[str] | DeadLetterFilter


def failed_registry(redis: Redis, settings: Settings) -> FailedJobRegistry:
    return FailedJobRegistry(settings.queue_name, connection=redis, serializer=JSONSerializer)


def letter_of(job: Job) -> DeadLetter:
    """The letter of a job, without its reason and attempts: from its meta (every relay job has one)."""
    sources = (job.meta or {}, job.kwargs or {})

    def pick(name: str) -> str:
        return next((str(where[name]) for where in sources if where.get(name)), "")

    failed = job.ended_at or job.created_at  # an unmappable route's job fails as it is created
    return DeadLetter(
        job_id=job.id,
        event_id=pick("event_id"),
        source=pick("source"),
        route=pick("route"),
        phlo_id=pick("phlo_id"),
        reason="",
        failed_at=failed.timestamp(),
    )


def _reason(job: Job) -> str:
    """The last line of the failure RQ recorded (a traceback's last line is the exception)."""
    result = job.latest_result()
    lines = [line.strip() for line in (result.exc_string or "").splitlines()] if result else []
    reason = next((line for line in reversed(lines) if line), "(no reason recorded)")
    return reason if len(reason) <= REASON_CHARS else reason[: REASON_CHARS - 1] + "…"


def _complete(redis: Redis, job: Job, head: DeadLetter) -> DeadLetter:
    run = records.read_run(redis, head.event_id, job.id) if head.event_id else None
    return head.model_copy(update={"reason": _reason(job), "attempts": run.attempts if run else None})


def list_dead_letters(
    redis: Redis, settings: Settings, filter: DeadLetterFilter | None = None, limit: int | None = None
) -> list[DeadLetter]:
    """The dead letters matching ``filter``, newest first; ids whose job has expired are skipped."""
    wanted = filter or DeadLetterFilter()
    ids = failed_registry(redis, settings).get_job_ids()
    jobs = [job for job in Job.fetch_many(ids, connection=redis, serializer=JSONSerializer) if job]
    heads = sorted(
        ((job, head) for job in jobs if wanted.admits(head := letter_of(job))),
        key=lambda pair: pair[1].failed_at,
        reverse=True,
    )
    letters: list[DeadLetter] = []
    for job, head in heads:
        if limit is not None and len(letters) >= limit:
            break
        letter = _complete(redis, job, head)
        if wanted.reason is None or wanted.reason.lower() in letter.reason.lower():
            letters.append(letter)
    return letters


def dead_job(redis: Redis, settings: Settings, job_id: str) -> Job:
    if redis.zscore(failed_registry(redis, settings).key, job_id) is None:
        raise DeadLetterError(
            f"no dead letter {job_id!r} (it never failed, was already replayed or purged, or expired)"
        )
    try:
        return Job.fetch(job_id, connection=redis, serializer=JSONSerializer)
    except NoSuchJobError:
        raise DeadLetterError(f"dead letter {job_id!r} has expired") from None


def show_dead_letter(redis: Redis, settings: Settings, job_id: str) -> dict[str, Any]:
    """The letter, its job (function, kwargs: the payload), its run's outcome with history, and its event."""
    job = dead_job(redis, settings, job_id)
    letter = _complete(redis, job, letter_of(job))
    record, run = records.read_records(redis, letter.event_id, job_id)
    return {
        **letter.model_dump(mode="json"),
        "job": {"function": job.func_name, "description": job.description, "kwargs": job.kwargs},
        "run": run.model_dump(mode="json") if run else None,
        "event": record.model_dump(mode="json") if record else None,
    }


def target_ids(redis: Redis, settings: Settings, target: Target) -> list[str]:
    if isinstance(target, DeadLetterFilter):  # oldest first: replayed runs queue in their first order
        return [letter.job_id for letter in reversed(list_dead_letters(redis, settings, target))]
    return list(dict.fromkeys([target] if isinstance(target, str) else target))


def _purge_one(redis: Redis, settings: Settings, job_id: str) -> bool:
    registry_key = failed_registry(redis, settings).key

    def purge_in(pipe: Pipeline) -> bool:
        if pipe.zscore(registry_key, job_id) is None:
            return False
        try:
            job: Job | None = Job.fetch(job_id, connection=redis, serializer=JSONSerializer)
        except NoSuchJobError:
            job = None
        event_id = letter_of(job).event_id if job is not None else ""
        run = records.read_run(redis, event_id, job_id) if event_id else None
        pipe.multi()
        pipe.zrem(registry_key, job_id)
        if job is not None:
            job.delete(pipeline=pipe)
        if run is not None:
            step = Step(at=time.time(), status=run.status, note="purged")
            records.append_step(pipe, event_id, run, step, settings.outcome_ttl_s)
        return True

    return bool(records.watched_transaction(redis, [Job.key_for(job_id)], purge_in))


def purge(redis: Redis, settings: Settings, target: Target) -> int:
    """Delete dead letters for good (the run's outcome stays, noting it); returns how many were purged."""
    return sum(_purge_one(redis, settings, job_id) for job_id in target_ids(redis, settings, target))
