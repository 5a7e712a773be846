"""The retry policy: full-jitter backoff with a cap, Retry-After, attempts and age limits, route overrides."""

from __future__ import annotations

import random
from email.utils import formatdate

import pytest

from relay.infra.metrics import DeadLetterReason
from relay.mapping.config import RetryOverride
from relay.queue.retry import GiveUp, RetryIn, RetryPolicy, backoff_s, next_attempt
from relay.runner.client import parse_retry_after
from relay.settings import Settings

NOW = 1_700_000_000.0
POLICY = RetryPolicy(attempts=5, base_delay_s=2.0, max_delay_s=30.0, deadline_at=NOW + 3600)


@pytest.mark.parametrize(
    ("attempt", "ceiling"), [(1, 2.0), (2, 4.0), (3, 8.0), (4, 16.0), (5, 30.0), (9, 30.0)]
)
def test_backoff_is_full_jitter_up_to_an_exponential_ceiling_with_a_cap(attempt: int, ceiling: float) -> None:
    rng = random.Random(attempt)
    delays = [backoff_s(POLICY, attempt, rng) for _ in range(2000)]
    assert all(0 <= delay <= ceiling for delay in delays)
    assert max(delays) > ceiling * 0.95  # the whole range is used: full jitter, not a fixed delay
    assert min(delays) < ceiling * 0.05


def test_retry_after_is_a_floor() -> None:
    decision = next_attempt(POLICY, attempts_made=1, now=NOW, retry_after_s=120)
    assert decision == RetryIn(120)  # beyond the cap: the runner said when


def test_attempts_are_limited_and_a_replay_gets_a_fresh_budget() -> None:
    assert isinstance(next_attempt(POLICY, attempts_made=4, now=NOW), RetryIn)
    decision = next_attempt(POLICY, attempts_made=5, now=NOW)
    assert isinstance(decision, GiveUp)
    assert decision.why == "no attempts left (5 made)"
    assert decision.reason is DeadLetterReason.ATTEMPTS
    replayed = RetryPolicy(5, 2.0, 30.0, NOW + 3600, attempts_before=5)
    assert isinstance(next_attempt(replayed, attempts_made=6, now=NOW), RetryIn)


def test_a_retry_past_the_maximum_age_is_refused() -> None:
    near_deadline = RetryPolicy(5, 2.0, 30.0, deadline_at=NOW + 10)
    decision = next_attempt(near_deadline, attempts_made=1, now=NOW, retry_after_s=60)
    assert isinstance(decision, GiveUp)
    assert "maximum age" in decision.why
    assert decision.reason is DeadLetterReason.MAX_AGE


def test_a_run_the_runner_refused_is_not_retried() -> None:
    decision = next_attempt(POLICY, attempts_made=1, now=NOW, permanent=True)
    assert decision == GiveUp(DeadLetterReason.REJECTED, "the runner refused it; retrying cannot help")


def test_route_overrides_win_over_settings() -> None:
    settings = Settings(_env_file=None, run_attempts=6, run_max_age_s=600, retry_base_delay_s=5)  # type: ignore[call-arg]
    default = RetryPolicy.resolve(settings, None, NOW)
    assert (default.attempts, default.base_delay_s, default.deadline_at) == (6, 5, NOW + 600)
    custom = RetryPolicy.resolve(settings, RetryOverride(attempts=2, max_age_s=60, base_delay_s=0), NOW)
    assert (custom.attempts, custom.base_delay_s, custom.max_delay_s) == (2, 0, settings.retry_max_delay_s)
    assert custom.deadline_at == NOW + 60
    assert RetryPolicy.from_job_kwarg(custom.as_job_kwarg()) == custom


@pytest.mark.parametrize(
    ("header", "seconds"),
    [
        ("7", 7.0),
        (" 0 ", 0.0),
        (formatdate(NOW + 30, usegmt=True), 30.0),
        (formatdate(NOW - 30, usegmt=True), 0.0),
        ("soon", None),
        ("-5", None),
        ("", None),
        (None, None),
    ],
)
def test_retry_after_header(header: str | None, seconds: float | None) -> None:
    assert parse_retry_after(header, NOW) == seconds
