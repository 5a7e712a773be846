"""Registering the console on the ingress app: its pages, login, static files and security headers."""

from __future__ import annotations

from pathlib import Path

from aiohttp import web

from relay.ingress.console import deadletters, events, overview, routes
from relay.ingress.console.access import token_digest
from relay.ingress.console.login import ADMIN_DIGEST, log_in, log_out, show_login
from relay.ingress.console.render import add_security_headers, setup_templates
from relay.settings import Settings

STATIC_DIR = Path(__file__).parent / "static"


def add_console_routes(app: web.Application, settings: Settings) -> None:
    """Register ``/console/`` when RELAY_ADMIN_TOKEN is set (and not empty); else it answers 404."""
    token = settings.admin_token.get_secret_value() if settings.admin_token is not None else ""
    if not token.strip():
        return
    app[ADMIN_DIGEST] = token_digest(token)
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
