"""Prometheus metrics: what every ingress and worker process counts, and the queue's state read from Redis.

Counters and histograms are per process. Processes of one host share them through prometheus_client's
multiprocess mode (``RELAY_METRICS_DIR``): a scrape of any of them sums all, the dead ones included, so
``relay serve --processes N`` and ``relay worker --processes N`` report one set of figures. The queue's
depths and ages, the workers and the circuit breakers live in Redis, so they are read at scrape time and are
the same whichever process is scraped (``max()`` them across instances, do not ``sum()`` them).
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from enum import StrEnum
from pathlib import Path

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, multiprocess, values

LATENCY_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
WAIT_BUCKETS_S = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
UNKNOWN_SOURCE = "_unknown"  # refusals of sources not in the config: senders choose those names

# Read from Redis at scrape time (relay.queue.gauges); listed here so that every name is in one place.
QUEUE_RUNS = "relay_queue_runs"
QUEUE_OLDEST_AGE = "relay_queue_oldest_run_age_seconds"
WORKERS = "relay_workers"
BREAKER_STATE = "relay_circuit_breaker_state"
REDIS_UP = "relay_redis_up"
RUNS_HELD = "relay_runs_held"
REDIS_MEMORY_USED = "relay_redis_memory_used_bytes"
REDIS_MEMORY_MAX = "relay_redis_memory_max_bytes"


class DeadLetterReason(StrEnum):
    """Why a run was dead-lettered: the ``reason`` label of ``relay_dead_letters``."""

    REJECTED = "rejected"  # the runner refused it: a 4xx that retrying cannot fix
    ATTEMPTS = "attempts"  # its last attempt failed
    MAX_AGE = "max_age"  # its maximum age would pass before the next attempt
    CREDENTIALS = "credentials"  # no credentials for its Plivo account
    INTERRUPTED = "interrupted"  # cut short (crash, timeout) after its last attempt
    UNMAPPABLE = "unmappable"  # its route's payload cannot be built from the event (counted by the ingress)


def use_directory(directory: Path) -> None:
    """Count in prometheus_client's multiprocess mode, in ``directory``, from now on in this process.

    Call before any metric is made. prometheus_client reads ``PROMETHEUS_MULTIPROC_DIR`` once, when it is
    imported; setting its value class again is how its own tests switch modes.
    """
    directory.mkdir(parents=True, exist_ok=True)
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(directory)
    values.ValueClass = values.get_value_class()  # type: ignore[no-untyped-call]


def prepare_directory(configured: Path | None, *, processes: int) -> None:
    """Choose where this command's processes count, before any metric is made.

    ``RELAY_METRICS_DIR`` (or a ``PROMETHEUS_MULTIPROC_DIR`` the platform set) is shared as it is; a command
    of several processes without either gets a private temporary directory, removed when it exits.
    """
    directory = configured or multiprocess_directory()
    if directory is None and processes > 1:
        directory = Path(tempfile.mkdtemp(prefix="relay-metrics-"))
        atexit.register(shutil.rmtree, directory, ignore_errors=True)
    if directory is not None:
        use_directory(directory)


def mark_process_dead(pid: int) -> None:
    """Forget a dead process's live gauges (its counters stay: totals include what it counted)."""
    directory = multiprocess_directory()
    if directory is not None:
        multiprocess.mark_process_dead(pid, str(directory))  # type: ignore[no-untyped-call]


def multiprocess_directory() -> Path | None:
    """The multiprocess directory in use, or None when this process counts on its own."""
    path = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    return Path(path) if path else None


