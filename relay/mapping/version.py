"""Which mapping config a process has loaded: a short hash of it and when it was loaded.

Each process loads the config at start and again on a reload (SIGHUP, ``POST /admin/config/reload``); the
version shows in ``/readyz``, the ``relay_config_info`` metric, each event's record and the logs, so an
operator can tell which processes serve which config.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass

from relay.mapping.config import RelayConfig

VERSION_HEX_CHARS = 12


@dataclass(frozen=True)
class ConfigVersion:
    """A config's hash (12 hex of sha256) and the time (epoch s) this process loaded it."""

    hash: str
    loaded_at_s: float

    @classmethod
    def of(cls, config: RelayConfig, loaded_at_s: float | None = None) -> ConfigVersion:
        """The version of a validated config: its hash ignores the file's comments and layout."""
        # warnings=False: pydantic warns that it serialises the payload values' union left to right; it does.
        canonical = config.model_dump_json(warnings=False).encode()
        digest = hashlib.sha256(canonical).hexdigest()[:VERSION_HEX_CHARS]
        return cls(digest, time.time() if loaded_at_s is None else loaded_at_s)

    def as_json(self) -> dict[str, str | float]:
        """As ``/readyz`` and the admin API show it."""
        return {"hash": self.hash, "loaded_at": self.loaded_at_s}
