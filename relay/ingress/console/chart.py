"""A line chart of counts per minute, drawn as SVG by the server: no script, no library in the browser.

Written by hand: it is a few polylines and labels, which a charting library (and its JavaScript) would
not make simpler, and the CSP allows no inline style, which most server-side SVG libraries emit.
"""

from __future__ import annotations

from dataclasses import dataclass

WIDTH, HEIGHT = 720, 200
LEFT, RIGHT, TOP, BOTTOM = 44, 10, 10, 24  # margins for the axes' labels


@dataclass(frozen=True)
class Line:
    name: str
    css_class: str  # its colour, from console.css
    points: str  # the polyline's "x,y x,y ..."
    total: int


@dataclass(frozen=True)
class Tick:
    x: float
    y: float
    label: str


@dataclass(frozen=True)
class Chart:
    width: int
    height: int
    lines: list[Line]
    y_ticks: list[Tick]
    x_ticks: list[Tick]
    plot_left: int
    plot_right: int
    plot_top: int
    plot_bottom: int
    summary: str  # the chart as text, for screen readers and tests


def _nice_max(value: int) -> int:
    """The smallest of 1, 2, 5 x 10^n at or above ``value`` (at least 1): round numbers on the y axis."""
    step = 1
    while True:
        for factor in (1, 2, 5):
            if factor * step >= value:
                return max(1, factor * step)
        step *= 10


def per_minute_chart(series: dict[str, tuple[str, list[int]]], minutes: int) -> Chart:
    """``series``: name -> (css class, counts per minute, oldest first, ``minutes`` of them)."""
    top = _nice_max(max((max(counts, default=0) for _, counts in series.values()), default=0))
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM

    def x(i: int) -> float:
        return LEFT + plot_w * i / max(1, minutes - 1)

    def y(count: int) -> float:
        return TOP + plot_h * (1 - count / top)

    lines = [
        Line(
            name,
            css_class,
            " ".join(f"{x(i):.1f},{y(count):.1f}" for i, count in enumerate(counts)),
            sum(counts),
        )
        for name, (css_class, counts) in series.items()
    ]
    y_ticks = [Tick(LEFT - 6, y(value), str(value)) for value in (0, top // 2, top) if value or top]
    x_ticks = [
        Tick(x(i), HEIGHT - 6, "now" if i == minutes - 1 else f"-{minutes - 1 - i} min")
        for i in range(0, minutes, max(1, minutes // 6))
    ]
    if minutes > 1 and x_ticks[-1].label != "now":
        x_ticks.append(Tick(x(minutes - 1), HEIGHT - 6, "now"))
    summary = "; ".join(f"{line.name}: {line.total} in the last {minutes} min" for line in lines)
    return Chart(WIDTH, HEIGHT, lines, y_ticks, x_ticks, LEFT, WIDTH - RIGHT, TOP, HEIGHT - BOTTOM, summary)
