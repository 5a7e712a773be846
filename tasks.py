#!/usr/bin/env python3
"""The project's two commands, for a machine with nothing but Python 3.11+.

    python3 tasks.py run    # relay dev: embedded Redis, ingress, worker and runner sandbox
    python3 tasks.py test   # ruff, mypy, the import layers and the whole test suite

Each creates ``.venv`` on first use and installs what it needs there: ``run`` the relay with its
embedded-Redis extra only, ``test`` the dev extra too. The install stamp records pyproject.toml's hash
and the extras installed, so switching between the two commands installs only what is missing.
Standard library only: it runs before anything is installed.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import venv
from pathlib import Path
from types import FrameType

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
BIN = VENV / ("Scripts" if os.name == "nt" else "bin")
STAMP = VENV / ".phlo-relay-installed"
RUN_EXTRAS = frozenset({"embedded"})
TEST_EXTRAS = frozenset({"embedded", "dev"})


def _run(*command: str | Path) -> None:
    print("+", " ".join(str(part) for part in command), flush=True)
    subprocess.run([str(part) for part in command], cwd=ROOT, check=True)


def _installed_extras(pyproject_sha256: str) -> frozenset[str]:
    """The extras the stamp says are installed for this pyproject.toml; none if it changed since."""
    try:
        stamp = json.loads(STAMP.read_text())
    except (OSError, ValueError):
        return frozenset()  # no stamp, or one written by an older tasks.py: install again
    if not isinstance(stamp, dict) or stamp.get("pyproject_sha256") != pyproject_sha256:
        return frozenset()
    return frozenset(stamp.get("extras", []))


def ensure_environment(extras: frozenset[str]) -> None:
    """Create the virtual environment and install the project with ``extras`` into it when needed."""
    if sys.version_info < (3, 11):  # noqa: UP036 - this script is what tells users on older Pythons
        sys.exit(f"phlo-relay needs Python 3.11 or newer; this is {sys.version.split()[0]}")
    pyproject_sha256 = hashlib.sha256((ROOT / "pyproject.toml").read_bytes()).hexdigest()
    installed = _installed_extras(pyproject_sha256)
    if extras <= installed:
        return
    if not (BIN / "python").exists():
        print(f"creating {VENV}", flush=True)
        venv.EnvBuilder(with_pip=True, clear=True).create(VENV)
    # Extras already installed stay in the stamp: a venv set up for `test` still serves `run` as it is.
    wanted = sorted(extras | installed)
    pip: list[str | Path] = [BIN / "python", "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    _run(*pip, "-e", f".[{','.join(wanted)}]")
    STAMP.write_text(json.dumps({"pyproject_sha256": pyproject_sha256, "extras": wanted}))


def run(args: list[str]) -> int:
    """Start the relay with everything it needs on this machine; Ctrl-C stops it and returns its status."""
    ensure_environment(RUN_EXTRAS)
    child: subprocess.Popen[bytes] | None = None

    def pass_on(signum: int, _frame: FrameType | None) -> None:
        # A terminal's Ctrl-C reaches the whole process group, relay dev included; a signal sent to this
        # process alone (kill, a supervisor) is passed on. relay dev takes a repeated signal as the same stop.
        if child is not None and child.poll() is None:
            child.send_signal(signum)

    # Handlers, not SIG_IGN: a caught signal is reset to its default in the exec'd child, so relay dev
    # still gets Python's own Ctrl-C handling until its event loop installs its handlers.
    signal.signal(signal.SIGINT, pass_on)
    signal.signal(signal.SIGTERM, pass_on)
    child = subprocess.Popen([str(BIN / "relay"), "dev", *args], cwd=ROOT)
    code = child.wait()
    return 128 - code if code < 0 else code  # killed by signal N: the shell's 128 + N


def test(args: list[str]) -> int:
    """Lint, type-check, check the import layers and run every test."""
    ensure_environment(TEST_EXTRAS)
    steps: list[list[str | Path]] = [
        [BIN / "ruff", "check", "."],
        [BIN / "ruff", "format", "--check", "."],
        [BIN / "mypy"],
        [BIN / "lint-imports", "--no-cache"],
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
    try:
        return commands[sys.argv[1]](sys.argv[2:])
    except KeyboardInterrupt:  # Ctrl-C while installing: the shell's status for it, no traceback
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
