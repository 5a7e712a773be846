"""Security tests: forged and replayed signatures of every scheme, XML attacks, oversized and slow bodies,
path tricks in source names and the admin token, against the real ingress and the suite's real Redis.

Every refusal must be a 4xx with a JSON reason that shows no secret, and store nothing.
"""

from __future__ import annotations

import http.client
import json
import select
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from redis import Redis

from relay.config import RelayConfig
from relay.ingress import create_app
from relay.redis_server import free_port
from relay.serving import AppThread
from relay.settings import Settings
from tests.conftest import answers, clean_environment, poll, watch_secrets
from tests.test_delivery import FORM

QUERY_TOKEN = "query-token-4c9e1d7b-only-in-urls"
watch_secrets(QUERY_TOKEN)

# -- oversized and slow bodies (a real server, a real socket) ------------------------------------------


def read_answer(sock: socket.socket) -> tuple[int, dict[str, Any]]:
    """The status and JSON body of an HTTP answer on a blocking socket."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"the server closed the connection without answering: {data!r}"
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {
        name.strip().lower(): value.strip() for name, _, value in (line.partition(":") for line in lines[1:])
    }
    while len(body) < int(headers["content-length"]):
        chunk = sock.recv(65536)
        assert chunk, "the server closed the connection in the middle of its answer"
        body += chunk
    assert headers["content-type"].startswith("application/json")
    return int(lines[0].split()[1]), json.loads(body)


def request_head(path: str, content_length: int | None = None, chunked: bool = False) -> bytes:
    length = f"Content-Length: {content_length}\r\n" if content_length is not None else ""
    encoding = "Transfer-Encoding: chunked\r\n" if chunked else ""
    return (
        f"POST {path} HTTP/1.1\r\nHost: relay\r\nContent-Type: application/json\r\n{length}{encoding}\r\n"
    ).encode()


@pytest.fixture
def small_ingress(settings: Settings, config: RelayConfig) -> Iterator[AppThread]:
    """The ingress on a real port, with a 2 KiB body limit and a read timeout of half a second."""
    tight = settings.model_copy(update={"max_body_bytes": 2048, "body_read_timeout_s": 0.5})
    with AppThread(lambda: create_app(tight, config, environ={})) as app:
        yield app


def still_serves(app: AppThread) -> None:
    response = httpx.post(f"{app.url}/hooks/website-form", json=FORM, timeout=10)
    assert response.status_code == 202, response.text


def test_a_slow_drip_body_is_cut_off_with_408(small_ingress: AppThread, redis: Redis) -> None:
    """A sender dripping a byte every 0.1 s never trips a per-read timeout; the whole body's deadline does."""
    with socket.create_connection((small_ingress.host, small_ingress.port), timeout=10) as sock:
        sock.sendall(request_head("/hooks/website-form", content_length=1000))
        body = json.dumps({**FORM, "padding": "x" * 1000}).encode()
        for byte in body[:100]:  # 10 s of drip at most: far beyond the timeout
            readable, _, _ = select.select([sock], [], [], 0.1)
            if readable:
                break
            sock.sendall(bytes([byte]))
        else:
            pytest.fail("the ingress kept reading a body dripped for 10 s")
        status, answer = read_answer(sock)
    assert status == 408
    assert answer == {"error": "request_timeout", "message": "the body did not arrive within 0.5 s"}
    assert redis.dbsize() == 0
    still_serves(small_ingress)


# -- no secret in a log line of the real server ---------------------------------------------------------


def test_relay_serve_logs_no_query_string_where_a_token_may_be(settings: Settings, tmp_path: Path) -> None:
    """Regression: aiohttp's access log wrote the request line whole, so `relay serve` logged the token of
    every Jotform, Zoho and Salesforce request (?token=...) at INFO."""
    config = tmp_path / "query-token.yaml"
    config.write_text(
        "sources:\n  jotform:\n    verify: {scheme: token, query: token, secrets: [JOTFORM_TOKEN]}\n"
    )
    port = free_port()
    env = clean_environment(
        **{
            **settings.as_environment(),
            "RELAY_PORT": str(port),
            "RELAY_CONFIG_PATH": str(config),
            "JOTFORM_TOKEN": QUERY_TOKEN,
        }
    )
    log_path = tmp_path / "serve.log"
    with log_path.open("wb") as log:
        serve = subprocess.Popen([sys.executable, "-m", "relay", "serve"], env=env, cwd=tmp_path, stderr=log)
        try:
            poll(lambda: answers(f"http://127.0.0.1:{port}/events/none"))
            for token in (QUERY_TOKEN, QUERY_TOKEN[:-1]):  # http.client: httpx itself logs the URL
                connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
                headers = {"Content-Type": "application/json"}
                connection.request("POST", f"/hooks/jotform?token={token}&x=1", b'{"id": 1}', headers)
                response = connection.getresponse()
                assert response.status in (200, 401)
                assert QUERY_TOKEN[:-1].encode() not in response.read()
                connection.close()
        finally:
            serve.terminate()
            serve.wait(timeout=30)
    lines = log_path.read_text(errors="replace")
    assert '"POST /hooks/jotform HTTP/1.1" 200' in lines and '"POST /hooks/jotform HTTP/1.1" 401' in lines
    assert QUERY_TOKEN[:-1] not in lines
