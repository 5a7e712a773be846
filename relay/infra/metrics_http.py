"""``relay worker``'s own ``/metrics`` port: prometheus_client's WSGI app behind the ingress's access rule.

prometheus_client's ``start_http_server`` answers anyone on every path; this serves the same app on
``/metrics`` only, behind the admin bearer token unless ``RELAY_METRICS_PUBLIC=true``, and not at all
(404) with neither (``relay.infra.access``). Its server is prometheus_client's threading WSGI server.
"""

from __future__ import annotations

import json
import logging
import socket
import threading
from collections.abc import Iterable
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, make_wsgi_app
from prometheus_client.exposition import ThreadingWSGIServer

from relay.infra.access import Access, AdminToken, metrics_access
from relay.settings import Settings

log = logging.getLogger(__name__)
METRICS_PATH = "/metrics"
WHAT = "/metrics"


class _QuietHandler(WSGIRequestHandler):
    """No access line per scrape on stderr (prometheus_client's own server is quiet too)."""

    def log_message(self, format: str, *args: Any) -> None:
        return


def _json(start_response: Any, status: str, body: dict[str, str], *headers: tuple[str, str]) -> list[bytes]:
    data = json.dumps(body).encode()
    start_response(status, [("Content-Type", "application/json; charset=utf-8"), *headers])
    return [data]


def guarded_metrics_app(registry: CollectorRegistry, settings: Settings) -> Any:
    """The WSGI app: the registry's metrics on ``/metrics`` to whom the settings allow; JSON 401 or 404."""
    access, token = metrics_access(settings), AdminToken(settings.admin_token)
    metrics = make_wsgi_app(registry)

    def app(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        if access is Access.OFF or environ.get("PATH_INFO") != METRICS_PATH:
            return _json(start_response, "404 Not Found", {"error": "not_found", "message": "no such path"})
        if access is Access.BEARER:
            # WSGI hands headers over as latin-1 text: back to the bytes sent, read as aiohttp reads them.
            header = environ.get("HTTP_AUTHORIZATION", "").encode("latin-1")
            refusal = token.refusal(header.decode("utf-8", "surrogateescape"), WHAT)
            if refusal is not None:
                if refusal.wrong_token:
                    log.warning("%s: wrong bearer token from %s", WHAT, environ.get("REMOTE_ADDR"))
                body = {"error": refusal.code, "message": refusal.message}
                challenge = ("WWW-Authenticate", refusal.challenge)
                return _json(start_response, "401 Unauthorized", body, challenge)
        result: Iterable[bytes] = metrics(environ, start_response)
        return result

    return app


def start_metrics_server(port: int, host: str, registry: CollectorRegistry, settings: Settings) -> WSGIServer:
    """Serve ``guarded_metrics_app`` from a daemon thread; the server (``server_port``, ``shutdown()``)."""
    if metrics_access(settings) is Access.OFF:
        log.warning(
            "RELAY_WORKER_METRICS_PORT is set but /metrics answers 404 there: set RELAY_ADMIN_TOKEN (and "
            "give it to Prometheus as a bearer token) or RELAY_METRICS_PUBLIC=true on a private network"
        )

    class Server(ThreadingWSGIServer):
        # An IPv6 host (e.g. ``::``) needs an IPv6 socket; the class attribute is what socketserver reads.
        address_family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]

    app = guarded_metrics_app(registry, settings)
    server = make_server(host, port, app, Server, handler_class=_QuietHandler)
    threading.Thread(target=server.serve_forever, name="relay-metrics", daemon=True).start()
    return server
