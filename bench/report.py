"""The table of figures: each row a figure with its target and baseline, as medians over the repetitions."""

from __future__ import annotations

import operator
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from bench.harness import Figures, Summary, summarise

MEMORY_TARGET_MIB = 1.5 * 1024  # "under 1.5 GB" read as 1.5 GiB
_OPERATORS: dict[str, Callable[[float, float], bool]] = {
    ">=": operator.ge,
    "<=": operator.le,
    "==": operator.eq,
}


@dataclass(frozen=True)
class Target:
    """A bound on a figure's median (``on="value"``) or on its median ratio to the baseline."""

    op: str
    bound: float
    on: str = "value"

    def met(self, value: float) -> bool:
        return _OPERATORS[self.op](value, self.bound)


@dataclass(frozen=True)
class Row:
    section: str
    label: str
    key: str
    unit: str = ""
    baseline: str | None = None
    ratio: str | None = None
    target: Target | None = None


def rows(workers: int) -> list[Row]:
    """Every figure the report shows, in order. ``workers`` is the pool size of the 300 ms case."""
    ingress, delivery, latency = "1. Ingress", "2. Delivery", "3. Latency"
    burst, memory = "4. Burst", "5. Memory"
    bare = "ingress.bare"
    return [
        Row(ingress, "accepted/s: bare aiohttp, read body, 202 (the baseline)", f"{bare}.rate", "/s"),
        Row(
            ingress,
            "accepted/s: naive aiohttp + RQ Queue.enqueue (reference ~0.12x)",
            "ingress.naive.rate",
            "/s",
            f"{bare}.rate",
            "ingress.naive.ratio",
        ),
        Row(
            ingress,
            "accepted/s: relay serve, 1 process",
            "ingress.relay.rate",
            "/s",
            f"{bare}.rate",
            "ingress.relay.ratio",
            Target(">=", 0.5, on="ratio"),
        ),
        Row(ingress, "p50 answer: relay serve, 1 process", "ingress.relay.p50_ms", "ms", f"{bare}.p50_ms"),
        Row(
            ingress,
            "p99 answer: relay serve, 1 process",
            "ingress.relay.p99_ms",
            "ms",
            f"{bare}.p99_ms",
            target=Target("<=", 25),
        ),
        Row(
            ingress,
            "webhooks not answered 2xx: relay serve, 1 process",
            "ingress.relay.refused",
            target=Target("==", 0),
        ),
        Row(
            ingress,
            "answered as duplicates: relay serve, 1 process",
            "ingress.relay.duplicates",
            target=Target("==", 0),
        ),
        Row(
            ingress,
            "accepted/s: relay serve --processes 2",
            "ingress.relay2.rate",
            "/s",
            f"{bare}.rate",
            "ingress.relay2.ratio",
        ),
        Row(ingress, "scaling: 2 processes / 1 process", "ingress.relay2.scaling", "x"),
        Row(
            ingress,
            "p99 answer: relay serve --processes 2",
            "ingress.relay2.p99_ms",
            "ms",
            f"{bare}.p99_ms",
            target=Target("<=", 25),
        ),
        Row(
            ingress,
            "webhooks not answered 2xx: relay serve --processes 2",
            "ingress.relay2.refused",
            target=Target("==", 0),
        ),
        Row(
            delivery,
            "runs/s: 1 relay worker, sandbox at once (baseline: stock RQ SimpleWorker, no-op)",
            "delivery.relay1.rate",
            "/s",
            "delivery.rq.rate",
            "delivery.relay1.ratio",
            Target(">=", 0.8, on="ratio"),
        ),
        Row(
            delivery,
            f"sustained runs/s: {workers} workers, runner answering after 300 ms",
            "delivery.pool.rate",
            "/s",
            target=Target(">=", 55),
        ),
        Row(
            delivery,
            "most runs in any 5 s window (Plivo allows 300)",
            "delivery.pool.max_5s",
            target=Target("<=", 300),
        ),
        Row(
            delivery,
            f"all {workers} worker processes, peak RSS sum",
            "delivery.pool.rss_mib",
            "MiB",
            target=Target("<=", MEMORY_TARGET_MIB),
        ),
        Row(delivery, f"all {workers} worker processes, peak PSS sum", "delivery.pool.pss_mib", "MiB"),
        Row(
            latency,
            "webhook arrival to runner receipt, p50 (50 events/s, idle workers)",
            "latency.p50_ms",
            "ms",
            target=Target("<=", 10),
        ),
        Row(
            latency, "webhook arrival to runner receipt, p99", "latency.p99_ms", "ms", target=Target("<=", 50)
        ),
        Row(latency, "webhook arrival to runner receipt, max", "latency.max_ms", "ms"),
        Row(latency, "ingress answer at 50 events/s, p99", "latency.answer_p99_ms", "ms"),
        Row(latency, "events measured", "latency.events"),
        Row(latency, "rate the generator achieved", "latency.sent_per_s", "/s"),
        Row(burst, "webhooks sent", "burst.sent"),
        Row(burst, "not answered 202 (must all be accepted)", "burst.not_accepted", target=Target("==", 0)),
        Row(burst, "answered 5xx", "burst.server_errors", target=Target("==", 0)),
        Row(burst, "ingress accepted/s during the burst (1 process)", "burst.ingress_rate", "/s"),
        Row(burst, "p99 answer during the burst", "burst.answer_p99_ms", "ms"),
        Row(burst, "drain: first arrival to last run ended", "burst.drain_s", "s"),
        Row(burst, "delivered", "burst.delivered"),
        Row(burst, "dead-lettered", "burst.dead_lettered"),
        Row(
            burst,
            "lost (accepted, neither delivered nor dead-lettered)",
            "burst.lost",
            target=Target("==", 0),
        ),
        Row(
            memory,
            "ingress process under load (wrk, 32 connections), peak RSS",
            "ingress.relay.rss_mib",
            "MiB",
        ),
        Row(memory, "ingress process during the burst, peak RSS", "burst.ingress_rss_mib", "MiB"),
        Row(memory, "one worker process, idle, RSS", "worker.idle_rss_mib", "MiB"),
        Row(memory, "one worker process, busy (largest seen), RSS", "worker.busy_rss_mib", "MiB"),
    ]


def derive(figures: Figures) -> None:
    """Figures computed from others within one repetition."""
    values = figures.values
    if "ingress.relay2.rate" in values and "ingress.relay.rate" in values:
        values["ingress.relay2.scaling"] = values["ingress.relay2.rate"] / values["ingress.relay.rate"]
    if "burst.sent" in values:
        values["burst.not_accepted"] = values["burst.sent"] - values["burst.accepted"]


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
