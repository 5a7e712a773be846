"""The runner sandbox: a local stand-in for Plivo's PHLO runner, for ``relay dev``, tests and benchmarks.

- ``POST /v1/account/{auth_id}/phlo/{phlo_id}/`` (slash optional), HTTP Basic auth (Auth ID, Auth Token), a
  JSON object body (empty: ``{}``): 201 ``{phlo_id, api_id, message}``, else ``{api_id, error}`` with 400,
  401, 404 or 405. Every request on this path is recorded, refused ones too; the Auth Token never is.
- ``GET /v1/phlo/{phlo_id}/``: ``{api_id, phlo_id, name, created_on}``, what plivo-python's ``phlo.get()``
  calls (401 bad credentials, 404 unknown to the account: another account's PHLO too). Not recorded.
- Control API, JSON: ``GET|DELETE /_sandbox/runs`` (``?phlo_id=`` filters), ``GET|POST|DELETE
  /_sandbox/faults``, ``GET|PUT /_sandbox/phlos`` ``{"phlo_ids": [...] | null}``, ``GET /_sandbox/health``.

A fault ``{status, count, latency_ms, retry_after, error}`` applies to the next ``count`` run requests
(default 1, null: until cleared), in the order queued and before authentication: it sleeps ``latency_ms``,
then answers ``status`` (400-599) with ``{api_id, error}`` and ``Retry-After``, or answers normally when it
has no status.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hmac
import json
import logging
import math
import pprint
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from aiohttp import BasicAuth, web
from aiohttp.typedefs import Handler

from relay.infra.serving import AppThread, start_site

logger = logging.getLogger(__name__)

SANDBOX_AUTH_ID = "MASANDBOX0000000000"
SANDBOX_AUTH_TOKEN = "sandbox-token"  # noqa: S105 - a fixed test credential, never a real one
_FAULT_FIELDS = frozenset({"status", "count", "latency_ms", "retry_after", "error"})


@dataclass(repr=False)  # no repr: it would show the tokens
class SandboxConfig:
    """What the sandbox accepts: ``credentials`` maps Auth ID to Auth Token; ``phlo_ids`` None = any id;
    ``owners`` maps a PHLO id to the one Auth ID it belongs to (404 to the others), unlisted: to all."""

    credentials: dict[str, str] = field(default_factory=lambda: {SANDBOX_AUTH_ID: SANDBOX_AUTH_TOKEN})
    phlo_ids: set[str] | None = None
    owners: dict[str, str] = field(default_factory=dict)


@dataclass
class _Fault:
    status: int | None
    remaining: int | None
    latency_ms: float
    retry_after: int | str | None
    error: str


@dataclass
class _SandboxState:
    credentials: dict[str, str]
    phlo_ids: set[str] | None
    owners: dict[str, str]
    created_on: str = field(default_factory=lambda: datetime.now(UTC).isoformat(sep=" "))
    runs: list[dict[str, Any]] = field(default_factory=list)
    faults: deque[_Fault] = field(default_factory=deque)

    def knows(self, phlo_id: str, auth_id: str | None) -> bool:
        known = self.phlo_ids is None or phlo_id in self.phlo_ids
        return known and self.owners.get(phlo_id, auth_id) == auth_id

    def authenticate(self, authorization: str | None) -> tuple[str | None, bool]:
        """The Basic user of an Authorization value (None if absent or unreadable), and if it is valid."""
        if authorization is None:
            return None, False
        try:
            auth = BasicAuth.decode(authorization)
        except ValueError:
            return None, False
        expected = self.credentials.get(auth.login)
        valid = expected is not None and hmac.compare_digest(auth.password.encode(), expected.encode())
        return auth.login, valid

    def take_fault(self) -> _Fault | None:
        """The fault that applies to this run request, if any; consumes one of its count."""
        if not self.faults:
            return None
        fault = self.faults[0]
        if fault.remaining is not None:
            fault.remaining -= 1
            if fault.remaining <= 0:
                self.faults.popleft()
        return fault


_STATE = web.AppKey("relay_sandbox_state", _SandboxState)


class _ControlError(ValueError):
    """A control API request is invalid; answered 400 with the message."""


def _error(status: int, error: str, headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response({"api_id": str(uuid.uuid4()), "error": error}, status=status, headers=headers)


def _recorded_headers(request: web.Request) -> dict[str, str]:
    """The request's headers, the Authorization value masked (the token is never stored)."""
    masked = "Basic ***" if request.headers.get("Authorization", "")[:6].lower() == "basic " else "***"
    return {
        name: masked if name.lower() == "authorization" else value for name, value in request.headers.items()
    }


