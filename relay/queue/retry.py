"""When a failed run is tried again: full-jitter backoff, Retry-After as a floor, limits of attempts and age.

The policy is resolved when a run is queued (settings, then the route's overrides) and travels with the job,
so workers need no config. ``next_attempt`` is the decision after a failed attempt: retry in so many seconds,
or give up with a typed reason (the dead-letter metric's label) and the words the run's error gets. Retries
wait in RQ's scheduled registry, never slept in a worker, until a worker moves them (``relay.queue.due``).
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass, replace
from typing import Any

from relay.infra.metrics import DeadLetterReason
from relay.mapping.config import RetryOverride
from relay.settings import Settings


@dataclass(frozen=True)
class RetryPolicy:
    """The limits of one run. ``attempts_before`` counts attempts made before the last replay."""

    attempts: int
    base_delay_s: float
    max_delay_s: float
    deadline_at: float  # epoch seconds; no attempt is scheduled after it
    attempts_before: int = 0

    @classmethod
    def resolve(cls, settings: Settings, override: RetryOverride | None, start_at: float) -> RetryPolicy:
        """The policy of a run queued at ``start_at``: the route's overrides over the settings."""
        given = override or RetryOverride()
        return cls(
            attempts=given.attempts or settings.run_attempts,
            base_delay_s=settings.retry_base_delay_s if given.base_delay_s is None else given.base_delay_s,
            max_delay_s=settings.retry_max_delay_s if given.max_delay_s is None else given.max_delay_s,
            deadline_at=start_at + (given.max_age_s or settings.run_max_age_s),
        )

    def as_job_kwarg(self) -> dict[str, Any]:
        """The policy as it is stored in the job (JSON)."""
        # Spelled out: dataclasses.asdict deep-copies, and this runs for every run the ingress queues.
        return {
            "attempts": self.attempts,
            "base_delay_s": self.base_delay_s,
            "max_delay_s": self.max_delay_s,
            "deadline_at": self.deadline_at,
            "attempts_before": self.attempts_before,
        }

    @classmethod
    def from_job_kwarg(cls, raw: dict[str, Any]) -> RetryPolicy:
        return cls(**raw)

    def held_for(self, held_s: float) -> RetryPolicy:
        """The policy of a run held ``held_s`` by pauses: that time is not spent of its maximum age."""
        return replace(self, deadline_at=self.deadline_at + held_s) if held_s > 0 else self

    @classmethod
    def of_job(cls, raw: dict[str, Any] | None, settings: Settings) -> RetryPolicy:
        """The policy a job carries; a job queued without one gets the settings' policy from now."""
        return cls.from_job_kwarg(raw) if raw else cls.resolve(settings, None, time.time())


@dataclass(frozen=True)
class RetryIn:
    """Try the run again in ``delay_s``."""

    delay_s: float


@dataclass(frozen=True)
class GiveUp:
    """No further attempt: the run is dead-lettered for ``reason``; ``why`` is what its error adds."""

    reason: DeadLetterReason
    why: str


def backoff_s(policy: RetryPolicy, attempt: int, rng: random.Random | None = None) -> float:
    """Full jitter: a random delay up to ``base * 2^(attempt-1)``, capped (AWS's "full jitter")."""
    ceiling = min(policy.max_delay_s, policy.base_delay_s * 2 ** max(attempt - 1, 0))
    return (rng or random).uniform(0, ceiling)


def next_attempt(
    policy: RetryPolicy,
    attempts_made: int,
    now: float,
    retry_after_s: float | None = None,
    *,
    permanent: bool = False,
) -> RetryIn | GiveUp:
    """After a failed attempt: when to try again, or why not. ``permanent``: the runner refused the run."""
    if permanent:
        return GiveUp(DeadLetterReason.REJECTED, "the runner refused it; retrying cannot help")
    if attempts_made - policy.attempts_before >= policy.attempts:
        return GiveUp(DeadLetterReason.ATTEMPTS, f"no attempts left ({policy.attempts} made)")
    delay_s = backoff_s(policy, attempts_made)
    if retry_after_s is not None:
        delay_s = max(delay_s, retry_after_s)  # the runner said when; never sooner
    if now + delay_s > policy.deadline_at:
        return GiveUp(DeadLetterReason.MAX_AGE, "its maximum age would pass before the next attempt")
    return RetryIn(delay_s)
