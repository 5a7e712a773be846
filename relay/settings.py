"""Settings: one object, read once from the environment (prefix ``RELAY_``) and ``.env``, passed down.

Plivo credentials are read from ``PLIVO_AUTH_ID`` / ``PLIVO_AUTH_TOKEN`` like the official SDKs. Further
accounts, for routes that name one, come from ``RELAY_ACCOUNTS__<NAME>__AUTH_ID`` / ``__AUTH_TOKEN``.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Literal

import pydantic_settings
from dotenv import dotenv_values
from pydantic import (
    AliasChoices,
    BaseModel,
    Field,
    IPvAnyNetwork,
    SecretStr,
    ValidationError,
)
from pydantic_settings import SettingsConfigDict

from relay.errors import SettingsError
from relay.redis_settings import RedisSettings

DEFAULT_ACCOUNT = "default"
ENV_PREFIX = "RELAY_"


class PlivoAccount(BaseModel):
    """The credentials of one Plivo account, and its rate limit at the runner."""

    auth_id: str = Field(min_length=1)
    auth_token: SecretStr
    rate_limit: int = Field(default=300, ge=1)
    rate_window_s: float = Field(default=5.0, gt=0)


class Settings(RedisSettings):
    """Everything the ingress, the worker and the CLI need to know about their surroundings."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_file=".env",
        env_file_encoding="utf-8",
        env_nested_delimiter="__",
        extra="ignore",
        frozen=True,
        validate_by_name=True,
    )

    plivo_auth_id: str | None = Field(
        default=None,
        validation_alias=AliasChoices("PLIVO_AUTH_ID", "RELAY_PLIVO_AUTH_ID"),
        description="Auth ID of the default Plivo account.",
    )
    plivo_auth_token: SecretStr | None = Field(
        default=None,
        validation_alias=AliasChoices("PLIVO_AUTH_TOKEN", "RELAY_PLIVO_AUTH_TOKEN"),
        description="Auth Token of the default Plivo account.",
    )
    accounts: dict[str, PlivoAccount] = Field(
        default_factory=dict, description="Further Plivo accounts by name, for routes that set `account`."
    )
    runner_url: str = Field(
        default="https://phlorunner.plivo.com",
        pattern=r"^https?://",
        description="Base URL of the PHLO runner.",
    )
    config_path: Path = Field(default=Path("config/routes.yaml"), description="The mapping config (YAML).")
    public_url: str | None = Field(
        default=None,
        pattern=r"^https?://[^/?#]+(/[^?#]*)?$",
        description="The relay's URL as senders see it (e.g. `https://hooks.example.com`), for schemes that "
        "sign the URL (HubSpot v2/v3, Twilio) behind a load balancer.",
    )
    trusted_proxies: list[IPvAnyNetwork] = Field(
        default_factory=list,
        description="Proxies (CIDRs, JSON list) whose X-Forwarded-For/-Proto/-Host headers are believed.",
    )
    dedupe_window_s: int = Field(
        default=86400, ge=0, description="A repeat of an event id within this window is a duplicate."
    )
    host: str = Field(default="127.0.0.1", description="Address the ingress binds to.")
    port: int = Field(default=8080, ge=0, le=65535, description="Port the ingress listens on.")
    max_body_bytes: int = Field(default=1024 * 1024, ge=1024, description="Larger webhook bodies get 413.")
    body_read_timeout_s: float = Field(
        default=10.0,
        gt=0,
        description="A webhook body that takes longer to arrive gets 408 (a slow-drip sender holds a "
        "connection and its buffer otherwise).",
    )
    queue_name: str = Field(
        default="phlo-runs", pattern=r"^[A-Za-z0-9_.:-]+$", description="RQ queue holding PHLO runs."
    )
    runner_connect_timeout_s: float = Field(default=3.0, gt=0, description="Connect timeout to the runner.")
    runner_read_timeout_s: float = Field(
        default=5.0, gt=0, description="Read timeout (plivo-python's is 5 s)."
    )
    run_attempts: int = Field(
        default=6, ge=1, le=50, description="Attempts before a run is dead-lettered (routes may override)."
    )
    run_max_age_s: int = Field(
        default=86400, ge=1, description="A run not delivered this long after its event is dead-lettered."
    )
    retry_base_delay_s: float = Field(
        default=5.0, ge=0, description="Backoff: retry n waits a random time up to base * 2^(n-1)."
    )
    retry_max_delay_s: float = Field(
        default=600.0, ge=0, description="Backoff cap (Retry-After may exceed it)."
    )
    rate_limit: int = Field(
        default=300, ge=1, description="Runner requests per window of the default account (Plivo: 300)."
    )
    rate_window_s: float = Field(default=5.0, gt=0, description="The rate limit's window (Plivo: 5 s).")
    breaker_failures: int = Field(
        default=5, ge=1, description="Transient runner failures within the window that open the breaker."
    )
    breaker_window_s: float = Field(default=30.0, gt=0, description="Window of the breaker's failure count.")
    breaker_open_s: float = Field(
        default=15.0, gt=0, description="How long an open breaker pauses an account before one probe run."
    )
    breaker_max_open_s: float = Field(
        default=300.0, gt=0, description="Cap of the open time after failed probes."
    )
    job_timeout_s: int = Field(
        default=20, ge=5, description="How long one delivery attempt may take; then it is abandoned, retried."
    )
    maintenance_interval_s: int = Field(
        default=2, ge=1, description="How often workers look for runs of crashed workers."
    )
    worker_concurrency: int = Field(
        default=64,
        ge=1,
        le=1024,
        description="Runs one worker process holds in flight; at the runner's latency L seconds, a process "
        "delivers up to N / L runs/s.",
    )
    admin_token: SecretStr | None = Field(
        default=None,
        description="Bearer token of the admin API, `GET /events/{id}` and `/metrics`; unset: they answer "
        "404 (`/metrics`: unless RELAY_METRICS_PUBLIC).",
    )
    outcome_ttl_s: int = Field(default=30 * 86400, ge=60, description="How long event outcomes are kept.")
    finished_job_ttl_s: int = Field(
        default=86400, ge=0, description="How long RQ keeps succeeded jobs (outcomes are kept on their own)."
    )
    dead_letter_ttl_s: int = Field(
        default=30 * 86400, ge=60, description="How long dead-lettered runs stay in RQ's failed registry."
    )
    shutdown_grace_s: float = Field(
        default=30.0,
        gt=0,
        description="After SIGTERM, the ingress exits within this (drain included), and a worker's runs in "
        "flight finish within it or go back to the queue.",
    )
    drain_delay_s: float = Field(
        default=5.0,
        ge=0,
        description="After SIGTERM, the ingress answers /readyz 503 but keeps serving this long, so that "
        "the load balancer stops sending before it closes its port.",
    )
    metrics_dir: Path | None = Field(
        default=None,
        description="Directory shared by the processes of one host for Prometheus metrics "
        "(prometheus_client multiprocess mode); unset: a private one per command.",
    )
    worker_metrics_port: int | None = Field(
        default=None, ge=0, le=65535, description="Port where `relay worker` serves /metrics; unset: none."
    )
    console_session_ttl_s: int = Field(
        default=8 * 3600, ge=1, description="How long a login to the console at /console/ lasts."
    )
    metrics_public: bool = Field(
        default=False,
        description="Serve /metrics (ingress and worker) without the admin token, for a private network; "
        "false: /metrics takes the admin token as a bearer, and answers 404 without RELAY_ADMIN_TOKEN.",
    )
    log_level: str = Field(default="INFO", pattern=r"^(DEBUG|INFO|WARNING|ERROR)$")
    log_format: Literal["json", "text"] = Field(
        default="json", description="`json`: one object per line; `text`: readable (relay dev's default)."
    )
    log_mask_pii: bool = Field(
        default=True, description="Mask phone numbers and e-mail addresses in log lines."
    )

    clock_offset_s: float = Field(
        default=0.0,
        description="Tests and drills only: seconds added to the clock by which workers judge quiet hours "
        "and move due runs to the queue (a worker started with it lives in the future).",
    )

    def now(self) -> float:
        """The relay's clock (epoch seconds): quiet hours and due runs go by it."""
        return time.time() + self.clock_offset_s

    def account(self, name: str) -> PlivoAccount | None:
        """The credentials of the named account (``default`` is the PLIVO_AUTH_* pair), or None."""
        if name == DEFAULT_ACCOUNT:
            if self.plivo_auth_id and self.plivo_auth_token is not None:
                return PlivoAccount(
                    auth_id=self.plivo_auth_id,
                    auth_token=self.plivo_auth_token,
                    rate_limit=self.rate_limit,
                    rate_window_s=self.rate_window_s,
                )
            return None
        return self.accounts.get(name)

    def account_names(self) -> set[str]:
        """Names a route may give as its ``account``."""
        return {DEFAULT_ACCOUNT, *self.accounts}

    def as_environment(self) -> dict[str, str]:
        """Environment variables that rebuild these settings in a child process (secrets included)."""
        env = {}
        for field in type(self).model_fields:
            value = getattr(self, field)
            if value is None:
                continue
            if isinstance(value, SecretStr):
                value = value.get_secret_value()
            elif isinstance(value, list):  # trusted_proxies, redis_sentinels: JSON, as they are read
                value = json.dumps([str(item) for item in value])
            elif field == "accounts":
                value = json.dumps(
                    {
                        name: {**acc.model_dump(), "auth_token": acc.auth_token.get_secret_value()}
                        for name, acc in value.items()
                    }
                )
            env[env_name(field)] = str(value)
        return env


