"""The accounting step of a fault scenario: what was answered 2xx against what Redis and the sandbox hold.

For every webhook answered 2xx, its event must be in Redis and every run must end ``succeeded`` or
``dead_lettered``; a succeeded run's PHLO run id must be one the sandbox handed out for that webhook's
request; no run may be acknowledged by the sandbox twice unless the relay marked it ambiguous. A webhook
that was only ever answered 503 should have left nothing behind (the one way it can is counted as
``stored_after_503``); one whose request went unanswered may have been stored once. Either is then held
to the same standard as an accepted one.

Runs are found at the sandbox by the ``ref`` each payload carries and by the PHLO id (one per route).
"""

from __future__ import annotations

import json
import os
import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from redis import Redis
from rq.queue import Queue
from rq.registry import FailedJobRegistry, ScheduledJobRegistry, StartedJobRegistry

from relay import keys
from relay.queue import records as outcome
from relay.queue.records import EventView, RunOutcome, RunStatus
from tests.faults.harness import Cluster
from tests.faults.stream import Webhook

TERMINAL = {RunStatus.SUCCEEDED, RunStatus.DEAD_LETTERED}
REPORT_ENV = "RELAY_FAULTS_REPORT"


@dataclass
class Report:
    """The figures of one scenario; ``problems`` must be empty."""

    scenario: str
    events: int = 0
    requests: int = 0
    answered_2xx: int = 0
    answered_503: int = 0
    unanswered: int = 0
    runs: int = 0
    succeeded: int = 0
    dead_lettered: int = 0
    sent_twice: int = 0
    sent_twice_ambiguous: int = 0
    lost: int = 0
    stored_after_503: int = 0
    problems: list[str] = field(default_factory=list)
    notes: dict[str, Any] = field(default_factory=dict)
    views: dict[str, EventView] = field(default_factory=dict, repr=False)
    """Every event Redis holds at the end, by event id: for a scenario's own checks."""

    def problem(self, text: str) -> None:
        self.problems.append(text)

    def figures(self) -> dict[str, Any]:
        skip = ("problems", "notes", "views")
        return {name: getattr(self, name) for name in self.__dataclass_fields__ if name not in skip}

    def summary(self) -> str:
        figures = ", ".join(f"{name} {value}" for name, value in self.figures().items())
        return f"{figures}; {self.notes}"

    def save(self) -> None:
        """Print the figures, and append them to ``$RELAY_FAULTS_REPORT`` (JSON lines) when it is set."""
        print(self.summary())
        if path := os.environ.get(REPORT_ENV):
            with open(path, "a", encoding="utf-8") as out:
                out.write(json.dumps({**self.figures(), "notes": self.notes}) + "\n")

    def runs_of_all(self) -> list[RunOutcome]:
        return [run for view in self.views.values() for run in view.runs]

    def assert_clean(self) -> None:
        shown = "\n".join(self.problems[:25])
        assert not self.problems, f"{len(self.problems)} problem(s) in {self.summary()}:\n{shown}"


def _queue_busy(redis: Redis, queue: Queue) -> int:
    """Jobs still queued, in flight or scheduled, counted without running RQ's cleanups (which would
    call the relay's failure callback in this process)."""
    name = queue.name
    return (
        int(redis.llen(queue.key))
        + int(redis.llen(f"{queue.key}:intermediate"))
        + int(redis.zcard(StartedJobRegistry(name, connection=redis).key))
        + int(redis.zcard(ScheduledJobRegistry(name, connection=redis).key))  # type: ignore[no-untyped-call]
    )


