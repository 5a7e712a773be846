"""Registering the console on the ingress app: its pages, login, static files and security headers."""

from __future__ import annotations

from pathlib import Path

from aiohttp import web

from relay.infra.access import AdminToken
from relay.ingress.console import deadletters, events, overview, routes
from relay.ingress.console.login import ADMIN_TOKEN, log_in, log_out, show_login
from relay.ingress.console.render import add_security_headers, setup_templates
from relay.settings import Settings

STATIC_DIR = Path(__file__).parent / "static"


def add_console_routes(app: web.Application, settings: Settings) -> None:
    """Register ``/console/`` when RELAY_ADMIN_TOKEN is set (and not empty); else it answers 404."""
    token = AdminToken(settings.admin_token)
    if not token.configured:
        return
    app[ADMIN_TOKEN] = token
    setup_templates(app)
    app.on_response_prepare.append(add_security_headers)
    router = app.router
    router.add_get("/console/login", show_login)
    router.add_post("/console/login", log_in)
    router.add_post("/console/logout", log_out)
    router.add_static("/console/static/", STATIC_DIR, name="console-static", append_version=False)
    overview.add_routes(router)
    events.add_routes(router)
    deadletters.add_routes(router)
    routes.add_routes(router)
