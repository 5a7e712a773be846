#!/usr/bin/env python3
"""Refresh docs/img/rq-dashboard-*.png and docs/img/console-*.png: runs the browser tests of rq-dashboard and
of the console, keeping their screenshots.

.venv/bin/python docs/screenshots.py
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

if __name__ == "__main__":
    env = {**os.environ, "RELAY_SCREENSHOT_DIR": str(ROOT / "docs" / "img"), "RELAY_REQUIRE_BROWSER": "1"}
    tests = ["tests/e2e/test_dashboard_browser.py", "tests/e2e/test_console_browser.py"]
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *tests]
    raise SystemExit(subprocess.call(command, cwd=ROOT, env=env))