def _parse_body(raw: bytes) -> tuple[Any, str | None]:
    """The parsed body (None if not JSON) and why it is refused, if it is."""
    if not raw.strip():
        return {}, None
    try:
        body = json.loads(raw)
    except ValueError:
        return None, "invalid JSON body"
    if not isinstance(body, dict):
        return body, "the request body must be a JSON object"
    return body, None


def _run_message(api_id: str) -> str:
    """A message shaped like the one Plivo answers when the Start node sends an SMS."""
    sms = {"api_id": str(uuid.uuid4()), "message": "message(s) queued", "message_uuid": [str(uuid.uuid4())]}
    return (
        f"b'Start' - b'Send SMS' with phlo_run_uuid: {api_id} executed with response: {pprint.pformat(sms)}"
    )


async def _run_phlo(request: web.Request) -> web.Response:
    state, phlo_id, received_at = request.app[_STATE], request.match_info["phlo_id"], time.time()
    raw = await request.read()
    body, body_error = _parse_body(raw)
    auth_id, authenticated = state.authenticate(request.headers.get("Authorization"))
    record: dict[str, Any] = {"method": request.method, "path": request.path, "phlo_id": phlo_id}
    record.update(auth_id=auth_id, headers=_recorded_headers(request), body=body, status=None)
    record.update(raw_body=raw.decode("utf-8", "replace"), api_id=None, error=None, received_at=received_at)
    peer = request.transport.get_extra_info("peername") if request.transport else None
    record["client_port"] = peer[1] if peer else None  # shows whether a client reuses its connection
    state.runs.append(record)
    fault = state.take_fault() if request.method == "POST" else None
    if fault is not None and fault.latency_ms > 0:
        await asyncio.sleep(fault.latency_ms / 1000)

    headers: dict[str, str] = {}
    if request.method != "POST":
        status, error, headers = 405, f"method {request.method} not allowed, use POST", {"Allow": "POST"}
    elif fault is not None and fault.status is not None:
        status, error = fault.status, fault.error
        if fault.retry_after is not None:
            headers = {"Retry-After": str(fault.retry_after)}
    elif not authenticated or auth_id != request.match_info["auth_id"]:
        status, error = 401, "authentication failed"
    elif not state.knows(phlo_id, auth_id):
        status, error = 404, f"PHLO not found: {phlo_id}"
    elif body_error is not None:
        status, error = 400, body_error
    else:
        api_id = str(uuid.uuid4())
        record.update(status=201, api_id=api_id)
        answer = {"phlo_id": phlo_id, "api_id": api_id, "message": _run_message(api_id)}
        return web.json_response(answer, status=201)
    record.update(status=status, error=error)
    return _error(status, error, headers)


async def _get_phlo(request: web.Request) -> web.Response:
    state, phlo_id = request.app[_STATE], request.match_info["phlo_id"]
    auth_id, authenticated = state.authenticate(request.headers.get("Authorization"))
    if not authenticated:
        return _error(401, "authentication failed")
    if not state.knows(phlo_id, auth_id):
        return _error(404, f"PHLO not found: {phlo_id}")
    body = {"api_id": str(uuid.uuid4()), "phlo_id": phlo_id, "name": f"sandbox PHLO {phlo_id}"}
    return web.json_response({**body, "created_on": state.created_on})


async def _json_object(request: web.Request) -> dict[str, Any]:
    try:
        data = json.loads(await request.read())
    except ValueError:
        raise _ControlError("the body must be JSON") from None
    if not isinstance(data, dict):
        raise _ControlError("the body must be a JSON object")
    return data


def _int_in(value: object, low: int, high: float = math.inf) -> bool:
    return type(value) is int and low <= value <= high


def _parse_fault(data: dict[str, Any]) -> _Fault:
    status, count, latency_ms = data.get("status"), data.get("count", 1), data.get("latency_ms") or 0
    retry_after, error = data.get("retry_after"), data.get("error") or f"sandbox fault: HTTP {status}"
    if unknown := sorted(set(data) - _FAULT_FIELDS):
        raise _ControlError(f"unknown fault fields: {', '.join(unknown)}")
    if not (status is None or _int_in(status, 400, 599)):
        raise _ControlError("status must be an HTTP status from 400 to 599, or null")
    if not (count is None or _int_in(count, 1)):
        raise _ControlError("count must be a positive integer, or null for until cleared")
    if type(latency_ms) not in (int, float) or latency_ms < 0:
        raise _ControlError("latency_ms must be a number >= 0")
    http_date = isinstance(retry_after, str) and retry_after.isprintable() and retry_after != ""
    if not (retry_after is None or _int_in(retry_after, 0) or http_date):
        raise _ControlError("retry_after must be seconds >= 0, an HTTP date, or null")
    if not isinstance(error, str):
        raise _ControlError("error must be a string")
    if status is None and latency_ms == 0:
        raise _ControlError("a fault needs a status, a latency_ms > 0, or both")
    return _Fault(status, count, latency_ms, retry_after, error)


