"""The operator console at ``/console/``: server-rendered pages (Jinja2 through aiohttp-jinja2), no build
step, nothing loaded from elsewhere, every page usable without JavaScript.

Contract for every page module (``overview``, ``events``, ``deadletters``, ``routes`` ...):

- Registration: each module has ``add_routes(router: web.UrlDispatcher)``, called from
  ``wiring.add_console_routes(app, settings)``, which ``relay.ingress.app`` calls. Without
  ``RELAY_ADMIN_TOKEN`` nothing is registered and everything under ``/console/`` answers 404.
- Handlers: decorate with ``render.page("x.html", nav="events")``. The handler returns the template's
  context (a Mapping), or a finished ``web.StreamResponse`` (e.g. ``render.render(request, "y.html", ctx)``
  for another template, or a redirect). The decorator answers 401 with the login form when there is no
  session (no redirect), and for a POST checks the form field ``csrf_token`` against the session's
  (``403 {"error": "csrf_refused"}`` when missing or wrong) BEFORE the handler runs; the handler may then
  ``await request.post()`` again (aiohttp caches it).
- Templates live in ``console/templates/`` and extend ``base.html`` (blocks ``title``, ``head``,
  ``content``; ``nav`` picks the highlighted menu item: overview, events, dead-letters, routes).
  Autoescape is ON for every template and undefined names raise (StrictUndefined): never use ``|safe``
  or ``Markup`` on anything a sender controls. Every POST form contains ``{{ csrf_field() }}`` (in a
  macro, import it ``with context``). Context every page gets: ``csrf_field``, ``csrf_token``,
  ``config_version``, ``nav``. Filters: ``timestamp`` (epoch s -> UTC text).
- Static files: ``console/static/`` served at ``/console/static/<file>``; CSS and any script are files
  there (``<script src="/console/static/x.js">``): the CSP forbids inline script and style attributes
  and anything from another origin. Package data is declared in pyproject.
- Security headers (CSP without unsafe-inline, nosniff, no-referrer, no-store, frame denial) are added to
  every answer under ``/console/`` by an ``on_response_prepare`` hook: nothing to do per page.
- Redis: blocking reads go through ``relay.ingress.state.in_thread(request, func, app[REDIS], ...)``.

Access: ``POST /console/login`` (form field ``token`` = RELAY_ADMIN_TOKEN, plus the login form's own CSRF
token doubled in a cookie) sets the session cookie ``relay_console`` (HttpOnly, SameSite=Strict, Secure
over HTTPS, Max-Age RELAY_CONSOLE_SESSION_TTL_S); sessions live in Redis (``access``), so ``POST
/console/logout`` and expiry are real. ``GET /console/login?once=TOKEN`` logs in with a one-time link
(``relay dev`` prints one; ``access.issue_login_link_token``).
"""

from relay.ingress.console.wiring import add_console_routes

__all__ = ["add_console_routes"]
