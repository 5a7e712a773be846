"""Due runs back into the queue: every worker promotes RQ's scheduled registry, and none holds a lock.

Retries, rate-limit holds and breaker pauses wait in RQ's ``ScheduledJobRegistry`` (a sorted set scored by
due time), which rq-dashboard shows as "scheduled". RQ moves due jobs to the queue from one scheduler that
holds a lock for ``interval + 60`` s; the others look for that lock every 120 s, so SIGKILL of the holder
left due retries waiting 63 s on this machine. Here every worker process runs one Lua script about twice a
second: it moves whatever is due, atomically, so two workers never move one job twice and a dead worker
never holds anything up. No library does this: RQ's own ``enqueue_scheduled_jobs`` reads, then writes, and
is safe only under its lock.

The script writes what RQ's scheduler writes for a job of the relay (status ``queued``, ``enqueued_at``, the
queue's list and set of queues) and refreshes RQ's scheduler lock under the relay's name, so a stock
``rq worker --with-scheduler`` on the same queue stays out instead of moving jobs a second time. A test
compares the job, registry and queue this leaves with what RQ's scheduler leaves.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from redis import Redis
from rq import Queue
from rq.job import Job
from rq.scheduler import RQScheduler
from rq.utils import now, utcformat

PROMOTER_NAME = "relay-due-promoter"  # the holder RQ's scheduler lock names while relay workers run
PROMOTE_INTERVAL_S = 0.5
MAX_PER_PASS = 1000
_LOCK_TTL_S = 10

# KEYS: the scheduled registry, the queue, RQ's set of queues, RQ's scheduler lock.
# ARGV: now (epoch s, float), enqueued_at as RQ writes it, the job key prefix, the queue key, max jobs,
# the lock's holder and ttl. Returns the ids moved.
_PROMOTE = """
redis.call('SET', KEYS[4], ARGV[6], 'EX', ARGV[7])
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, ARGV[5])
local moved = {}
for _, id in ipairs(due) do
    redis.call('ZREM', KEYS[1], id)
    local job_key = ARGV[3] .. id
    if redis.call('EXISTS', job_key) == 1 then
        redis.call('HSET', job_key, 'status', 'queued', 'enqueued_at', ARGV[2])
        redis.call('RPUSH', KEYS[2], id)
        table.insert(moved, id)
    end
end
if #moved > 0 then
    redis.call('SADD', KEYS[3], ARGV[4])
end
return moved
"""


class DuePromoter:
    """Moves the due runs of one queue from RQ's scheduled registry to the queue; safe from any process."""

    def __init__(self, redis: Redis, queue: Queue, clock: Callable[[], float] = time.time) -> None:
        self.queue = queue
        self.clock = clock  # Settings.now: a test's worker that lives in the future promotes by it
        self.registry = queue.scheduled_job_registry
        self._keys = [
            self.registry.key,
            queue.key,
            queue.redis_queues_keys,
            RQScheduler.get_locking_key(queue.name),
        ]
        self._script = redis.register_script(_PROMOTE)

    def promote(self, max_jobs: int = MAX_PER_PASS) -> list[str]:
        """Queue every run now due (up to ``max_jobs``); the ids of the jobs moved."""
        args = [
            self.clock(),
            utcformat(now()),
            Job.redis_job_namespace_prefix,
            self.queue.key,
            max_jobs,
            PROMOTER_NAME,
            _LOCK_TTL_S,
        ]
        reply = self._script(keys=self._keys, args=args)
        return [job_id.decode() for job_id in reply]
