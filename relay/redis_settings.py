"""How the relay reaches Redis: the Redis part of ``Settings``, which inherits it (still one object).

Apart because it is the one group of settings with checks across fields (Sentinel with its master name, a
client key with its certificate) and an address format of its own (``host:port``, ``[v6]:port``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal, Self
from urllib.parse import urlsplit

from pydantic import AliasChoices, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings

REDIS_SCHEMES = ("redis", "rediss", "unix")


def parse_host_port(address: str) -> tuple[str, int]:
    """``host:port`` (``[v6]:port`` for IPv6) as a pair; ValueError, naming the address, when malformed."""
    host, sep, port = address.strip().rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        host = ""  # an IPv6 address needs its brackets: "[::1]:26379"
    if not sep or not host or not port.isdigit() or not 0 < int(port) <= 65535:
        raise ValueError(f"{address!r} is not host:port")
    return host, int(port)


class RedisSettings(BaseSettings):
    """Where Redis is (a URL, or Sentinels), and how to reach it (TLS files, passwords)."""

    redis_url: str = Field(
        default="redis://127.0.0.1:6379/0",
        # REDIS_URL is what Procfile platforms (Heroku and the like) set for an attached Redis.
        validation_alias=AliasChoices("RELAY_REDIS_URL", "REDIS_URL"),
        repr=False,  # it may hold a password
        description="Redis holding queues and outcomes: `redis://`, `rediss://` (TLS) or `unix://`.",
    )
    redis_tls_cert_reqs: Literal["required", "optional", "none"] = Field(
        default="required",
        description="Certificate check of a `rediss://` server; `none` for the self-signed certificates of "
        "managed Redis on Procfile platforms.",
    )
    redis_tls_ca_file: Path | None = Field(default=None, description="CA bundle for a `rediss://` server.")
    redis_tls_cert_file: Path | None = Field(default=None, description="Client certificate (mutual TLS).")
    redis_tls_key_file: Path | None = Field(default=None, description="Client certificate's key.")
    redis_sentinels: list[str] = Field(
        default_factory=list,
        description="Redis Sentinel addresses (JSON list of `host:port`), with the sentinel master name.",
    )
    redis_sentinel_master: str | None = Field(
        default=None, description="The Sentinel service name of the Redis master."
    )
    redis_sentinel_password: SecretStr | None = Field(
        default=None, description="Password of the Sentinels themselves (the master's is in the URL)."
    )

    @field_validator("redis_url")
    @classmethod
    def _redis_url_scheme(cls, url: str) -> str:
        # The message never shows the URL: it may hold a password.
        try:
            parts = urlsplit(url)
            parts.port  # noqa: B018 - raises ValueError for a port that is not a number
        except ValueError:
            raise ValueError("not a valid URL") from None
        if parts.scheme not in REDIS_SCHEMES:
            raise ValueError("must start with redis://, rediss:// (TLS) or unix://")
        return url

    @field_validator("redis_sentinels")
    @classmethod
    def _sentinel_addresses(cls, sentinels: list[str]) -> list[str]:
        for address in sentinels:
            parse_host_port(address)
        return sentinels

    @model_validator(mode="after")
    def _redis_combination(self) -> Self:
        if bool(self.redis_sentinels) != bool(self.redis_sentinel_master):
            raise ValueError(
                "RELAY_REDIS_SENTINELS and RELAY_REDIS_SENTINEL_MASTER go together: set both or neither"
            )
        if self.redis_sentinels and urlsplit(self.redis_url).scheme == "unix":
            raise ValueError("RELAY_REDIS_SENTINELS: Sentinel finds a master by host and port, not unix://")
        if self.redis_tls_key_file is not None and self.redis_tls_cert_file is None:
            raise ValueError("RELAY_REDIS_TLS_KEY_FILE is set without RELAY_REDIS_TLS_CERT_FILE")
        return self