def settle(cluster: Cluster, event_ids: set[str], timeout_s: float) -> bool:
    """Wait until every run of these events has ended and RQ holds no job that could still send one."""
    redis = Redis.from_url(cluster.redis.url)
    queue = Queue(cluster.settings.queue_name, connection=redis)
    pending, deadline = set(event_ids), time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline:
            if _queue_busy(redis, queue):
                time.sleep(0.5)  # the workers deliver; this only looks every half second
                continue
            for event_id in list(pending):
                view = outcome.read_event(redis, event_id)
                if view is not None and all(run.status in TERMINAL for run in view.runs):
                    pending.discard(event_id)
            if not pending and _queue_busy(redis, queue) == 0:
                return True
            time.sleep(0.5)
        return False
    finally:
        redis.close()


@dataclass
class _Holdings:
    """What Redis and the sandbox hold once the runs have settled."""

    views: dict[str, EventView]  # every stored event, by event id
    by_ref: dict[str, list[EventView]]  # the same, by the webhook's ref (the sender's event id)
    job_ids: set[str]  # every RQ job
    dead_letter_ids: set[str]  # RQ's failed registry
    acks: dict[tuple[str, str], list[dict[str, Any]]]  # the sandbox's 201s by (ref, PHLO id)


def _holdings(cluster: Cluster, report: Report) -> _Holdings:
    redis = Redis.from_url(cluster.redis.url)
    try:
        views = {}
        for key in redis.scan_iter(match=keys.event_key("*"), count=1000):
            event_id = key.decode().rsplit(":", 1)[1]
            if (view := outcome.read_event(redis, event_id)) is not None:
                views[event_id] = view
        prefix = "rq:job:"
        job_ids = {key.decode()[len(prefix) :] for key in redis.scan_iter(match=prefix + "*", count=1000)}
        failed_key = FailedJobRegistry(cluster.settings.queue_name, connection=redis).key
        dead_letter_ids = {member.decode() for member in redis.zrange(failed_key, 0, -1)}  # type: ignore[union-attr]
    finally:
        redis.close()
    by_ref: dict[str, list[EventView]] = defaultdict(list)
    for view in views.values():
        by_ref[view.event.source_event_id or ""].append(view)
    acks: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    received = cluster.sandbox.all_runs()
    report.notes["sandbox_requests"] = len(received)
    for run in received:
        ref = str((run["body"] or {}).get("ref"))
        if ref not in by_ref:
            report.problem(f"the sandbox received a run of {ref}, of which Redis holds no event")
        if run["status"] == 201:
            acks[(ref, run["phlo_id"])].append(run)
    job_ids = {job_id for job_id in job_ids if ":" not in job_id}  # not RQ's per-job side keys
    return _Holdings(views, by_ref, job_ids, dead_letter_ids, acks)


def _count_answers(report: Report, webhooks: list[Webhook]) -> None:
    attempts = [attempt for hook in webhooks for attempt in hook.attempts]
    report.requests = len(attempts)
    report.answered_2xx = sum(a.status is not None and 200 <= a.status < 300 for a in attempts)
    report.answered_503 = sum(a.status == 503 for a in attempts)
    report.unanswered = sum(a.status is None for a in attempts)
    errors: dict[str, int] = defaultdict(int)
    for attempt in attempts:
        if attempt.error is not None:
            errors[attempt.error] += 1
        if attempt.status is not None and attempt.status not in (200, 202, 503):
            report.problem(f"{attempt.url} answered {attempt.status}: {attempt.body}")
    if errors:
        report.notes["client_errors"] = dict(errors)


def _expected_dead_letter(run: RunOutcome, hook: Webhook) -> bool:
    """Dead letters the stream asks for: a call without a phone, a region without a PHLO."""
    return (run.route.endswith("-call") and not hook.expects_call) or run.route == "form-nowhere"


