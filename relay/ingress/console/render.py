"""Rendering console pages: the session every page needs, the CSRF check of every POST, the security headers.

``@page("x.html")`` wraps a handler that returns the template's context (or a finished response); the
wrapper answers 401 with the login form when there is no session, 403 when a POST's CSRF token is missing
or forged, and adds to the context what ``base.html`` uses.
"""

from __future__ import annotations

import functools
import logging
import secrets
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime
from typing import Any

import aiohttp_jinja2
import jinja2
from aiohttp import web
from markupsafe import Markup

from relay.ingress.answers import error_response
from relay.ingress.console.access import SESSION_COOKIE, Session, csrf_matches, find_session
from relay.ingress.origin import public_url
from relay.ingress.state import CONFIG, REDIS, SETTINGS, in_thread

log = logging.getLogger(__name__)
CSRF_FIELD = "csrf_token"
SESSION = web.RequestKey("console_session", Session)
# Every console answer: nothing inline may run, nothing from elsewhere may load, no framing.
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
    "X-Frame-Options": "DENY",
}
PREFIX = "/console/"
LOGIN_PATH = "/console/login"
LOGIN_COOKIE = "relay_console_login"  # the login form's CSRF token, doubled
LOGIN_FORM_TTL_S = 3600

Context = Mapping[str, Any]
PageHandler = Callable[[web.Request], Awaitable[Context | web.StreamResponse]]


def setup_templates(app: web.Application) -> None:
    """Jinja2 on the app, autoescaping every template (sender-controlled text is shown everywhere)."""
    aiohttp_jinja2.setup(
        app,
        loader=jinja2.PackageLoader("relay.ingress.console", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        default_helpers=False,
        filters={"timestamp": timestamp},
    )


def timestamp(epoch_s: float | None) -> str:
    """``{{ x | timestamp }}``: epoch seconds as UTC to the second; an em dash for None."""
    if epoch_s is None:
        return "—"
    return datetime.fromtimestamp(epoch_s, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


async def add_security_headers(request: web.Request, response: web.StreamResponse) -> None:
    """``on_response_prepare``: the headers of every answer under /console/, errors and static files too."""
    if request.path.startswith(PREFIX) or request.path == PREFIX.rstrip("/"):
        response.headers.update(SECURITY_HEADERS)


async def session_of(request: web.Request) -> Session | None:
    """The request's console session, or None (no cookie, logged out, expired)."""
    if SESSION in request:
        return request[SESSION]
    cookie = request.cookies.get(SESSION_COOKIE)
    if not cookie:
        return None
    session = await in_thread(request, find_session, request.app[REDIS], cookie)
    if session is not None:
        request[SESSION] = session
    return session


def _csrf_field(session: Session) -> Callable[[], Markup]:
    def field() -> Markup:
        return Markup('<input type="hidden" name="{}" value="{}">').format(CSRF_FIELD, session.csrf_token)

    return field


def render(request: web.Request, template: str, context: Context, status: int = 200) -> web.Response:
    """Render a page of a logged-in session (``session_of`` already found it) with the base context."""
    session = request[SESSION]
    full = {
        "csrf_field": _csrf_field(session),
        "csrf_token": session.csrf_token,
        "config_version": request.app[CONFIG].current.version.hash,
        "nav": "",
        **context,
    }
    return aiohttp_jinja2.render_template(template, request, full, status=status)


def login_form(request: web.Request, status: int = 401, message: str = "") -> web.Response:
    """The login page: the answer to any console page without a session (401, not a redirect).

    Its form carries a CSRF token doubled in a short cookie (no session exists yet to hold one)."""
    token = secrets.token_urlsafe(24)
    # Nothing of the request is echoed (not even its path: an event id) to whoever is not logged in.
    context = {"message": message, "login_csrf": token}
    response = aiohttp_jinja2.render_template("login.html", request, context, status=status)
    set_cookie(request, response, LOGIN_COOKIE, token, LOGIN_FORM_TTL_S)
    return response


def set_cookie(request: web.Request, response: web.StreamResponse, name: str, value: str, ttl_s: int) -> None:
    """Set one of the console's cookies: HttpOnly, SameSite Strict, Secure over HTTPS, for /console/ only."""
    response.set_cookie(
        name, value, max_age=ttl_s, path=PREFIX, httponly=True, samesite="Strict", secure=is_https(request)
    )


def is_https(request: web.Request) -> bool:
    """Whether the browser reached the relay over HTTPS (behind a trusted proxy too): cookies are Secure.

    From the request, not RELAY_PUBLIC_URL: that is the senders' URL, while operators may come in over
    the operators' port in plain HTTP (compose: 127.0.0.1:8081), where a Secure cookie would not return."""
    return public_url(request, None, request.app[SETTINGS].trusted_proxies).startswith("https://")


def csrf_refusal() -> web.Response:
    return error_response(403, "csrf_refused", "the form's CSRF token is missing or wrong: reload the page")


def page(template: str, nav: str = "") -> Callable[[PageHandler], Callable[[web.Request], Awaitable[Any]]]:
    """Decorate a console handler: session required (else 401 + login form), CSRF checked on POST, its
    returned context rendered into ``template`` (a returned response is passed through)."""

    def decorate(handler: PageHandler) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        @functools.wraps(handler)
        async def wrapped(request: web.Request) -> web.StreamResponse:
            session = await session_of(request)
            if session is None:
                return login_form(request)
            if request.method == "POST":
                form = await request.post()
                given = form.get(CSRF_FIELD)
                if not csrf_matches(session, given if isinstance(given, str) else None):
                    log.warning("console: %s %s refused: bad CSRF token", request.method, request.path)
                    return csrf_refusal()
            result = await handler(request)
            if isinstance(result, web.StreamResponse):
                return result
            return render(request, template, {"nav": nav, **result})

        return wrapped

    return decorate
