"""The baselines the relay is measured against, each run like the relay: its own process, access log off.

    python -m bench.baselines bare PORT             read the body, answer 202: the ceiling of aiohttp here
    python -m bench.baselines naive PORT REDIS_URL  no verification, RQ ``Queue.enqueue`` per request

Both use aiohttp's ``web.run_app`` with asyncio's default event loop, as ``relay serve`` does; if the relay
moves to another loop (uvloop), these must follow or the ratio compares loops rather than handlers.
``noop`` is the job of the stock-RQ delivery baseline.
"""

from __future__ import annotations

import argparse
import asyncio
import json
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from aiohttp import web
from redis import Redis
from rq import Queue
from rq.serializers import JSONSerializer

NAIVE_QUEUE = "bench-naive"
NOOP_QUEUE = "bench-noop"
NOOP_FUNC = "bench.baselines.noop"
THREADS = 32  # as many as the relay's Redis thread pool
_QUEUE = web.AppKey("queue", Queue)
_EXECUTOR = web.AppKey("executor", ThreadPoolExecutor)


def noop(**kwargs: Any) -> None:
    """The job of the stock-RQ baselines: does nothing, so that only RQ's own work is measured."""


async def _bare(request: web.Request) -> web.Response:
    await request.read()
    return web.json_response({"status": "accepted"}, status=202)


async def _naive(request: web.Request) -> web.Response:
    document = json.loads(await request.read())
    queue = request.app[_QUEUE]
    await asyncio.get_running_loop().run_in_executor(
        request.app[_EXECUTOR], lambda: queue.enqueue(NOOP_FUNC, document=document)
    )
    return web.json_response({"status": "accepted"}, status=202)


def bare_app() -> web.Application:
    app = web.Application()
    app.router.add_post("/hooks/{source}", _bare)
    return app


def naive_app(redis_url: str) -> web.Application:
    app = web.Application()

    async def connections(app: web.Application) -> AsyncIterator[None]:
        redis = Redis.from_url(redis_url, max_connections=2 * THREADS)
        app[_QUEUE] = Queue(NAIVE_QUEUE, connection=redis, serializer=JSONSerializer)
        app[_EXECUTOR] = ThreadPoolExecutor(THREADS)
        yield
        app[_EXECUTOR].shutdown(wait=True)
        redis.close()

    app.cleanup_ctx.append(connections)
    app.router.add_post("/hooks/{source}", _naive)
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("kind", choices=["bare", "naive"])
    parser.add_argument("port", type=int)
    parser.add_argument("redis_url", nargs="?")
    args = parser.parse_args()
    if args.kind == "naive" and not args.redis_url:
        parser.error("naive needs REDIS_URL")
    app = bare_app() if args.kind == "bare" else naive_app(args.redis_url)
    web.run_app(app, host="127.0.0.1", port=args.port, access_log=None, print=None)


if __name__ == "__main__":
    main()
