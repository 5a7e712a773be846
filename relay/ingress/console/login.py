"""Logging in to the console (the admin token, or a one-time link of ``relay dev``) and out."""

from __future__ import annotations

import hmac
import logging

from aiohttp import web

from relay.infra.access import AdminToken
from relay.ingress.checks.request import sent
from relay.ingress.console.access import (
    SESSION_COOKIE,
    begin_session,
    end_session,
    login_blocked_for_s,
    note_login_failure,
    use_login_link_token,
)
from relay.ingress.console.render import (
    CSRF_FIELD,
    LOGIN_COOKIE,
    PREFIX,
    csrf_refusal,
    login_form,
    page,
    set_cookie,
)
from relay.ingress.origin import client_ip
from relay.ingress.state import REDIS, SETTINGS, in_thread

log = logging.getLogger(__name__)
ADMIN_TOKEN = web.AppKey("console_admin_token", AdminToken)


async def _logged_in(request: web.Request) -> web.Response:
    settings = request.app[SETTINGS]
    ttl_s = settings.console_session_ttl_s
    session_id, _ = await in_thread(request, begin_session, request.app[REDIS], ttl_s)
    response = web.Response(status=303, headers={"Location": PREFIX})
    set_cookie(request, response, SESSION_COOKIE, session_id, ttl_s)
    response.del_cookie(LOGIN_COOKIE, path=PREFIX)
    return response


async def show_login(request: web.Request) -> web.Response:
    """``GET /console/login``: the form; with ``?once=TOKEN`` (``relay dev``'s link), logged in at once."""
    once = request.query.get("once")
    if once is not None:
        if await in_thread(request, use_login_link_token, request.app[REDIS], once):
            return await _logged_in(request)
        return login_form(request, message="That login link was used already or has expired.")
    return login_form(request, status=200)


async def log_in(request: web.Request) -> web.Response:
    """``POST /console/login`` with the admin token: a session cookie, then the Overview."""
    form = await request.post()
    given_csrf, cookie = form.get(CSRF_FIELD), request.cookies.get(LOGIN_COOKIE)
    if not (isinstance(given_csrf, str) and cookie and hmac.compare_digest(sent(given_csrf), sent(cookie))):
        log.warning("console login refused: bad CSRF token from %s", request.remote)
        return csrf_refusal()
    redis, client = request.app[REDIS], client_ip(request, request.app[SETTINGS].trusted_proxies) or "?"
    wait_s = await in_thread(request, login_blocked_for_s, redis, client)
    if wait_s:
        log.warning("console login refused: too many wrong tokens from %s", client)
        message = f"Too many wrong tokens from your address: try again in {wait_s // 60 + 1} min."
        return login_form(request, status=429, message=message)
    token = form.get("token")
    if not isinstance(token, str) or not request.app[ADMIN_TOKEN].matches(token):
        log.warning("console login refused: wrong admin token from %s", client)
        await in_thread(request, note_login_failure, redis, client)
        return login_form(request, message="That is not the admin token (RELAY_ADMIN_TOKEN).")
    log.info("console: logged in from %s", request.remote)
    return await _logged_in(request)


@page("login.html")
async def log_out(request: web.Request) -> web.StreamResponse:
    """``POST /console/logout``: the session ends in Redis (for every process) and its cookie is dropped."""
    await in_thread(request, end_session, request.app[REDIS], request.cookies.get(SESSION_COOKIE))
    response = login_form(request, status=200, message="Logged out.")
    response.del_cookie(SESSION_COOKIE, path=PREFIX)
    return response
