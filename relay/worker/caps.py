"""A run's frequency caps, checked by ``deliver`` just before the run is admitted to its account's rate limit.

A run over a cap is recorded ``suppressed`` with the earlier run it collided with, and its job returns: RQ
marks it finished (its result says ``suppressed``), so it is never sent, retried or dead-lettered. A run
that fits is counted under its caps before it is sent: its retries, and RQ running its job again, pass.
"""

from __future__ import annotations

from typing import Any

from relay.queue import caps
from relay.queue.records import Collision, RunStatus
from relay.worker.context import WorkerContext
from relay.worker.runs import RunKeeper


def _result(collision: Collision) -> dict[str, Any]:
    """The finished job's result: what rq-dashboard shows of a suppressed run."""
    return {"suppressed": True, "collided_with": collision.model_dump()}


def suppressed(ctx: WorkerContext, keeper: RunKeeper, cap: dict[str, Any] | None) -> dict[str, Any] | None:
    """None when the run may go on (counted under its caps); else its job's result, the run recorded."""
    if cap is None:
        return None
    run = keeper.run
    override = bool(cap.get("override"))
    if run.status is RunStatus.SUPPRESSED and run.collided_with is not None and not override:
        return _result(run.collided_with)  # RQ ran the job again after it was recorded: the same answer
    over = caps.admit(ctx.redis, caps.scopes_of(cap), keeper.event_id, run.job_id, override=override)
    if over is None:
        return None
    scope = over.scope
    collision = Collision(
        job_id=over.job_id, event_id=over.event_id, kind=scope.kind, name=scope.name, max=scope.max,
        per_s=scope.per_s,
    )  # fmt: skip
    keeper.suppress(collision)
    return _result(collision)
