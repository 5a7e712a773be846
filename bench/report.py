"""The table of figures: each row a figure with its target and baseline, as medians over the repetitions."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from bench.harness import Figures, Summary, summarise
from bench.targets import Row, rows


@dataclass(frozen=True)
class Line:
    """One row of the rendered table."""

    row: Row
    target: str
    baseline: str
    measured: str
    ratio: str
    verdict: str
    miss: str | None = None


def _format(value: float, unit: str) -> str:
    if unit == "ms":
        text = f"{value:.1f}" if value < 100 else f"{value:.0f}"
    elif unit == "x":
        text = f"{value:.2f}"
    elif unit in ("/s", "MiB"):
        text = f"{value:.0f}" if value >= 10 else f"{value:.1f}"
    elif unit == "s":
        text = f"{value:.1f}"
    else:
        text = f"{value:.0f}" if value == round(value) else f"{value:.1f}"
    return f"{text} {unit}".strip()


def _summary_text(summary: Summary, unit: str, ratio: bool = False) -> str:
    def shown(value: float, with_unit: bool = True) -> str:
        if ratio:
            return f"{value:.2f}" + ("x" if with_unit else "")
        return _format(value, unit if with_unit else "")

    if summary.runs == 1 or summary.low == summary.high:
        return shown(summary.median)
    return f"{shown(summary.median)} ({shown(summary.low, False)}-{shown(summary.high, False)})"


def _collect(repeats: Sequence[Figures], key: str) -> Summary | None:
    values = [figures.values[key] for figures in repeats if key in figures.values]
    return summarise(values) if values else None


def _note(repeats: Sequence[Figures], key: str) -> str | None:
    prefix = key.rsplit(".", 1)[0]
    for figures in repeats:
        for name in (key, prefix):
            if name in figures.notes:
                return figures.notes[name]
    return None


def build_lines(repeats: Sequence[Figures], workers: int) -> list[Line]:
    """The table: medians (min-max) over the repetitions; verdicts on the medians."""
    lines, notes_shown = [], set()
    for row in rows(workers):
        measured = _collect(repeats, row.key)
        if measured is None:
            note = _note(repeats, row.key)
            if note is not None and note not in notes_shown:  # once: the other rows of the case follow it
                notes_shown.add(note)
                lines.append(Line(row, "", "", note, "", "n/a"))
            continue
        baseline = _collect(repeats, row.baseline) if row.baseline else None
        ratio = _collect(repeats, row.ratio) if row.ratio else None
        verdict, miss = "", None
        if row.target is not None:
            judged = ratio if row.target.on == "ratio" else measured
            if judged is None:
                verdict = "n/a"
            elif row.target.met(judged.median):
                verdict = "PASS"
            else:
                verdict = "MISS"
                miss = _miss_text(row, judged.median)
        lines.append(
            Line(
                row,
                _target_text(row),
                _summary_text(baseline, row.unit) if baseline else "",
                _summary_text(measured, row.unit),
                _summary_text(ratio, "", ratio=True) if ratio else "",
                verdict,
                miss,
            )
        )
    return lines


def _target_text(row: Row) -> str:
    if row.target is None:
        return ""
    target = row.target
    bound = f"{target.bound:.2f}x baseline" if target.on == "ratio" else _format(target.bound, row.unit)
    return f"{target.op} {bound}".replace(">=", "≥").replace("<=", "≤").replace("==", "=")


def _miss_text(row: Row, value: float) -> str:
    assert row.target is not None
    bound = row.target.bound
    shown = f"{value:.2f}x" if row.target.on == "ratio" else _format(value, row.unit)
    by = f"{abs(value - bound) / bound * 100:.0f} %" if bound else f"{value:g}"
    return f"{row.section}, {row.label}: {shown} against {_target_text(row)} (off by {by})"


def render_text(lines: Sequence[Line]) -> str:
    """The table for a terminal."""
    headers = ("figure", "target", "baseline", "measured", "ratio", "result")
    cells = [
        (
            f"{line.row.section[:2]} {line.row.label}",
            line.target,
            line.baseline,
            line.measured,
            line.ratio,
            line.verdict,
        )
        for line in lines
    ]
    widths = [max(len(str(cell[i])) for cell in [headers, *cells]) for i in range(len(headers))]
    widths[0] = min(widths[0], 72)
    out = []
    for cell in [headers, *cells]:
        padded = (str(value)[: widths[i]].ljust(widths[i]) for i, value in enumerate(cell))
        out.append("  ".join(padded).rstrip())
    return "\n".join(out)


def render_markdown(lines: Sequence[Line]) -> str:
    out = ["| | figure | target | baseline | measured | ratio | result |", "|---|---|---|---|---|---|---|"]
    section = ""
    for line in lines:
        shown = line.row.section if line.row.section != section else ""
        section = line.row.section
        verdict = f"**{line.verdict}**" if line.verdict == "MISS" else line.verdict
        out.append(
            f"| {shown} | {line.row.label} | {line.target} | {line.baseline} | {line.measured} | "
            f"{line.ratio} | {verdict} |"
        )
    return "\n".join(out)
