"""The sweep that puts back the runs a worker took from the queue and died (or lost Redis) before starting.

RQ moves a job to its intermediate list as a worker takes it, and out of it as the worker starts it; RQ
itself looks at that list again only after a minute. Every relay worker sweeps it as it cleans RQ's
registries, and the Lua script below makes workers sweeping at once agree.
"""

from __future__ import annotations

from redis import Redis
from rq import Queue

from relay import keys

# KEYS: RQ's intermediate list, the queue, the relay's marks (job id: when first seen there). ARGV: seconds.
# One script, so that workers sweeping at once agree: a job goes back only once it has stayed in the list
# through every sweep for ARGV[1] seconds, and a sweep that finds it gone forgets it. (The relay's workers
# take from one queue, so RQ drops a job from the list in the step that starts it.)
_REQUEUE_STRANDED = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local here, requeued = {}, {}
for _, id in ipairs(redis.call('LRANGE', KEYS[1], 0, -1)) do here[id] = true end
local marks = redis.call('HGETALL', KEYS[3])
for i = 1, #marks, 2 do
    local id = marks[i]
    if not here[id] then
        redis.call('HDEL', KEYS[3], id)
    elseif now - tonumber(marks[i + 1]) > tonumber(ARGV[1]) then
        redis.call('LREM', KEYS[1], 1, id)
        redis.call('LPUSH', KEYS[2], id)
        redis.call('HDEL', KEYS[3], id)
        table.insert(requeued, id)
    end
    here[id] = nil
end
for id in pairs(here) do
    redis.call('HSET', KEYS[3], id, tostring(now))
end
if redis.call('EXISTS', KEYS[3]) == 1 then
    redis.call('EXPIRE', KEYS[3], 86400)
end
return requeued
"""


def requeue_stranded(redis: Redis, queue: Queue, after_s: float) -> list[str]:
    """Put back at the queue's front the jobs that stayed ``after_s`` in RQ's intermediate list, unstarted.

    RQ moves a job to that list as a worker takes it, and out of it as the worker starts it. A worker that
    dies (or loses Redis) in between strands it there; RQ looks again only after a minute, and then fails
    a job without retries left while its run still reads queued. Every worker calls this as it cleans.
    """
    keys_ = [queue.intermediate_queue.key, queue.key, keys.stranded_key(queue.name)]
    return [job_id.decode() for job_id in redis.eval(_REQUEUE_STRANDED, 3, *keys_, after_s)]
