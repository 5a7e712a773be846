"""Every benchmark of phlo-relay beside its baseline, in one run, with one command:

    .venv/bin/python bench/run.py [--quick] [--repeat N] [--only ingress,delivery,latency,burst]
                                  [--write docs/performance.md]

It starts what it measures (Redis, ``relay serve``, ``relay worker``, ``relay sandbox``, the baselines) on
this machine, prints a table of figures against their targets, and writes it with the machine's
description. ``--help`` lists the other options.
"""

from __future__ import annotations

import sys
from pathlib import Path


def _main() -> int:
    # Run as a script, Python puts bench/ on the path, not the repository: the package needs the latter.
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from bench.cli import main

    return main()


if __name__ == "__main__":
    sys.exit(_main())
