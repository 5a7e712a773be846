"""The benchmark's webhook: a website-form-like source signed with the relay's generic ``hmac`` scheme.

Every request carries a unique event id, so that none is answered as a duplicate, and is signed with
HMAC-SHA256 of the body (hex in ``X-Signature``), so that the ingress verifies every one. Bodies are signed
here in Python beforehand: wrk's LuaJIT has no HMAC.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

SOURCE = "bench-form"
SECRET_VARIABLE = "BENCH_SECRET"  # noqa: S105 - the name of the variable, not a secret
SIGNATURE_HEADER = "X-Signature"
PHLO_ID = "8f0a6c2e-1d4b-4c5e-9a7b-3e2f1d0c9b8a"
ROUTE = "callback"
HOOK_PATH = f"/hooks/{SOURCE}"

# One route per event: every accepted webhook is exactly one PHLO run. `ref` carries the event id into the
# runner's payload, so that a run the sandbox receives can be matched to the webhook that caused it.
CONFIG = f"""
sources:
  {SOURCE}:
    verify:
      scheme: hmac
      header: {SIGNATURE_HEADER}
      algorithm: sha256
      encoding: hex
      secrets: [{SECRET_VARIABLE}]
    event_id: {{path: submission_id}}
    event_type: {{path: form}}
routes:
  - name: {ROUTE}
    source: {SOURCE}
    events: [callback-request]
    phlo_id: {PHLO_ID}
    payload:
      from: "+14155550100"
      to: {{path: phone, required: true}}
      name: {{path: name, default: there}}
      ref: {{path: submission_id}}
"""


@dataclass(frozen=True)
class SignedRequest:
    """One webhook: its body, the body's signature, and the event id in it."""

    event_id: str
    body: bytes
    signature: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Content-Type": "application/json", SIGNATURE_HEADER: self.signature}


def sign(secret: str, body: bytes) -> str:
    """The ``X-Signature`` of a body: hex HMAC-SHA256 with the source's secret."""
    return hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def signed_requests(secret: str, prefix: str, count: int) -> Iterator[SignedRequest]:
    """``count`` webhooks with event ids ``{prefix}-0`` ... (the prefix must be unique to the run)."""
    for number in range(count):
        event_id = f"{prefix}-{number}"
        document = {
            "submission_id": event_id,
            "form": "callback-request",
            "name": "Ada Lovelace",
            "phone": "+14155550123",
            "company_size": "11-50",
        }
        body = json.dumps(document, separators=(",", ":")).encode()
        yield SignedRequest(event_id, body, sign(secret, body))


def write_wrk_data(path: Path, requests: Iterable[SignedRequest]) -> int:
    """Write the file bench/signed.lua reads: ``signature TAB body`` per line. Returns the count."""
    count = 0
    with path.open("wb") as data:
        for request in requests:
            if b"\n" in request.body or b"\t" in request.body:
                raise ValueError("a body must be one line without tabs")
            data.write(request.signature.encode() + b"\t" + request.body + b"\n")
            count += 1
    return count


def read_wrk_data(path: Path) -> Iterator[tuple[str, bytes]]:
    """The (signature, body) pairs of a data file, as the Lua script splits them."""
    with path.open("rb") as data:
        for line in data:
            signature, _, body = line.rstrip(b"\n").partition(b"\t")
            yield signature.decode(), body
