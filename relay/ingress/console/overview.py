"""The console's Overview: the queue, the accounts' breakers and rate limits, sources, routes, a chart."""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field

from aiohttp import web
from redis import Redis

from relay import keys
from relay.ingress.console.chart import Chart, per_minute_chart
from relay.ingress.console.render import Context, page
from relay.ingress.state import CONFIG, REDIS, SETTINGS, in_thread
from relay.mapping.config import RelayConfig
from relay.queue import stats
from relay.queue.gauges import QueueCounts, read_queue_counts
from relay.runner.breaker import CircuitBreaker
from relay.settings import Settings

CHART_MINUTES = 60
EVENT_OUTCOMES = ("accepted", "ignored", "duplicate")


@dataclass(frozen=True)
class AccountRow:
    name: str
    breaker: str  # closed, half_open, open
    retry_in_s: float | None  # open: when it lets a probe through
    window_used: int  # runner requests sent in the last window
    reserved_ahead: int  # turns taken for the coming moments
    limit: int
    window_s: float


@dataclass(frozen=True)
class SourceRow:
    name: str
    counts: Counter[str]
    refusals: dict[str, int]  # reason -> count
    configured: bool

    @property
    def refused(self) -> int:
        return sum(self.refusals.values())


@dataclass(frozen=True)
class RouteRow:
    name: str
    source: str
    counts: Counter[str]
    last_error: str | None
    last_error_at: float | None


@dataclass(frozen=True)
class Overview:
    queue: QueueCounts
    accounts: list[AccountRow]
    sources: list[SourceRow]
    routes: list[RouteRow]
    chart: Chart
    now: float = field(default_factory=time.time)


def _accounts(redis: Redis, settings: Settings) -> list[AccountRow]:
    rows = []
    now_us = int(time.time() * 1_000_000)
    for name in sorted(settings.account_names()):
        account = settings.account(name)
        if account is None:  # the default account without credentials: no route can use it
            continue
        state = CircuitBreaker(redis, name).state()
        window_us = int(account.rate_window_s * 1_000_000)
        with redis.pipeline(transaction=False) as pipe:
            pipe.zcount(keys.rate_key(name), now_us - window_us, now_us)
            pipe.zcount(keys.rate_key(name), f"({now_us}", "+inf")
            used, ahead = pipe.execute()
        retry_in_s = max(0.0, state.retry_at - time.time()) if state.retry_at else None
        rows.append(
            AccountRow(name, state.state, retry_in_s, used, ahead, account.rate_limit, account.rate_window_s)
        )
    return rows


def _sources(config: RelayConfig, tally: stats.Tally) -> list[SourceRow]:
    rows = []
    for name in sorted({*config.sources, *tally.by_name}):
        counts = tally.by_name.get(name, Counter())
        refusals = {
            outcome.removeprefix("refused:"): n
            for outcome, n in sorted(counts.items())
            if outcome.startswith("refused:")
        }
        rows.append(SourceRow(name, counts, refusals, name in config.sources))
    return rows


def read_overview(redis: Redis, settings: Settings, config: RelayConfig) -> Overview:
    """Everything the Overview shows, read from Redis (blocking: run it on the app's thread pool)."""
    events = stats.read_recent(redis, stats.EVENTS, CHART_MINUTES)
    runs = stats.read_recent(redis, stats.RUNS, CHART_MINUTES)
    by_day = stats.read_runs_by_day(redis)
    errors = stats.read_last_errors(redis)
    routes = [
        RouteRow(
            route.name,
            route.source,
            by_day.get(route.name, Counter()),
            errors[route.name][1] if route.name in errors else None,
            errors[route.name][0] if route.name in errors else None,
        )
        for route in sorted(config.routes, key=lambda route: route.name)
    ]
    chart = per_minute_chart(
        {
            "events received": ("events", events.per_minute),
            "run outcomes": ("runs", runs.per_minute),
        },
        CHART_MINUTES,
    )
    return Overview(
        read_queue_counts(redis, settings),
        _accounts(redis, settings),
        _sources(config, events),
        routes,
        chart,
    )


@page("overview.html", nav="overview")
async def show_overview(request: web.Request) -> Context:
    """``GET /console/``."""
    app = request.app
    overview = await in_thread(request, read_overview, app[REDIS], app[SETTINGS], app[CONFIG].current.config)
    return {"overview": overview, "event_outcomes": EVENT_OUTCOMES, "run_outcomes": stats.RUN_OUTCOMES}


def add_routes(router: web.UrlDispatcher) -> None:
    router.add_get("/console/", show_overview)
    router.add_get("/console", show_overview)
