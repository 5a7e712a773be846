"""What the ingress app holds, shared by every handler: its settings, config, connections and metrics.

Its own module so that the handlers (``hooks``, ``admin``, ``health``) and the ``middleware`` read the app's
state without importing ``app``, which imports them to register their routes.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

from aiohttp import web
from redis import Redis

from relay.infra.metrics import RelayMetrics
from relay.ingress.verify import SourceVerifier
from relay.mapping.config import RelayConfig
from relay.mapping.version import ConfigVersion
from relay.queue.stats import EventCounter
from relay.queue.store import EventStore
from relay.settings import Settings

T = TypeVar("T")


@dataclass
class Readiness:
    """Whether the ingress is draining after SIGTERM (``/readyz`` then answers 503), and its requests."""

    draining: bool = False
    in_flight: int = 0

    async def until_idle(self) -> None:
        """Return once no request is being handled (the caller bounds the wait)."""
        while self.in_flight:  # noqa: ASYNC110 - polled: an Event per request would cost every request
            await asyncio.sleep(0.05)


@dataclass(frozen=True)
class LiveConfig:
    """A validated config with what is derived from it: replaced whole on a reload, never changed."""

    config: RelayConfig
    verifiers: dict[str, SourceVerifier]
    version: ConfigVersion


@dataclass
class ConfigSlot:
    """The config in force. A reload replaces ``current`` in one assignment; a handler reads it once, so a
    request finishes with the config it started with."""

    current: LiveConfig
    reloading: asyncio.Lock


SETTINGS = web.AppKey("settings", Settings)
CONFIG = web.AppKey("config", ConfigSlot)
REDIS = web.AppKey("redis", Redis)
EXECUTOR = web.AppKey("executor", ThreadPoolExecutor)
STORE = web.AppKey("store", EventStore)
METRICS = web.AppKey("metrics", RelayMetrics)
READINESS = web.AppKey("readiness", Readiness)
STATS = web.AppKey("stats", EventCounter)  # the console's counts of events


async def in_thread(request: web.Request, func: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Run blocking Redis work on the app's thread pool, in the request's context (its log fields)."""
    loop = asyncio.get_running_loop()
    # run_in_executor does not carry contextvars over to the thread, as asyncio.to_thread does.
    work = functools.partial(contextvars.copy_context().run, func, *args, **kwargs)
    return await loop.run_in_executor(request.app[EXECUTOR], work)
