"""Reloading the mapping config in a running ingress: on SIGHUP (``relay.ingress.serve``), on
``POST /admin/config/reload`` and when ``relay dev`` sees the file change.

The new file is checked as ``relay serve`` checks it at start (schema, cross-route rules, the accounts, every
source's secret variables) and its verifiers are built before it replaces the old config in one assignment.
An invalid file is refused with its problems logged, and the old config stays in force.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping

from aiohttp import web

from relay.errors import ConfigError
from relay.infra.logs import register_secrets
from relay.ingress.state import CONFIG, METRICS, SETTINGS, LiveConfig
from relay.ingress.verify import build_verifiers, source_secrets
from relay.mapping.config import RelayConfig, load_config
from relay.mapping.version import ConfigVersion
from relay.settings import Settings, secret_environment

log = logging.getLogger(__name__)


def live_config(settings: Settings, config: RelayConfig, environ: Mapping[str, str]) -> LiveConfig:
    """``config`` with its sources' verifiers; ConfigError when a source's secret variable is missing."""
    verifiers = build_verifiers(config.sources, environ, str(settings.config_path))
    register_secrets(source_secrets(config.sources, environ))  # never in a log line
    return LiveConfig(config, verifiers, ConfigVersion.of(config))


def _load(settings: Settings) -> LiveConfig:
    config = load_config(settings.config_path, settings.account_names())
    return live_config(settings, config, secret_environment())


async def reload_config(app: web.Application, trigger: str) -> LiveConfig:
    """Load the config file again and put it in force; ConfigError (logged) leaves the old one serving."""
    slot = app[CONFIG]
    async with slot.reloading:  # a SIGHUP and an admin request at once load the file one after the other
        old = slot.current.version.hash
        try:
            live = await asyncio.to_thread(_load, app[SETTINGS])
        except ConfigError as exc:
            log.error(
                "config reload (%s) refused, version %s stays in force: %s",
                trigger,
                old,
                "; ".join(map(str, exc.problems)),
                extra={"config_version": old, "problems": len(exc.problems)},
            )
            raise
        slot.current = live
    app[METRICS].config_loaded(live.version.hash, live.version.loaded_at_s)
    log.info(
        "config reloaded (%s): version %s (was %s), %d source(s), %d route(s)",
        trigger,
        live.version.hash,
        old,
        len(live.config.sources),
        len(live.config.routes),
        extra={"config_version": live.version.hash},
    )
    return live
