"""Connections to Redis as it is deployed: one place builds every client the relay uses.

``RELAY_REDIS_URL`` may be ``redis://``, ``rediss://`` (TLS) or ``unix://``; the ``RELAY_REDIS_TLS_*``
settings tune TLS, and ``RELAY_REDIS_SENTINELS`` with ``RELAY_REDIS_SENTINEL_MASTER`` finds the master
through Redis Sentinel. Callers never build a client from the URL themselves.

With Sentinel, the URL's host and port are not used: its scheme (``rediss`` for TLS), username, password,
db and query options apply to the master, found by name through the Sentinels. ``rediss`` and the TLS
settings apply to the Sentinels too; ``RELAY_REDIS_SENTINEL_PASSWORD`` is the Sentinels' own password.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, cast
from urllib.parse import parse_qsl, urlencode, urlsplit

import redis.asyncio
import redis.asyncio.sentinel
import redis.sentinel
from redis import BlockingConnectionPool, ConnectionPool, Redis
from redis.backoff import NoBackoff
from redis.connection import SSLConnection, parse_url
from redis.exceptions import RedisError
from redis.retry import Retry

from relay.errors import RedisUnavailable
from relay.redis_settings import parse_host_port
from relay.settings import Settings

STARTUP_TIMEOUT_S = 5.0
_MASK = "***"
# What of a caller's options the Sentinels get too (redis-py's own default when sentinel_kwargs is unset).
_SENTINEL_OPTIONS = ("socket_", "retry")


class SentinelManagedConnection(redis.sentinel.SentinelManagedConnection):
    """redis-py's connection to a master found through Sentinel, but one that disconnects when a read is
    cut short, as every other redis-py connection (and the asyncio one) does.

    redis-py's sync Sentinel connection turns ``disconnect_on_error`` off by default, so a read interrupted
    by an exception (RQ's warm shutdown during its BLMOVE, a job timeout's SIGALRM) went back to the pool
    with the reply still to come, and the next command read it as its own: RQ then failed to register
    the worker's death ("Wrong number of response items from pipeline execution").
    """

    def read_response(  # type: ignore[override]
        self, disable_decoding: bool = False, *, disconnect_on_error: bool = True, **kwargs: Any
    ) -> Any:
        return super().read_response(disable_decoding, disconnect_on_error=disconnect_on_error, **kwargs)


class SentinelManagedSSLConnection(SentinelManagedConnection, SSLConnection):
    """SentinelManagedConnection over TLS."""


# RQ's scheduler rebuilds its connection as ConnectionPool(connection_class=pool.connection_class,
# **pool.connection_kwargs). For a master found through Sentinel that works as it is: the kwargs hold the
# Sentinel pool's proxy, so the rebuilt connections still ask the Sentinels where the master is.


class BlockingSentinelConnectionPool(redis.sentinel.SentinelConnectionPool, BlockingConnectionPool):
    """The master's pool found through Sentinel, waiting for a free connection as BlockingConnectionPool."""


class AsyncBlockingSentinelConnectionPool(
    redis.asyncio.sentinel.SentinelConnectionPool, redis.asyncio.BlockingConnectionPool
):
    """The asyncio twin of BlockingSentinelConnectionPool."""


@dataclass(frozen=True)
class _Flavour:
    """The redis-py classes of one side: synchronous or asyncio."""

    redis: type[Any]
    pool: type[Any]
    blocking_pool: type[Any]
    sentinel: type[Any]
    sentinel_pool: type[Any]
    blocking_sentinel_pool: type[Any]
    sentinel_connection: type[Any]
    sentinel_ssl_connection: type[Any]


_SYNC = _Flavour(
    Redis,
    ConnectionPool,
    BlockingConnectionPool,
    redis.sentinel.Sentinel,
    redis.sentinel.SentinelConnectionPool,
    BlockingSentinelConnectionPool,
    SentinelManagedConnection,
    SentinelManagedSSLConnection,
)
_ASYNC = _Flavour(
    redis.asyncio.Redis,
    redis.asyncio.ConnectionPool,
    redis.asyncio.BlockingConnectionPool,
    redis.asyncio.sentinel.Sentinel,
    redis.asyncio.sentinel.SentinelConnectionPool,
    AsyncBlockingSentinelConnectionPool,
    redis.asyncio.sentinel.SentinelManagedConnection,
    redis.asyncio.sentinel.SentinelManagedSSLConnection,
)


def _masked_url(url: str) -> str:
    """The URL with its password (in the user part or a ``password=`` query option) shown as ``***``."""
    parts = urlsplit(url)
    netloc = parts.netloc
    if parts.password is not None:
        netloc = f"{parts.username or ''}:{_MASK}@{netloc.rsplit('@', 1)[1]}"
    query = parse_qsl(parts.query, keep_blank_values=True)
    masked = urlencode([(key, _MASK if key == "password" else value) for key, value in query], safe="*/:")
    return f"{parts.scheme}://{netloc}{parts.path}" + (f"?{masked}" if masked else "")


