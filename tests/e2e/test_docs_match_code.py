"""The README documents what the code offers."""

from __future__ import annotations

import argparse
from pathlib import Path

from relay.cli import build_parser
from relay.mapping.sources import SCHEME_NAMES, Source
from relay.settings import Settings, env_name

README = (Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8")


def test_every_setting_is_in_the_settings_table() -> None:
    missing = [env_name(field) for field in Settings.model_fields if f"`{env_name(field)}" not in README]
    assert missing == []


def test_every_command_is_in_the_commands_table() -> None:
    [commands] = [
        action for action in build_parser()._actions if isinstance(action, argparse._SubParsersAction)
    ]
    missing = [name for name in commands.choices if f"`relay {name}" not in README]
    assert missing == []


def test_every_source_key_and_scheme_is_documented() -> None:
    missing = [f"`{key}`" for key in Source.model_fields if f"| `{key}` |" not in README]
    missing += [f"`{scheme}`" for scheme in SCHEME_NAMES if f"`{scheme}`" not in README]
    assert missing == []
