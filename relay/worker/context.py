"""What every job of a worker process shares: settings, the Redis connection, the runner client and its
connection pool, and each account's circuit breaker and rate limit, built once and kept from job to job.

The worker holds it and hands it to each job function as its first argument (``ctx``), as arq does: no
job reaches for a module global, and a test or a second worker in one process has a context of its own.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from redis import Redis

from relay.errors import ConfigError, SettingsError
from relay.infra.metrics import RelayMetrics
from relay.infra.redis_client import connect
from relay.mapping.config import RelayConfig, load_config
from relay.mapping.version import ConfigVersion
from relay.runner.breaker import CircuitBreaker
from relay.runner.client import RunnerClient
from relay.runner.ratelimit import AccountRateLimit
from relay.settings import PlivoAccount, Settings

log = logging.getLogger(__name__)


def worker_config(settings: Settings) -> RelayConfig:
    """The config file checked as a worker needs it: valid, and every route's account with credentials."""
    config = load_config(settings.config_path, settings.account_names())
    without_credentials = [route.name for route in config.routes if settings.account(route.account) is None]
    if without_credentials:
        names = ", ".join(without_credentials)
        raise SettingsError(f"PLIVO_AUTH_ID and PLIVO_AUTH_TOKEN are not set; routes {names} need them")
    return config


@dataclass
class WorkerContext:
    """What every job of a worker process shares: built once per process."""

    settings: Settings
    redis: Redis
    runner: RunnerClient
    metrics: RelayMetrics = field(default_factory=RelayMetrics)
    breakers: dict[str, CircuitBreaker] = field(default_factory=dict)
    rate_limits: dict[str, AccountRateLimit] = field(default_factory=dict)
    config: RelayConfig | None = None  # the config in force; jobs carry their payloads and need none
    config_version: ConfigVersion | None = None
    reload_requested: bool = False  # set by SIGHUP's handler, acted on by the worker's main loop

    @classmethod
    def build(cls, settings: Settings) -> WorkerContext:
        runner = RunnerClient(
            settings.runner_url,
            connect_timeout_s=settings.runner_connect_timeout_s,
            read_timeout_s=settings.runner_read_timeout_s,
            keepalive_connections=settings.worker_concurrency,  # one kept for every run in flight
        )
        return cls(settings=settings, redis=connect(settings), runner=runner)

    def breaker(self, account: str) -> CircuitBreaker:
        """The account's circuit breaker (its state lives in Redis)."""
        if account not in self.breakers:
            settings = self.settings
            self.breakers[account] = CircuitBreaker(
                self.redis,
                account,
                failure_threshold=settings.breaker_failures,
                window_s=settings.breaker_window_s,
                open_s=settings.breaker_open_s,
                max_open_s=settings.breaker_max_open_s,
            )
        return self.breakers[account]

    def rate_limit(self, account: str, credentials: PlivoAccount) -> AccountRateLimit:
        """The account's rate limit at the runner (its log lives in Redis)."""
        if account not in self.rate_limits:
            self.rate_limits[account] = AccountRateLimit(
                self.redis, account, credentials.rate_limit, credentials.rate_window_s
            )
        return self.rate_limits[account]

    def request_reload(self, *_: object) -> None:
        """SIGHUP's handler: only a flag, so that the reload runs on the main loop, not inside a signal."""
        self.reload_requested = True

    def reload_config(self, trigger: str) -> None:
        """Load and check the config file again; an invalid one is logged and the old one stays."""
        self.reload_requested = False
        old = self.config_version.hash if self.config_version else None
        try:
            config = worker_config(self.settings)
        except (ConfigError, SettingsError) as exc:
            problems = "; ".join(map(str, exc.problems)) if isinstance(exc, ConfigError) else str(exc)
            log.error("config reload (%s) refused, version %s stays in force: %s", trigger, old, problems)
            return
        self.config, self.config_version = config, ConfigVersion.of(config)
        self.metrics.config_loaded(self.config_version.hash, self.config_version.loaded_at_s)
        log.info(
            "config loaded (%s): version %s (was %s), %d route(s)",
            trigger,
            self.config_version.hash,
            old,
            len(config.routes),
            extra={"config_version": self.config_version.hash},
        )

    def close(self) -> None:
        self.runner.close()
        self.redis.close()