def describe_redis(settings: Settings) -> str:
    """The Redis the settings point at, for humans, without any password."""
    if not settings.redis_sentinels:
        return _masked_url(settings.redis_url)
    db = _url_options(settings.redis_url).get("db", 0)
    tls = ", TLS" if _uses_tls(settings) else ""
    via = ",".join(settings.redis_sentinels)
    return f"sentinel master {settings.redis_sentinel_master!r} via {via} (db {db}{tls})"


def _url_options(url: str) -> dict[str, Any]:
    """The connection options redis-py reads from a URL."""
    options: dict[str, Any] = parse_url(url)  # type: ignore[no-untyped-call]
    return options


def _uses_tls(settings: Settings) -> bool:
    return urlsplit(settings.redis_url).scheme == "rediss"


def tls_options(settings: Settings) -> dict[str, Any]:
    """redis-py's SSL connection options from the ``RELAY_REDIS_TLS_*`` settings (empty without TLS)."""
    if not _uses_tls(settings):
        return {}  # a plain connection takes no ssl_* options

    def path(value: object) -> str | None:
        return None if value is None else str(value)

    return {
        # "none" also turns off the hostname check (redis-py does so for CERT_NONE): a self-signed
        # certificate of managed Redis on Procfile platforms names no host the relay knows.
        "ssl_cert_reqs": settings.redis_tls_cert_reqs,
        "ssl_ca_certs": path(settings.redis_tls_ca_file),
        "ssl_certfile": path(settings.redis_tls_cert_file),
        "ssl_keyfile": path(settings.redis_tls_key_file),
    }


def _build(settings: Settings, flavour: _Flavour, blocking_pool: bool, options: dict[str, Any]) -> Any:
    """A client of ``flavour`` that owns its pool: closing the client disconnects the pool."""
    if not settings.redis_sentinels:
        pool_class = flavour.blocking_pool if blocking_pool else flavour.pool
        pool = pool_class.from_url(settings.redis_url, **tls_options(settings), **options)
        return flavour.redis.from_pool(pool)
    # The master's connection options, merged as from_url merges them: TLS, the caller's, then (winning)
    # the URL's username, password, db and query options. Its host and port are Sentinel's to find.
    tls = _uses_tls(settings)
    connection_class = flavour.sentinel_ssl_connection if tls else flavour.sentinel_connection
    master = {**tls_options(settings), **options, "connection_class": connection_class}
    master.update(
        (key, value)
        for key, value in _url_options(settings.redis_url).items()
        if key not in ("host", "port", "connection_class")
    )
    sentinel_options = {key: value for key, value in options.items() if key.startswith(_SENTINEL_OPTIONS)}
    sentinel_options.update(tls_options(settings), ssl=tls)
    if settings.redis_sentinel_password is not None:
        sentinel_options["password"] = settings.redis_sentinel_password.get_secret_value()
    sentinel = flavour.sentinel(
        [parse_host_port(address) for address in settings.redis_sentinels], sentinel_kwargs=sentinel_options
    )
    pool_class = flavour.blocking_sentinel_pool if blocking_pool else flavour.sentinel_pool
    return sentinel.master_for(settings.redis_sentinel_master, connection_pool_class=pool_class, **master)


def connect(settings: Settings, *, blocking_pool: bool = False, **options: Any) -> Redis:
    """A synchronous client; ``options`` are redis-py connection and pool options (timeouts, size).

    A ``blocking_pool`` makes a caller wait for a free connection instead of failing when all are in use.
    """
    return cast(Redis, _build(settings, _SYNC, blocking_pool, options))


def connect_async(settings: Settings, *, blocking_pool: bool = False, **options: Any) -> redis.asyncio.Redis:
    """An asyncio client; ``blocking_pool`` and ``options`` as for ``connect``."""
    return cast(redis.asyncio.Redis, _build(settings, _ASYNC, blocking_pool, options))


def check_redis(client: Redis, settings: Settings) -> None:
    """Raise RedisUnavailable, saying which Redis and why, when it does not answer PING."""
    try:
        client.ping()
    except RedisError as exc:
        raise RedisUnavailable(f"cannot reach Redis at {describe_redis(settings)}: {exc}") from None


def require_redis(settings: Settings, timeout_s: float = STARTUP_TIMEOUT_S) -> None:
    """At start-up: one PING, no retries, so that a process without its Redis stops at once, saying why."""
    client = connect(
        settings, socket_connect_timeout=timeout_s, socket_timeout=timeout_s, retry=Retry(NoBackoff(), 0)
    )
    try:
        check_redis(client, settings)
    finally:
        client.close()
