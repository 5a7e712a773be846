"""Quiet hours in the worker: a run outside its route's delivery window is held until the window opens.

The job carries its window with the time zone already resolved (``relay.mapping.quiet_hours``). A held
run waits in RQ's scheduled registry, like a retry, until the window's opening plus its own offset
(``spread_offset_s``), so the runs of a night do not all wake at the same second; the account's rate limit
then spaces them as it spaces any runs. It spends no attempt. The hold is judged by ``Settings.now``, the
clock the due promoter goes by, so tests move both together.

Its maximum age: with ``past_max_age: deliver`` the time held is added to ``held_s`` and does not count
(as for pauses); with ``expire`` it counts, and a run whose window opens after its maximum age expires at
once: recorded ``expired``, counted, its job finished, never dead-lettered.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

from relay.errors import DeliveryPaused, RunHeld
from relay.mapping.windows import Window, parse_hhmm, spread_offset_s, zone_named
from relay.queue.records import RunStatus
from relay.worker.context import WorkerContext
from relay.worker.runs import RunKeeper

REASON = "quiet_hours"  # the reason label of the window metrics
RETRY_UNKNOWN_ZONE_S = 60.0


def _window(spec: dict[str, Any]) -> Window:
    zone = zone_named(spec["timezone"])
    if zone is None:  # the ingress resolved it: this worker lacks the zone data
        raise DeliveryPaused(f"time zone {spec['timezone']!r} is unknown here (is tzdata installed?)",
                             RETRY_UNKNOWN_ZONE_S)  # fmt: skip
    return Window(parse_hhmm(spec["start"]), parse_hhmm(spec["end"]), zone)


def _when(at: datetime, window: Window) -> str:
    return at.astimezone(window.zone).strftime("%Y-%m-%d %H:%M %Z")


def check_window(ctx: WorkerContext, keeper: RunKeeper, spec: dict[str, Any]) -> dict[str, Any] | None:
    """None when the run may go now; the job's result when it expired; raises RunHeld when it is held."""
    run = keeper.run
    try:
        window = _window(spec)
    except DeliveryPaused as held_back:
        keeper.pause(held_back)
        raise
    now = ctx.settings.now()
    at = datetime.fromtimestamp(now, UTC)
    if window.current(at) is not None:
        if run.status is RunStatus.HELD:
            ctx.metrics.window_released.labels(run.route, REASON).inc()
        return None
    opens, closes = window.next_interval(at)
    window_s = (closes - opens).total_seconds()
    release_at = opens.timestamp() + spread_offset_s(run.job_id, spec["spread_s"], window_s)
    delay_s = release_at - now
    offset_s = release_at - opens.timestamp()
    reason = (
        f"quiet hours: {_when(at, window)} ({spec['timezone']}, from {spec['zone_from']}) is outside "
        f"{spec['start']}-{spec['end']}; held until {_when(opens, window)} +{offset_s:.0f} s"
    )
    if spec["past_max_age"] == "expire":
        # The policy's deadline is on the wall clock; the release is on the relay's.
        if time.time() + delay_s > keeper.policy.deadline_at:
            reason = f"{reason}: after its maximum age, so it expires unsent"
            keeper.expire(reason)
            ctx.metrics.runs_expired.labels(run.route, REASON).inc()
            return {"expired": True, "reason": reason}
        changes: dict[str, Any] = {}
    else:
        changes = {"held_s": run.held_s + delay_s}  # the hold does not count against its maximum age
    if run.status is not RunStatus.HELD:
        ctx.metrics.window_held.labels(run.route, REASON).inc()
    keeper.hold_until(release_at, delay_s, reason, **changes)
    raise RunHeld(reason)
