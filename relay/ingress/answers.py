"""How the ingress answers: JSON bodies (orjson), the one shape of every error, and the mark that a log
line already describes a request.

Apart from ``state`` because an answer needs nothing of the app: the middleware, the handlers and the admin
API all build theirs here, so every error body reads ``{"error": code, "message": ...}``.
"""

from __future__ import annotations

from typing import Any

import orjson
from aiohttp import web

from relay.infra.logs import DESCRIBED

REFUSAL = web.ResponseKey("relay_refusal", str)  # an error answer's code, kept for the metrics


def json_response(data: Any, status: int = 200) -> web.Response:
    """A JSON answer (orjson: the answer to every webhook is serialised on the hot path)."""
    return web.json_response(data, status=status, dumps=_dumps)


def _dumps(data: Any) -> str:
    return orjson.dumps(data).decode()


def error_response(status: int, code: str, message: str) -> web.Response:
    """Every error the relay answers: a JSON body saying what is wrong."""
    response = json_response({"error": code, "message": message}, status=status)
    response[REFUSAL] = code
    return response


def described(response: web.Response) -> web.Response:
    """Mark a response whose request a log line already describes: it needs no access line."""
    response[DESCRIBED] = True
    return response