class RelayMetrics:
    """The relay's counters and histograms, registered in ``registry`` (one per app or worker context)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.events_received = Counter(
            "relay_events_received",
            "Webhook events by source and result (accepted, duplicate, ignored, ping, refused: see reason).",
            ["source", "result", "reason"],
            registry=r,
        )
        self.ingress_latency = Histogram(
            "relay_ingress_request_duration_seconds",
            "Time from a webhook's arrival to its answer, by source.",
            ["source"],
            buckets=LATENCY_BUCKETS_S,
            registry=r,
        )
        self.runs_enqueued = Counter(
            "relay_runs_enqueued", "PHLO runs queued by the ingress, by route.", ["route"], registry=r
        )
        self.runs = Counter(
            "relay_runs",
            "Delivery attempts' outcomes by route: succeeded, retried, waiting, held, dead_lettered, "
            "suppressed.",
            ["route", "outcome"],
            registry=r,
        )
        self.runner_latency = Histogram(
            "relay_runner_request_duration_seconds",
            "PHLO runner requests by account and answer (2xx, 4xx, 5xx, timeout, unreachable).",
            ["account", "status"],
            buckets=LATENCY_BUCKETS_S,
            registry=r,
        )
        self.retries = Counter(
            "relay_run_retries",
            "Retries scheduled, by route and reason (http_<status>, timeout, unreachable, interrupted).",
            ["route", "reason"],
            registry=r,
        )
        self.dead_letters = Counter(
            "relay_dead_letters",
            "Runs dead-lettered, by route and reason (rejected, attempts, max_age, unmappable, credentials).",
            ["route", "reason"],
            registry=r,
        )
        self.rate_limit_waits = Counter(
            "relay_rate_limit_waits",
            "Runs that waited for their account's rate limit, by result (waited, rescheduled).",
            ["account", "result"],
            registry=r,
        )
        self.rate_limit_wait = Histogram(
            "relay_rate_limit_wait_seconds",
            "How long runs waited for their account's rate limit.",
            ["account"],
            buckets=WAIT_BUCKETS_S,
            registry=r,
        )
        self.breaker_transitions = Counter(
            "relay_circuit_breaker_transitions",
            "Circuit breaker changes by account and new state (open, half_open, closed).",
            ["account", "state"],
            registry=r,
        )
        self.scheduled_start_delay = Histogram(
            "relay_scheduled_run_start_delay_seconds",
            "From a retry's or held run's due time to its start in a worker.",
            buckets=WAIT_BUCKETS_S,
            registry=r,
        )
        # Per worker process (a pid label in multiprocess mode); a dead process's values are dropped.
        self.runs_in_flight = Gauge(
            "relay_worker_runs_in_flight",
            "Runs a worker process has in flight.",
            multiprocess_mode="liveall",
            registry=r,
        )
        self.worker_concurrency = Gauge(
            "relay_worker_concurrency",
            "How many runs a worker process may have in flight (RELAY_WORKER_CONCURRENCY).",
            multiprocess_mode="liveall",
            registry=r,
        )
        self.runs_abandoned = Counter(
            "relay_runs_abandoned",
            "Runs a worker gave up on and requeued, by why (deadline, shutdown).",
            ["reason"],
            registry=r,
        )
        self.end_to_end = Histogram(
            "relay_run_end_to_end_seconds",
            "From a webhook's arrival to its run's success at the runner, by route.",
            ["route"],
            buckets=(0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 30.0, 60.0, 300.0, 1800.0, 3600.0, 86400.0),
            registry=r,
        )
        # Per process (a pid label in multiprocess mode): which processes serve which config.
        self.config_info = Gauge(
            "relay_config_info",
            "The mapping config a process has in force: 1 for its version's hash, 0 for those it replaced.",
            ["version"],
            multiprocess_mode="liveall",
            registry=r,
        )
        self.config_loaded_at = Gauge(
            "relay_config_loaded_timestamp_seconds",
            "When a process loaded the mapping config it has in force (epoch seconds).",
            multiprocess_mode="liveall",
            registry=r,
        )
        # Not relay_runs_held: that name is the gauge of runs held by pauses (relay.queue.gauges).
        self.window_held = Counter(
            "relay_runs_window_held",
            "Runs held outside their route's delivery window, by route and reason (quiet_hours).",
            ["route", "reason"],
            registry=r,
        )
        self.window_released = Counter(
            "relay_runs_window_released",
            "Held runs released once their delivery window opened, by route and reason (quiet_hours).",
            ["route", "reason"],
            registry=r,
        )
        self.runs_expired = Counter(
            "relay_runs_expired",
            "Runs expired unsent (not dead-lettered), by route and reason (quiet_hours: the window opens "
            "after their maximum age).",
            ["route", "reason"],
            registry=r,
        )
        self.runs_suppressed = Counter(
            "relay_runs_suppressed",
            "Runs not sent because they were over a frequency cap (limit_per_recipient), by route.",
            ["route"],
            registry=r,
        )
        self._config_hash: str | None = None

    def config_loaded(self, version_hash: str, loaded_at_s: float) -> None:
        """Mark the config ``version_hash`` as in force (the one it replaces drops to 0)."""
        if self._config_hash is not None and self._config_hash != version_hash:
            # remove() would not reach the other processes' view of a multiprocess file: zero it instead.
            self.config_info.labels(self._config_hash).set(0)
        self._config_hash = version_hash
        self.config_info.labels(version_hash).set(1)
        self.config_loaded_at.set(loaded_at_s)


METRIC_NAMES = frozenset(
    {
        "relay_events_received_total",
        "relay_ingress_request_duration_seconds",
        "relay_runs_enqueued_total",
        "relay_runs_total",
        "relay_runner_request_duration_seconds",
        "relay_run_retries_total",
        "relay_dead_letters_total",
        "relay_rate_limit_waits_total",
        "relay_rate_limit_wait_seconds",
        "relay_circuit_breaker_transitions_total",
        "relay_run_end_to_end_seconds",
        "relay_scheduled_run_start_delay_seconds",
        "relay_worker_runs_in_flight",
        "relay_worker_concurrency",
        "relay_runs_abandoned_total",
        "relay_config_info",
        "relay_config_loaded_timestamp_seconds",
        QUEUE_RUNS,
        QUEUE_OLDEST_AGE,
        WORKERS,
        BREAKER_STATE,
        REDIS_UP,
        RUNS_HELD,
        "relay_runs_suppressed_total",
        REDIS_MEMORY_USED,
        REDIS_MEMORY_MAX,
    }
)
