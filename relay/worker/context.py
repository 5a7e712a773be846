"""What every job of a worker process shares: settings, the Redis connection, the runner client and its
connection pool, and each account's circuit breaker and rate limit, built once and kept from job to job.

The worker holds it and hands it to each job function as its first argument (``ctx``), as arq does: no
job reaches for a module global, and a test or a second worker in one process has a context of its own.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from redis import Redis

from relay.infra.metrics import RelayMetrics
from relay.infra.redis_client import connect
from relay.runner.breaker import CircuitBreaker
from relay.runner.client import RunnerClient
from relay.runner.ratelimit import AccountRateLimit
from relay.settings import PlivoAccount, Settings


@dataclass
class WorkerContext:
    """What every job of a worker process shares: built once per process."""

    settings: Settings
    redis: Redis
    runner: RunnerClient
    metrics: RelayMetrics = field(default_factory=RelayMetrics)
    breakers: dict[str, CircuitBreaker] = field(default_factory=dict)
    rate_limits: dict[str, AccountRateLimit] = field(default_factory=dict)

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

    def close(self) -> None:
        self.runner.close()
        self.redis.close()
