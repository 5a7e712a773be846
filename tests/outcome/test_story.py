"""An event's story: each kind of history step a run can hold becomes the timeline line the console shows.

The histories are written as the worker, replay and purge write them (``relay.worker.runs``,
``relay.outcome.replay``, ``relay.outcome.deadletters``); the whole path through real deliveries is tested
in tests/console/test_console_events.py and tests/e2e/test_console_browser.py.
"""

from __future__ import annotations

from relay.outcome.story import StepKind, timeline
from relay.queue.records import EventRecord, EventStatus, RunOutcome, RunStatus, Step

EVENT = EventRecord(
    event_id="evt_1",
    source="website-form",
    source_event_id="sub-1",
    event_type="callback-request",
    received_at=1000.0,
    status=EventStatus.ACCEPTED,
    routes=["callback"],
)


def run(status: RunStatus, *history: Step, **fields: object) -> RunOutcome:
    return RunOutcome(
        job_id="evt_1-callback", route="callback", phlo_id="p", account="default", status=status,
        history=list(history), **fields,  # type: ignore[arg-type]
    )  # fmt: skip


def kinds(outcome: RunOutcome) -> list[StepKind]:
    return [step.kind for step in timeline(EVENT, outcome)]


def test_a_delivered_run_reads_queued_failures_waits_and_its_success_with_the_runners_message() -> None:
    outcome = run(
        RunStatus.SUCCEEDED,
        Step(at=1001, status=RunStatus.WAITING, note="circuit breaker open", retry_in_s=5.0),
        Step(at=1006, status=RunStatus.FAILED, attempt=1, http_status=503, error="HTTP 503", retry_in_s=2.0),
        Step(at=1008, status=RunStatus.PAUSED, note="route 'callback' is paused"),
        Step(at=1020, status=RunStatus.SUCCEEDED, attempt=2, http_status=201),
        attempts=2,
        message="queued SMS",
        phlo_run_id="run-1",
    )
    lines = timeline(EVENT, outcome)
    assert [line.kind for line in lines] == [
        StepKind.QUEUED, StepKind.WAITING, StepKind.ATTEMPT_FAILED, StepKind.PAUSED, StepKind.SUCCEEDED,
    ]  # fmt: skip
    assert lines[0].at == EVENT.received_at
    assert (lines[1].detail, lines[1].retry_in_s) == ("circuit breaker open", 5.0)
    assert (lines[2].attempt, lines[2].http_status, lines[2].detail) == (1, 503, "HTTP 503")
    assert (lines[4].attempt, lines[4].http_status, lines[4].detail) == (2, 201, "queued SMS")


def test_an_attempt_without_an_answer_of_an_ambiguous_run_is_marked_as_possibly_run() -> None:
    interrupted = Step(at=1001, status=RunStatus.FAILED, attempt=1, error="worker stopped", retry_in_s=0)
    refused = Step(
        at=1002, status=RunStatus.FAILED, attempt=2, http_status=500, error="HTTP 500", retry_in_s=1
    )
    outcome = run(RunStatus.FAILED, interrupted, refused, attempts=2, ambiguous=True)
    assert kinds(outcome) == [StepKind.QUEUED, StepKind.AMBIGUOUS, StepKind.ATTEMPT_FAILED]
    assert kinds(run(RunStatus.FAILED, interrupted, attempts=1)) == [StepKind.QUEUED, StepKind.ATTEMPT_FAILED]


def test_a_dead_letter_replayed_and_purged_reads_so() -> None:
    outcome = run(
        RunStatus.DEAD_LETTERED,
        Step(at=1001, status=RunStatus.DEAD_LETTERED, attempt=1, error="HTTP 404"),
        Step(at=1100, status=RunStatus.QUEUED, note="replayed"),
        Step(at=1101, status=RunStatus.DEAD_LETTERED, attempt=2, error="HTTP 404"),
        Step(at=1200, status=RunStatus.DEAD_LETTERED, note="purged"),
        attempts=2,
    )
    assert kinds(outcome) == [
        StepKind.QUEUED, StepKind.DEAD_LETTERED, StepKind.REPLAYED, StepKind.DEAD_LETTERED, StepKind.PURGED,
    ]  # fmt: skip


def test_a_route_the_ingress_could_not_map_starts_as_a_dead_letter_with_its_reason() -> None:
    reason = "required payload key 'to': path 'phone' found no value"
    unmapped = run(RunStatus.DEAD_LETTERED, last_error=reason)
    [line] = timeline(EVENT, unmapped)
    assert (line.kind, line.at, line.detail) == (StepKind.DEAD_LETTERED, EVENT.received_at, reason)
    # Replayed while still unmappable: the replay's step records no attempt.
    still = Step(
        at=1100,
        status=RunStatus.DEAD_LETTERED,
        error=reason,
        note=f"replay: still cannot be mapped: {reason}",
    )
    lines = timeline(EVENT, run(RunStatus.DEAD_LETTERED, still, last_error=reason))
    assert lines[1].detail == f"replay: still cannot be mapped: {reason}"
    assert kinds(run(RunStatus.DEAD_LETTERED, still, last_error=reason)) == [
        StepKind.DEAD_LETTERED, StepKind.DEAD_LETTERED,
    ]  # fmt: skip


def test_every_run_status_a_history_can_hold_has_its_own_timeline_line_and_label() -> None:
    from relay.ingress.console.events import STEP_LABELS

    for status in RunStatus:
        step = Step(at=1001, status=status, note=f"a {status.value} step")
        [_queued, line] = timeline(EVENT, run(status, step))
        assert line.detail == f"a {status.value} step" or status is RunStatus.SUCCEEDED
        assert line.kind in STEP_LABELS
    held = run(RunStatus.HELD, Step(at=1001, status=RunStatus.HELD, note="quiet hours"))
    suppressed = run(RunStatus.SUPPRESSED, Step(at=1001, status=RunStatus.SUPPRESSED, note="over the cap"))
    assert kinds(held)[-1] is StepKind.HELD
    assert kinds(suppressed)[-1] is StepKind.SUPPRESSED