def secret_environment(env_file: Path | None = Path(".env")) -> dict[str, str]:
    """Where sources' secrets are read: the environment, over the ``.env`` file like the settings."""
    from_file = dotenv_values(env_file) if env_file is not None and env_file.is_file() else {}
    return {**{key: value for key, value in from_file.items() if value is not None}, **os.environ}


def env_name(field: str) -> str:
    """The environment variable that sets a settings field."""
    info = Settings.model_fields.get(field)
    alias = info.validation_alias if info else None
    if isinstance(alias, AliasChoices):
        return str(alias.choices[0])
    return ENV_PREFIX + field.upper()


def load_settings(**overrides: object) -> Settings:
    """Read the settings; an invalid value raises SettingsError naming the variable (never its value)."""
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except pydantic_settings.SettingsError as exc:
        # Raised for a value that is not even parseable (JSON of a nested setting); names the field.
        field = exc.args[0].split('"')[1] if exc.args and '"' in str(exc.args[0]) else "?"
        raise SettingsError(f"invalid settings: {env_name(field)}: cannot be parsed") from None
    except ValidationError as exc:
        problems = []
        for error in exc.errors(include_input=False):
            message = error["msg"].removeprefix("Value error, ")
            if not error["loc"]:  # a check of several settings: its message names them
                problems.append(message)
                continue
            field = str(error["loc"][0])
            rest = "__".join(str(part).upper() for part in error["loc"][1:])
            name = env_name(field) + (f"__{rest}" if rest else "")
            problems.append(f"{name}: {message}")
        raise SettingsError("invalid settings: " + "; ".join(problems)) from None
