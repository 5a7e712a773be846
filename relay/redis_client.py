"""Connections to Redis as it is deployed: one place builds every client the relay uses.

``RELAY_REDIS_URL`` may be ``redis://``, ``rediss://`` (TLS) or ``unix://``; the ``RELAY_REDIS_TLS_*``
settings tune TLS, and ``RELAY_REDIS_SENTINELS`` with ``RELAY_REDIS_SENTINEL_MASTER`` finds the master
through Redis Sentinel. Callers never build a client from the URL themselves.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit, urlunsplit

import redis.asyncio
from redis import BlockingConnectionPool, ConnectionPool, Redis
from redis.exceptions import RedisError

from relay.errors import RedisUnavailable
from relay.settings import Settings


def describe_redis(settings: Settings) -> str:
    """The Redis the settings point at, for humans: the URL without its password."""
    parts = urlsplit(settings.redis_url)
    if parts.password is None:
        return settings.redis_url
    netloc = parts.netloc.rsplit("@", 1)[1]
    user = f"{parts.username}:***@" if parts.username else ":***@"
    return urlunsplit(parts._replace(netloc=user + netloc))


def connect(settings: Settings, *, blocking_pool: bool = False, **options: Any) -> Redis:
    """A synchronous client; ``options`` are redis-py connection and pool options (timeouts, size).

    A ``blocking_pool`` makes a caller wait for a free connection instead of failing when all are in use.
    """
    pool_class = BlockingConnectionPool if blocking_pool else ConnectionPool
    client = Redis(connection_pool=pool_class.from_url(settings.redis_url, **options))
    client.auto_close_connection_pool = True  # close() disconnects the pool built here
    return client


def connect_async(settings: Settings, **options: Any) -> redis.asyncio.Redis:
    """An asyncio client for the ingress; ``options`` as for ``connect``."""
    return redis.asyncio.Redis.from_url(settings.redis_url, **options)


def check_redis(client: Redis, settings: Settings) -> None:
    """Raise RedisUnavailable, saying which Redis and why, when it does not answer PING."""
    try:
        client.ping()
    except RedisError as exc:
        raise RedisUnavailable(f"cannot reach Redis at {describe_redis(settings)}: {exc}") from None
