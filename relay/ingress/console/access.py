"""Who may use the console: the admin token, server-side sessions in Redis and one-time login links.

A session is a random id in an HttpOnly, SameSite=Strict cookie; Redis holds it (by digest) with its CSRF
token for ``RELAY_CONSOLE_SESSION_TTL_S``, so a logout or an expiry ends it on every process at once.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass

from redis import Redis

from relay import keys
from relay.ingress.checks.request import sent

SESSION_COOKIE = "relay_console"
ONCE_TTL_S = 15 * 60  # a `relay dev` login link is good for one use within this
# A client address with this many wrong tokens in the window is refused until the window ends: guessing
# the token (the admin API's too) through the login form stays hopeless even for a short token.
MAX_LOGIN_FAILURES = 10
LOGIN_FAILURE_WINDOW_S = 15 * 60


@dataclass(frozen=True)
class Session:
    """A logged-in console session: its CSRF token, and when it began (epoch s)."""

    csrf_token: str
    began_at: float

    def __repr__(self) -> str:  # the token is a credential of the session: never in a log line
        return f"Session(began_at={self.began_at})"


def _key_digest(value: str) -> str:
    return hashlib.sha256(value.encode("utf-8", "surrogateescape")).hexdigest()


def begin_session(redis: Redis, ttl_s: int) -> tuple[str, Session]:
    """Store a new session; its cookie value (secret) and the session."""
    session_id = secrets.token_urlsafe(32)
    session = Session(csrf_token=secrets.token_urlsafe(32), began_at=time.time())
    key = keys.console_session_key(_key_digest(session_id))
    with redis.pipeline(transaction=True) as pipe:
        pipe.hset(key, mapping={"csrf": session.csrf_token, "began_at": session.began_at})
        pipe.expire(key, ttl_s)
        pipe.execute()
    return session_id, session


def find_session(redis: Redis, session_id: str | None) -> Session | None:
    """The session a cookie names, unless it has ended (logged out or expired)."""
    if not session_id or len(session_id) > 200:
        return None
    key = keys.console_session_key(_key_digest(session_id))
    fields: dict[bytes, bytes] = redis.hgetall(key)  # type: ignore[assignment]
    if not fields or b"csrf" not in fields:
        return None
    return Session(csrf_token=fields[b"csrf"].decode(), began_at=float(fields.get(b"began_at", 0)))


def end_session(redis: Redis, session_id: str | None) -> None:
    """Log out: the session is gone for every process."""
    if session_id:
        redis.delete(keys.console_session_key(_key_digest(session_id)))


def issue_login_link_token(redis: Redis, ttl_s: int = ONCE_TTL_S) -> str:
    """A token for ``/console/login?once=TOKEN`` that logs in once within ``ttl_s`` (``relay dev``)."""
    token = secrets.token_urlsafe(32)
    redis.set(keys.console_once_key(_key_digest(token)), "1", ex=ttl_s)
    return token


def use_login_link_token(redis: Redis, token: str) -> bool:
    """Whether ``token`` is an unused login link's; it is used up by this call (GETDEL)."""
    if not token or len(token) > 200:
        return False
    return redis.getdel(keys.console_once_key(_key_digest(token))) is not None


def csrf_matches(session: Session, given: str | None) -> bool:
    """Whether a form's CSRF token is its session's (constant time)."""
    return given is not None and hmac.compare_digest(sent(given), sent(session.csrf_token))


def login_blocked_for_s(redis: Redis, client: str) -> int:
    """How long ``client`` must wait before its next login attempt (0: it may try now)."""
    key = keys.console_login_failures_key(client)
    with redis.pipeline(transaction=False) as pipe:
        pipe.get(key)
        pipe.ttl(key)
        failures, ttl_s = pipe.execute()
    return max(1, int(ttl_s)) if failures is not None and int(failures) >= MAX_LOGIN_FAILURES else 0


def note_login_failure(redis: Redis, client: str) -> None:
    """Count a wrong token from ``client`` in its window (which starts at its first failure)."""
    key = keys.console_login_failures_key(client)
    with redis.pipeline(transaction=True) as pipe:
        pipe.set(key, 0, ex=LOGIN_FAILURE_WINDOW_S, nx=True)
        pipe.incr(key)
        pipe.execute()
