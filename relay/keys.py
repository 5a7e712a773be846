"""Every Redis key and RQ queue name the relay uses, in one place.

RQ owns its own keys (``rq:queue:<name>``, ``rq:job:<id>``, registries); the relay adds only these.
"""

from __future__ import annotations

import hashlib

PREFIX = "relay"


def event_key(event_id: str) -> str:
    """Hash holding one event's record (field ``event``) and one field per run (``run:<job id>``)."""
    return f"{PREFIX}:event:{event_id}"


def seen_key(source: str, dedupe_id: str) -> str:
    """String marking an event id as seen (value: the relay's event id) for the duplicate window."""
    if len(dedupe_id) > 128:  # ids come from senders; keep keys short whatever they send
        dedupe_id = "sha256:" + hashlib.sha256(dedupe_id.encode()).hexdigest()
    return f"{PREFIX}:seen:{source}:{dedupe_id}"


def run_field(job_id: str) -> str:
    """The field of an event hash that holds one run's outcome."""
    return f"run:{job_id}"


EVENT_FIELD = "event"
DOCUMENT_FIELD = "document"


def rate_key(account: str) -> str:
    """Sorted set logging one account's runner request reservations (member: slot id, score: send time µs)."""
    return f"{PREFIX}:rate:{account}"


def breaker_key(account: str) -> str:
    """Hash of one account's circuit breaker while it is open (absent: closed)."""
    return f"{PREFIX}:breaker:{account}"


def breaker_failures_key(account: str) -> str:
    """Sorted set of one account's recent runner failures (score: time µs), while its breaker is closed."""
    return f"{PREFIX}:breaker:{account}:failures"


def stranded_key(queue_name: str) -> str:
    """Hash of the jobs seen in RQ's intermediate list of a queue, not started (value: when first seen, epoch
    seconds on Redis's clock), so that workers put back the ones a dead worker took."""
    return f"{PREFIX}:stranded:{queue_name}"


PAUSE_KINDS = ("route", "account", "source")


def paused_key(kind: str) -> str:
    """Hash of the paused routes, accounts or sources (``kind``): name -> JSON {reason, by, at}."""
    return f"{PREFIX}:paused:{kind}"


def held_key(kind: str, name: str) -> str:
    """Sorted set of the job ids a pause of one route, account or source holds (score: when held, epoch s)."""
    return f"{PREFIX}:held:{kind}:{name}"


def cap_key(kind: str, name: str, recipient_hash: str) -> str:
    """Sorted set of the runs one route's or account's frequency cap counted for one recipient (its SHA-256),
    member ``<event id> <job id>``, score: when counted (epoch ms)."""
    return f"{PREFIX}:cap:{kind}:{name}:{recipient_hash}"


def console_session_key(session_digest: str) -> str:
    """Hash of one console session (its CSRF token, when it began), expiring with it. Named by the SHA-256
    of the cookie's value, so that Redis never holds the credential itself."""
    return f"{PREFIX}:console:session:{session_digest}"


def console_once_key(token_digest: str) -> str:
    """String marking a one-time console login link (``relay dev``) as unused, expiring soon; by digest."""
    return f"{PREFIX}:console:once:{token_digest}"


def stats_key(kind: str, minute: int | str) -> str:
    """Hash of one minute's counts for the console (``kind``: events or runs; ``minute``: epoch s // 60);
    fields like ``<source>|accepted`` or ``<route>|succeeded``, incremented, expiring after a day."""
    return f"{PREFIX}:stats:{kind}:{minute}"


def last_error_key() -> str:
    """Hash of each route's last run error (route -> JSON {at, error}), for the console's Overview."""
    return f"{PREFIX}:stats:last-error"


def console_login_failures_key(client: str) -> str:
    """Counter of one client address's failed console logins in the current window (expiring with it)."""
    return f"{PREFIX}:console:login-failures:{client}"


# The event index (relay.queue.index): sorted sets scored by the event's received_at (epoch seconds), member
# the event id (a run's status: its job id, which begins with its event id). Trimmed to outcome_ttl_s.
def index_all_key() -> str:
    """Sorted set of every stored event."""
    return f"{PREFIX}:index:events"


def index_source_key(source: str) -> str:
    """Sorted set of one source's events."""
    return f"{PREFIX}:index:source:{source}"


def index_route_key(route: str) -> str:
    """Sorted set of the events with a run (or dead letter) of one route."""
    return f"{PREFIX}:index:route:{route}"


def index_status_key(status: str) -> str:
    """Sorted set of the events with an event status (accepted, ignored, duplicate: repeats received), or of
    the job ids of the runs with a run status (queued, succeeded, ..., ambiguous)."""
    return f"{PREFIX}:index:status:{status}"


def index_sender_key(source_event_id: str) -> str:
    """Sorted set of the events that carry one sender's event id (any source), expiring with the newest."""
    if len(source_event_id) > 128:  # ids come from senders; keep keys short whatever they send
        source_event_id = "sha256:" + hashlib.sha256(source_event_id.encode()).hexdigest()
    return f"{PREFIX}:index:sender:{source_event_id}"


def index_sets_key() -> str:
    """Set of the names of the source and route index sets, which ``relay.queue.index.trim`` walks."""
    return f"{PREFIX}:index:sets"


DUPLICATES_FIELD = "duplicates"  # field of an event hash: how many repeats of the event were received
