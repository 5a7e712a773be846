#!/usr/bin/env python3
"""The project's two commands, for a machine with nothing but Python 3.11+.

    python3 tasks.py run    # relay dev: embedded Redis, ingress, worker and runner sandbox
    python3 tasks.py test   # ruff, mypy and the whole test suite

Each creates ``.venv`` on first use and installs the project with its dev and embedded-Redis extras,
again only when pyproject.toml changes. Standard library only: it runs before anything is installed.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
BIN = VENV / ("Scripts" if os.name == "nt" else "bin")
STAMP = VENV / ".phlo-relay-installed"


def _run(*command: str | Path) -> None:
    print("+", " ".join(str(part) for part in command), flush=True)
    subprocess.run([str(part) for part in command], cwd=ROOT, check=True)


def ensure_environment() -> None:
    """Create the virtual environment and install the project into it when needed."""
    if sys.version_info < (3, 11):  # noqa: UP036 - this script is what tells users on older Pythons
        sys.exit(f"phlo-relay needs Python 3.11 or newer; this is {sys.version.split()[0]}")
    wanted = hashlib.sha256((ROOT / "pyproject.toml").read_bytes()).hexdigest()
    if STAMP.exists() and STAMP.read_text() == wanted:
        return
    if not (BIN / "python").exists():
        print(f"creating {VENV}", flush=True)
        venv.EnvBuilder(with_pip=True, clear=True).create(VENV)
    _run(BIN / "python", "-m", "pip", "install", "--quiet", "--upgrade", "pip")
    _run(BIN / "python", "-m", "pip", "install", "--quiet", "-e", ".[dev]")
    STAMP.write_text(wanted)


def run(args: list[str]) -> int:
    """Start the relay with everything it needs on this machine."""
    ensure_environment()
    return subprocess.call([str(BIN / "relay"), "dev", *args], cwd=ROOT)


def test(args: list[str]) -> int:
    """Lint, type-check and run every test."""
    ensure_environment()
    steps: list[list[str | Path]] = [
        [BIN / "ruff", "check", "."],
        [BIN / "ruff", "format", "--check", "."],
        [BIN / "mypy"],
        [BIN / "python", "-m", "pytest", *args],
    ]
    for step in steps:
        print("+", " ".join(str(part) for part in step), flush=True)
        code = subprocess.call([str(part) for part in step], cwd=ROOT)
        if code:
            return code
    return 0


def main() -> int:
    commands = {"run": run, "test": test}
    if len(sys.argv) < 2 or sys.argv[1] not in commands:
        print(__doc__, file=sys.stderr)
        return 2
    return commands[sys.argv[1]](sys.argv[2:])


if __name__ == "__main__":
    raise SystemExit(main())
