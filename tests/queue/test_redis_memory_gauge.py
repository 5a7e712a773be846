"""The Redis memory gauges read the test's own Redis at scrape time: used_memory and maxmemory."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from redis import Redis

from relay.dev.redis_server import EmbeddedRedis
from relay.infra.metrics import REDIS_MEMORY_MAX, REDIS_MEMORY_USED, REDIS_UP
from relay.queue.gauges import scrape_registry
from relay.settings import Settings

LIMIT_BYTES = 512 * 1024 * 1024  # far above what the suite stores: no other test is refused a write


@pytest.fixture
def limited(redis: Redis) -> Iterator[Redis]:
    """The test's Redis with ``maxmemory`` set, put back as it was afterwards (the server is shared)."""
    before = str(redis.config_get("maxmemory")["maxmemory"])
    redis.config_set("maxmemory", LIMIT_BYTES)
    try:
        yield redis
    finally:
        redis.config_set("maxmemory", before)


def test_gauges_show_used_memory_and_maxmemory(limited: Redis, settings: Settings) -> None:
    registry = scrape_registry(None, lambda: limited, settings)
    assert registry.get_sample_value(REDIS_MEMORY_MAX) == LIMIT_BYTES
    used = registry.get_sample_value(REDIS_MEMORY_USED)
    assert used is not None and used > 0
    limited.set("ballast", b"x" * 4 * 1024 * 1024)  # 4 MiB more: the next scrape reads it, nothing cached
    grown = registry.get_sample_value(REDIS_MEMORY_USED)
    assert grown is not None and grown - used >= 4 * 1024 * 1024
    reported = int(limited.info("memory")["used_memory"])
    assert abs(reported - grown) < 1024 * 1024  # the same figure as INFO's (scrapes allocate a little)


def test_no_maxmemory_reads_zero(redis: Redis, settings: Settings) -> None:
    assert redis.config_get("maxmemory") == {"maxmemory": "0"}
    registry = scrape_registry(None, lambda: redis, settings)
    assert registry.get_sample_value(REDIS_MEMORY_MAX) == 0
    assert (registry.get_sample_value(REDIS_MEMORY_USED) or 0) > 0


def test_a_redis_that_refuses_info_leaves_only_the_memory_gauges_out(
    redis: Redis, redis_server: EmbeddedRedis, settings: Settings
) -> None:
    """A managed Redis may refuse INFO (an ACL without it here): the queue's gauges stay, memory's go."""
    redis.acl_setuser("no-info", enabled=True, passwords=["+no-info-pass-4d1c"], keys=["*"],
                      commands=["+@all", "-info"], channels=["*"])  # fmt: skip
    try:
        restricted = Redis.from_url(redis_server.url, username="no-info", password="no-info-pass-4d1c")
        registry = scrape_registry(None, lambda: restricted, settings)
        assert registry.get_sample_value(REDIS_UP) == 1
        assert registry.get_sample_value(REDIS_MEMORY_USED) is None
        assert registry.get_sample_value(REDIS_MEMORY_MAX) is None
        restricted.close()
    finally:
        redis.acl_deluser("no-info")
