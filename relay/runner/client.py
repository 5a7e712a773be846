"""Client of Plivo's PHLO runner: one request per run, exactly as the official Python SDK sends it.

plivo-python 4.63.0 sends ``POST {base}/v1/account/{auth_id}/phlo/{phlo_id}/`` with Basic auth, JSON
content type and accept headers, its User-Agent, and the payload as ``requests`` encodes ``json=`` (keys
whose value is None dropped; ``{}`` for no payload); its ``phlo.get()`` sends
``GET {base}/v1/phlo/{phlo_id}/`` with the same auth and headers (``relay check --runner``). One
``httpx.Client`` is kept per worker process so its connection pool (and TLS sessions) survive from one job
to the next.
"""

from __future__ import annotations

import json
import platform
import time
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import quote

import httpx

from relay.errors import RunnerRejected, RunnerUnreachable
from relay.settings import PlivoAccount

# The SDK release whose request is reproduced byte for byte (see ../shared/reference/phlo-runner.md).
PLIVO_SDK_VERSION = "4.63.0"
USER_AGENT = f"plivo-python/{PLIVO_SDK_VERSION} (Python: {platform.python_version()})"
MAX_ERROR_CHARS = 500


@dataclass(frozen=True)
class RunResult:
    """A run the runner accepted."""

    phlo_run_id: str | None
    message: str | None
    status: int
    elapsed_ms: float


@dataclass(frozen=True)
class PhloInfo:
    """A PHLO as the runner describes it to ``phlo.get()``; the answer names no owning account."""

    phlo_id: str
    name: str | None
    elapsed_ms: float


def phlo_path(phlo_id: str) -> str:
    """The runner path plivo-python's ``phlo.get()`` requests, trailing slash included."""
    return f"/v1/phlo/{quote(phlo_id, safe='')}/"


def run_path(auth_id: str, phlo_id: str) -> str:
    """The runner path of a PHLO run, with the trailing slash the Python SDK sends."""
    return f"/v1/account/{quote(auth_id, safe='')}/phlo/{quote(phlo_id, safe='')}/"


def encode_payload(payload: dict[str, Any] | None) -> bytes:
    """The request body as plivo-python sends it: ``json.dumps`` defaults, None values dropped."""
    cleaned = {key: value for key, value in (payload or {}).items() if value is not None}
    return json.dumps(cleaned, allow_nan=False).encode("utf-8")


def _json_or_none(response: httpx.Response) -> dict[str, Any] | None:
    try:
        data = response.json()
    except ValueError:
        return None
    return data if isinstance(data, dict) else None


class RunnerClient:
    """Runs PHLOs over a pooled HTTP connection."""

    def __init__(
        self,
        base_url: str,
        *,
        connect_timeout_s: float,
        read_timeout_s: float,
        keepalive_connections: int = 10,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self._client = httpx.Client(
            base_url=self.base_url,
            timeout=httpx.Timeout(read_timeout_s, connect=connect_timeout_s, pool=connect_timeout_s),
            # No cap on open connections: a worker's slots cap the runs in flight, and a run its worker
            # abandoned may still hold one until its read timeout; a cap would make the next run wait.
            limits=httpx.Limits(max_connections=None, max_keepalive_connections=keepalive_connections),
            headers={
                "User-Agent": USER_AGENT,
                "Accept": "application/json",
                "Content-Type": "application/json",
            },
            follow_redirects=False,
        )

    def run(self, account: PlivoAccount, phlo_id: str, payload: dict[str, Any] | None) -> RunResult:
        """Run a PHLO; raise RunnerRejected on a non-2xx answer, RunnerUnreachable when there is none."""
        started = time.perf_counter()
        try:
            response = self._client.post(
                run_path(account.auth_id, phlo_id),
                content=encode_payload(payload),
                auth=(account.auth_id, account.auth_token.get_secret_value()),
            )
        except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout) as exc:
            raise RunnerUnreachable(f"{type(exc).__name__} to {self.base_url}", ambiguous=False) from None
        except httpx.TransportError as exc:
            # The request may have reached the runner before the read failed: the PHLO may have run.
            raise RunnerUnreachable(f"{type(exc).__name__} from {self.base_url}", ambiguous=True) from None
        elapsed_ms = (time.perf_counter() - started) * 1000
        data = _json_or_none(response)
        if response.is_success:
            api_id = (data or {}).get("api_id") or (data or {}).get("phlo_run_id")
            message = (data or {}).get("message") if data is not None else response.text[:MAX_ERROR_CHARS]
            return RunResult(
                phlo_run_id=str(api_id) if api_id else None,
                message=str(message) if message is not None else None,
                status=response.status_code,
                elapsed_ms=elapsed_ms,
            )
        raise _rejected(response, data)

    def get_phlo(self, account: PlivoAccount, phlo_id: str) -> PhloInfo:
        """Fetch a PHLO as ``phlo.get()`` does; raise RunnerRejected (401 credentials, 404 unknown to this
        account, ...) or RunnerUnreachable (never ambiguous: a GET runs nothing)."""
        started = time.perf_counter()
        try:
            response = self._client.get(
                phlo_path(phlo_id), auth=(account.auth_id, account.auth_token.get_secret_value())
            )
        except httpx.TransportError as exc:
            raise RunnerUnreachable(f"{type(exc).__name__} at {self.base_url}", ambiguous=False) from None
        data = _json_or_none(response)
        if not response.is_success:
            raise _rejected(response, data)
        name = (data or {}).get("name")
        return PhloInfo(
            phlo_id=str((data or {}).get("phlo_id") or phlo_id),
            name=str(name) if name is not None else None,
            elapsed_ms=(time.perf_counter() - started) * 1000,
        )

    def close(self) -> None:
        """Close pooled connections."""
        self._client.close()

    def __enter__(self) -> RunnerClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _rejected(response: httpx.Response, data: dict[str, Any] | None) -> RunnerRejected:
    """The error of a non-2xx answer: the runner's ``error`` (or message, or text), status, Retry-After."""
    error = (
        (data or {}).get("error") or (data or {}).get("message") or response.text or response.reason_phrase
    )
    api_id = (data or {}).get("api_id")
    return RunnerRejected(
        response.status_code,
        str(error)[:MAX_ERROR_CHARS],
        str(api_id) if api_id else None,
        retry_after_s=parse_retry_after(response.headers.get("Retry-After"), time.time()),
    )


def parse_retry_after(value: str | None, now: float) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta-seconds or an HTTP date); None if unusable."""
    if not value:
        return None
    text = value.strip()
    if text.isdigit():
        return float(text)
    try:
        when = parsedate_to_datetime(text)
    except (TypeError, ValueError):
        return None
    return max(when.timestamp() - now, 0.0) if when.tzinfo is not None else None
