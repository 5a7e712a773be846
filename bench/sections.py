"""Sections of docs/performance.md that a benchmark of its own writes (``bench/search.py``), between
markers, so that ``bench/run.py --write`` keeps them and each can be run again without the others."""

from __future__ import annotations

import re
from pathlib import Path

_SECTION = re.compile(r"<!-- section: (?P<name>[\w.-]+) -->\n.*?<!-- end: (?P=name) -->\n", re.DOTALL)


def kept(path: Path) -> str:
    """Every marked section of the document at ``path`` (empty when none, or no document)."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError:
        return ""
    return "".join(match[0] for match in _SECTION.finditer(text))


def write_section(path: Path, name: str, markdown: str) -> None:
    """Put ``markdown`` in the document's section ``name``: in place of its last version, else at the end."""
    block = f"<!-- section: {name} -->\n{markdown.rstrip()}\n<!-- end: {name} -->\n"
    text = path.read_text(encoding="utf-8") if path.exists() else ""
    pattern = re.compile(
        rf"<!-- section: {re.escape(name)} -->\n.*?<!-- end: {re.escape(name)} -->\n", re.DOTALL
    )
    text = pattern.sub(lambda _: block, text) if pattern.search(text) else text.rstrip("\n") + "\n\n" + block
    path.write_text(text, encoding="utf-8")


def table(rows: list[list[str]]) -> str:
    """A table in the style of docs/performance.md's."""
    header = ["", "figure", "target", "baseline", "measured", "ratio", "result"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)