async def _control(request: web.Request) -> web.Response:
    state, resource, method = request.app[_STATE], request.match_info["resource"], request.method
    if resource == "health" and method == "GET":
        return web.json_response({"status": "ok"})
    if resource == "runs" and method == "GET":
        phlo_id = request.query.get("phlo_id")
        runs = [run for run in state.runs if phlo_id is None or run["phlo_id"] == phlo_id]
        return web.json_response({"runs": runs, "count": len(runs)})
    if resource == "runs" and method == "DELETE":
        cleared, state.runs = len(state.runs), []
        return web.json_response({"cleared": cleared})
    if resource == "faults" and method == "GET":
        return web.json_response({"faults": [dataclasses.asdict(fault) for fault in state.faults]})
    if resource == "faults" and method == "POST":
        fault = _parse_fault(await _json_object(request))
        state.faults.append(fault)
        return web.json_response({"fault": dataclasses.asdict(fault)}, status=201)
    if resource == "faults" and method == "DELETE":
        cleared = len(state.faults)
        state.faults.clear()
        return web.json_response({"cleared": cleared})
    if resource == "phlos" and method == "PUT":
        phlo_ids = (await _json_object(request)).get("phlo_ids", ...)
        if not (phlo_ids is None or (isinstance(phlo_ids, list) and all(type(i) is str for i in phlo_ids))):
            raise _ControlError('the body must be {"phlo_ids": [strings] or null}')
        state.phlo_ids = None if phlo_ids is None else set(phlo_ids)
    if resource == "phlos" and method in ("GET", "PUT"):
        return web.json_response({"phlo_ids": None if state.phlo_ids is None else sorted(state.phlo_ids)})
    known = resource in ("health", "runs", "faults", "phlos")
    error = f"method {method} not allowed" if known else f"no such sandbox resource: {resource}"
    return web.json_response({"error": error}, status=405 if known else 404)


@web.middleware
async def _json_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Answer routing errors and invalid control requests with JSON, as the runner does."""
    try:
        return await handler(request)
    except _ControlError as exc:
        return web.json_response({"error": str(exc)}, status=400)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        allow = {"Allow": exc.headers["Allow"]} if "Allow" in exc.headers else None
        return _error(exc.status, exc.reason, allow)


def create_sandbox_app(config: SandboxConfig) -> web.Application:
    """The sandbox's aiohttp application; its state starts from ``config`` (copied, never mutated)."""
    app = web.Application(middlewares=[_json_errors])
    phlo_ids = None if config.phlo_ids is None else set(config.phlo_ids)
    credentials, owners = dict(config.credentials), dict(config.owners)
    app[_STATE] = _SandboxState(credentials=credentials, phlo_ids=phlo_ids, owners=owners)
    for suffix in ("", "/"):
        app.router.add_route("*", "/v1/account/{auth_id}/phlo/{phlo_id}" + suffix, _run_phlo)
        app.router.add_get("/v1/phlo/{phlo_id}" + suffix, _get_phlo)
    app.router.add_route("*", "/_sandbox/{resource}", _control)
    return app


async def serve_sandbox(config: SandboxConfig, host: str, port: int) -> None:
    """Serve the sandbox on ``host:port`` (0: a free port, logged) until cancelled."""
    runner, bound_port = await start_site(create_sandbox_app(config), host, port)
    try:
        auth_ids = ", ".join(sorted(config.credentials))
        logger.info("runner sandbox serving on http://%s:%d (auth ids: %s)", host, bound_port, auth_ids)
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()


class SandboxThread(AppThread):
    """A sandbox on 127.0.0.1 and a free port, in a background thread with its own event loop.

    ``with SandboxThread() as sandbox: httpx.post(f"{sandbox.url}/v1/account/...", ...)``
    """

    def __init__(self, config: SandboxConfig | None = None, *, startup_timeout_s: float = 10.0) -> None:
        self.config = config if config is not None else SandboxConfig()
        super().__init__(lambda: create_sandbox_app(self.config), startup_timeout_s=startup_timeout_s)
