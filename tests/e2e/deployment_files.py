"""Readers of the deployment files, for the tests that check them and the test that runs rq-dashboard."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "docker-compose.yml"
# Compose's ${NAME}, ${NAME:-default} (unset or empty), ${NAME-default} (unset) and $$.
_VARIABLE = re.compile(r"\$\$|\$\{(?P<name>\w+)(?:(?P<op>:?-)(?P<default>[^}]*))?\}|\$(?P<bare>\w+)")


def interpolate(value: Any, env: dict[str, str]) -> Any:
    """A compose file's values with its variables replaced as Compose does."""
    if isinstance(value, dict):
        return {key: interpolate(item, env) for key, item in value.items()}
    if isinstance(value, list):
        return [interpolate(item, env) for item in value]
    if not isinstance(value, str):
        return value

    def replace(match: re.Match[str]) -> str:
        if match[0] == "$$":
            return "$"
        name, op = match["name"] or match["bare"], match["op"]
        if name in env and (env[name] or op != ":-"):
            return env[name]
        return match["default"] if op else ""

    return _VARIABLE.sub(replace, value)


def compose(env: dict[str, str] | None = None) -> dict[str, Any]:
    """docker-compose.yml as Compose reads it with these variables set (none: every default)."""
    loaded: dict[str, Any] = interpolate(yaml.safe_load(COMPOSE_FILE.read_text(encoding="utf-8")), env or {})
    return loaded


def dockerfile_stages() -> dict[str, list[str]]:
    """The Dockerfile's instructions by stage name (continuation lines joined), in order."""
    text = (ROOT / "Dockerfile").read_text(encoding="utf-8").replace("\\\n", " ")
    stages: dict[str, list[str]] = {}
    current: list[str] = []
    for line in text.splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        if line.startswith("FROM "):
            current = stages.setdefault(line.split(" AS ")[1].strip(), [])
        current.append(" ".join(line.split()))
    return stages


def dashboard_arguments() -> list[str]:
    """rq-dashboard's options as docker-compose.yml runs it: the image's entrypoint, then the command."""
    [entrypoint] = [line for line in dockerfile_stages()["dashboard"] if line.startswith("ENTRYPOINT ")]
    program, *options = json.loads(entrypoint.removeprefix("ENTRYPOINT "))
    assert program == "rq-dashboard"
    return [*options, *compose()["services"]["rq-dashboard"]["command"]]
