"""Inline SVG time charts, drawn on the server side: no JavaScript, no fonts or images to fetch.

A report is evidence that is filed and opened years later, possibly
offline, so the charts are plain SVG elements with their numbers as text.
Two kinds: lines (latency percentiles) and stacked bars (decisions), both
over time windows, with incident windows shaded behind the data.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from html import escape
from typing import Final, NamedTuple

from evidence.trail.units import NS, iso

WIDTH: Final = 960
HEIGHT: Final = 280
LEFT: Final = 64
RIGHT: Final = 16
TOP: Final = 28
BOTTOM: Final = 40


class Series(NamedTuple):
    key: str
    label: str
    color: str


class Point(NamedTuple):
    start_ns: int
    values: dict[str, float]


def nice_max(value: float) -> float:
    """The smallest 1, 2, 2.5 or 5 times a power of ten at or above `value` (1 for nothing)."""
    if value <= 0:
        return 1.0
    power = 10 ** math.floor(math.log10(value))
    for step in (1, 2, 2.5, 5, 10):
        if step * power >= value:
            return float(step * power)
    return float(10 * power)  # pragma: no cover


def _number(value: float) -> str:
    if value >= 100 or value == int(value):
        return f"{value:,.0f}"
    return f"{value:.3g}"


def time_chart(
    title: str,
    points: Sequence[Point],
    series: Sequence[Series],
    width_ns: int,
    *,
    stacked: bool = False,
    unit: str = "",
    highlights: Sequence[tuple[int, int]] = (),
) -> str:
    """One chart as an <svg> element; `points` one per window, in time order."""
    label = escape(title)
    if not points:
        return (
            f'<svg class="chart" viewBox="0 0 {WIDTH} 60" role="img" aria-label="{label}">'
            f'<text x="{LEFT}" y="36" class="empty">{label}: no data</text></svg>'
        )
    x0 = points[0].start_ns
    x1 = max(points[-1].start_ns + width_ns, x0 + 1)
    plot_w = WIDTH - LEFT - RIGHT
    plot_h = HEIGHT - TOP - BOTTOM

    def x(t: int) -> float:
        return LEFT + (t - x0) / (x1 - x0) * plot_w

    if stacked:
        peak = max(sum(p.values.get(s.key, 0.0) for s in series) for p in points)
    else:
        peak = max((p.values.get(s.key, 0.0) for p in points for s in series), default=0.0)
    top = nice_max(peak)

    def y(v: float) -> float:
        return TOP + plot_h - v / top * plot_h

    out = [
        f'<svg class="chart" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" aria-label="{label}"'
        ' xmlns="http://www.w3.org/2000/svg">',
        f'<text x="{LEFT}" y="18" class="title">{label}</text>',
    ]
    for start, end in highlights:
        a, b = max(x(start), LEFT), min(x(end), WIDTH - RIGHT)
        if b > a:
            out.append(
                f'<rect class="incident" x="{a:.1f}" y="{TOP}" width="{b - a:.1f}" height="{plot_h}">'
                f"<title>incident candidate {escape(iso(start))} .. {escape(iso(end))}</title></rect>"
            )
    # Axes and gridlines: four steps up the y axis, five time labels along x.
    for i in range(5):
        v = top * i / 4
        yy = y(v)
        out.append(f'<line class="grid" x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{yy:.1f}" y2="{yy:.1f}"/>')
        out.append(f'<text class="tick" x="{LEFT - 6}" y="{yy + 4:.1f}" text-anchor="end">{_number(v)}</text>')
    span_s = (x1 - x0) / NS
    for i in range(5):
        t = x0 + (x1 - x0) * i // 4
        stamp = iso(t)
        text = stamp[11:19] if span_s < 86400 else stamp[5:16].replace("T", " ")
        anchor = "start" if i == 0 else "end" if i == 4 else "middle"
        out.append(f'<text class="tick" x="{x(t):.1f}" y="{HEIGHT - BOTTOM + 16}" text-anchor="{anchor}">{text}</text>')
    if unit:
        out.append(f'<text class="tick" x="8" y="{TOP - 8}">{escape(unit)}</text>')
    out.append(
        f'<text class="tick" x="{WIDTH - RIGHT}" y="{HEIGHT - 6}" text-anchor="end">UTC, {iso(x0)[:10]},'
        f" windows of {_number(width_ns / NS)} s</text>"
    )

    bar_w = max(plot_w * width_ns / (x1 - x0) - 1, 0.5)
    if stacked:
        for point in points:
            base = 0.0
            for s in series:
                v = point.values.get(s.key, 0.0)
                if v <= 0:
                    continue
                top_y, bottom_y = y(base + v), y(base)
                out.append(
                    f'<rect x="{x(point.start_ns):.1f}" y="{top_y:.1f}" width="{bar_w:.1f}"'
                    f' height="{bottom_y - top_y:.1f}" fill="{s.color}">'
                    f"<title>{escape(iso(point.start_ns))} {escape(s.label)}: {_number(v)}</title></rect>"
                )
                base += v
    else:
        for s in series:
            runs: list[list[str]] = []
            previous = None
            for point in points:
                if s.key not in point.values:
                    previous = None
                    continue
                xy = f"{x(point.start_ns) + bar_w / 2:.1f},{y(point.values[s.key]):.1f}"
                if previous is None or point.start_ns - previous > width_ns:
                    runs.append([xy])
                else:
                    runs[-1].append(xy)
                previous = point.start_ns
            for run in runs:
                if len(run) == 1:
                    cx, cy = run[0].split(",")
                    out.append(f'<circle cx="{cx}" cy="{cy}" r="2.5" fill="{s.color}"/>')
                else:
                    out.append(
                        f'<polyline fill="none" stroke="{s.color}" stroke-width="1.8" points="{" ".join(run)}"/>'
                    )
    out.append(f'<line class="axis" x1="{LEFT}" x2="{LEFT}" y1="{TOP}" y2="{TOP + plot_h}"/>')
    out.append(f'<line class="axis" x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{TOP + plot_h}" y2="{TOP + plot_h}"/>')
    # The legend, top right.
    lx = WIDTH - RIGHT
    for s in reversed(series):
        text = escape(s.label)
        lx -= 14 + 7 * len(s.label)
        out.append(f'<rect x="{lx}" y="9" width="10" height="10" fill="{s.color}"/>')
        out.append(f'<text class="legend" x="{lx + 13}" y="18">{text}</text>')
    out.append("</svg>")
    return "".join(out)