def account(
    cluster: Cluster, webhooks: list[Webhook], scenario: str, settle_timeout_s: float = 120.0
) -> Report:
    """Settle, then check every webhook and run against Redis and the sandbox (see the module docstring)."""
    report = Report(scenario, events=len(webhooks))
    _count_answers(report, webhooks)
    accepted = {hook.ref: hook.accepted.body["event_id"] for hook in webhooks if hook.accepted is not None}
    settling_since = time.monotonic()
    if not settle(cluster, set(accepted.values()), settle_timeout_s):
        report.problem(f"runs or jobs still open {settle_timeout_s:.0f} s after the stream")
    report.notes["settled_in_s"] = round(time.monotonic() - settling_since, 1)
    held = _holdings(cluster, report)
    report.views = held.views
    for hook in webhooks:
        _account_webhook(report, hook, accepted.get(hook.ref), held)
    report.notes["ambiguous"] = sum(run.ambiguous for run in report.runs_of_all())
    orphans = [job_id for job_id in held.job_ids if job_id.split("-", 1)[0] not in held.views]
    if orphans:
        report.problem(f"{len(orphans)} RQ job(s) without an event, e.g. {orphans[:3]}")
    return report


def _account_webhook(report: Report, hook: Webhook, event_id: str | None, held: _Holdings) -> None:
    views = held.by_ref.get(hook.ref, [])
    if len(views) > 1:
        report.problem(f"{hook.ref}: stored as {len(views)} events")
    for attempt in hook.attempts:
        if attempt.status in (200, 202) and attempt.body["event_id"] != event_id:
            report.problem(f"{hook.ref}: answered with two event ids")
    if event_id is not None and not views:
        report.lost += 1
        report.problem(f"{hook.ref}: answered 2xx as {event_id}, but no event is stored")
    if event_id is None and views and all(a.status == 503 for a in hook.attempts):
        # Redis applied the store's transaction, then stopped before its reply went out, and the ingress
        # answered 503 (docs/faults.md). Counted, and its runs held to the standard of an accepted event;
        # a sender that retries gets the first event's id back.
        report.stored_after_503 += 1
    if views:
        _account_event(report, hook, views[0], held)


def _steps(run: RunOutcome) -> list[str]:
    """A run's history in short: status, attempt, HTTP status, error or note of each step."""
    return [
        "/".join(
            str(part)
            for part in (step.status.value, step.attempt, step.http_status, step.error or step.note)
            if part is not None
        )
        for step in run.history
    ]


def _account_event(report: Report, hook: Webhook, view: EventView, held: _Holdings) -> None:
    answered = hook.accepted.body if hook.accepted is not None else None
    announced = {job["job_id"] for job in answered["jobs"]} if answered else set()
    runs = {run.job_id: run for run in view.runs}
    for missing in announced - set(runs):
        report.lost += 1
        report.problem(f"{hook.ref}: job {missing} was answered but has no outcome")
    for run in view.runs:
        report.runs += 1
        received = held.acks.get((hook.ref, run.phlo_id), [])
        if len(received) > 1:
            report.sent_twice += 1
            report.sent_twice_ambiguous += run.ambiguous
            if not run.ambiguous:
                report.problem(
                    f"{run.job_id}: acknowledged {len(received)} times, not marked ambiguous; "
                    f"history {_steps(run)}"
                )
        if run.job_id not in held.job_ids:
            report.problem(f"{run.job_id}: its RQ job is gone")
        if run.status is RunStatus.SUCCEEDED:
            report.succeeded += 1
            if run.phlo_run_id not in {ack["api_id"] for ack in received}:
                report.lost += 1
                report.problem(f"{run.job_id}: succeeded as {run.phlo_run_id}, which the sandbox never gave")
        elif run.status is RunStatus.DEAD_LETTERED:
            report.dead_lettered += 1
            if run.job_id not in held.dead_letter_ids:
                report.problem(f"{run.job_id}: dead-lettered but not in RQ's failed registry")
            if not _expected_dead_letter(run, hook):
                report.problem(f"{run.job_id}: dead-lettered: {run.last_error}")
            if received and not run.ambiguous:
                report.problem(f"{run.job_id}: dead-lettered although the sandbox acknowledged it")
        else:
            report.lost += 1
            report.problem(f"{run.job_id}: still {run.status.value}; history {_steps(run)}")
