"""Line charts drawn on the server as inline SVG: no script, no external resource.

Each point carries a ``<title>`` (the browser shows it on hover) naming its run, time and value;
a missing value breaks the line instead of being drawn as zero.

Example:
    >>> from datetime import UTC, datetime
    >>> s = Series("KL", [Point(datetime(2026, 11, 26, tzinfo=UTC), 0.1, "run-1")])
    >>> line_chart("KL divergence", [s]).startswith("<svg")
    True

"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from costsim_analytics.api.dashboard.markup import Markup, html, join, num, when

WIDTH, HEIGHT = 560, 250
LEFT, RIGHT, TOP, BOTTOM = 56, 16, 34, 40
# Colour-blind-safe hues, and a marker shape per series so colour is never the only cue.
PALETTE = ("#0969da", "#bc4c00", "#1a7f37", "#8250df")
MARKERS = ("circle", "square", "diamond", "triangle")


@dataclass(frozen=True, slots=True)
class Point:
    """One value of one run; ``value`` None: the run has none (a gap in the line)."""

    at: datetime
    value: float | None
    label: str = ""


@dataclass(frozen=True, slots=True)
class Series:
    """A named line."""

    name: str
    points: Sequence[Point]


def nice_ceiling(value: float) -> float:
    """The smallest of 1, 2, 2.5, 5 x 10^k that is at least ``value`` (1 for nothing)."""
    if not math.isfinite(value) or value <= 0:
        return 1.0
    scale = 10 ** math.floor(math.log10(value))
    for step in (1, 2, 2.5, 5, 10):
        if step * scale >= value * (1 - 1e-12):
            return float(step * scale)
    return float(10 * scale)


def _marker(shape: str, x: float, y: float, color: str) -> Markup:
    if shape == "square":
        return html(
            '<rect x="{:.1f}" y="{:.1f}" width="7" height="7" fill="{}"/>', x - 3.5, y - 3.5, color
        )
    if shape == "diamond":
        pts = f"{x:.1f},{y - 5:.1f} {x + 5:.1f},{y:.1f} {x:.1f},{y + 5:.1f} {x - 5:.1f},{y:.1f}"
        return html('<polygon points="{}" fill="{}"/>', pts, color)
    if shape == "triangle":
        pts = f"{x:.1f},{y - 5:.1f} {x + 5:.1f},{y + 4:.1f} {x - 5:.1f},{y + 4:.1f}"
        return html('<polygon points="{}" fill="{}"/>', pts, color)
    return html('<circle cx="{:.1f}" cy="{:.1f}" r="4" fill="{}"/>', x, y, color)


def line_chart(
    title: str,
    series: Sequence[Series],
    *,
    y_max: float | None = None,
    y_format: Callable[[float], str] = num,
) -> Markup:
    """An SVG line chart of ``series`` over time; ``y_max`` fixes the top of the axis."""
    values = [p.value for s in series for p in s.points if p.value is not None]
    times = [p.at.timestamp() for s in series for p in s.points]
    top = y_max if y_max is not None else nice_ceiling(max(values, default=0.0))
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    t0, t1 = (min(times), max(times)) if times else (0.0, 1.0)

    def x_of(t: float) -> float:
        return LEFT + (plot_w / 2 if t1 == t0 else (t - t0) / (t1 - t0) * plot_w)

    def y_of(v: float) -> float:
        return TOP + plot_h - min(max(v / top, 0.0), 1.0) * plot_h

    frame = '<rect x="{}" y="{}" width="{}" height="{}" class="frame"/>'
    parts: list[Markup] = [html(frame, LEFT, TOP, plot_w, plot_h)]
    for i in range(5):  # horizontal grid and y labels
        v = top * i / 4
        y = y_of(v)
        grid = '<line x1="{x1}" x2="{x2}" y1="{y:.1f}" y2="{y:.1f}" class="grid"/>'
        parts.append(html(grid, x1=LEFT, x2=LEFT + plot_w, y=y))
        parts.append(
            html('<text x="{}" y="{:.1f}" class="ylab">{}</text>', LEFT - 6, y + 4, y_format(v))
        )
    if times:
        parts.extend(_x_labels(t0, t1, x_of))
    if not values:
        no_data = '<text x="{}" y="{}" class="empty">no data yet</text>'
        parts.append(html(no_data, LEFT + plot_w / 2, TOP + plot_h / 2))
    for index, s in enumerate(series):
        color, shape = PALETTE[index % len(PALETTE)], MARKERS[index % len(MARKERS)]
        parts.extend(_line(s, color, shape, x_of, y_of, y_format))
        lx = LEFT + index * 200
        parts.append(_marker(shape, lx + 5, 14, color))
        empty = all(p.value is None for p in s.points)
        name = f"{s.name} (no data)" if empty else s.name
        parts.append(html('<text x="{}" y="18" class="legend">{}</text>', lx + 14, name))
    label = f"{title}: " + "; ".join(
        f"{s.name}, {sum(p.value is not None for p in s.points)} values" for s in series
    )
    return html(
        '<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {w} {h}" width="100%" role="img" '
        'aria-label="{label}"><title>{label}</title><style>'
        ".frame{{fill:#fff;stroke:#d0d7de}} .grid{{stroke:#eaeef2}} "
        ".ylab{{font:11px sans-serif;fill:#57606a;text-anchor:end}} "
        ".xlab{{font:11px sans-serif;fill:#57606a}} "
        ".legend{{font:12px sans-serif;fill:#1b1f24}} "
        ".empty{{font:13px sans-serif;fill:#57606a;text-anchor:middle}}"
        "</style>{body}</svg>",
        w=WIDTH,
        h=HEIGHT,
        label=label,
        body=join(parts),
    )


def _x_labels(t0: float, t1: float, x_of: Callable[[float], float]) -> list[Markup]:
    span = t1 - t0
    fmt = "%H:%M:%S" if span < 3600 else "%m-%d %H:%M" if span < 3 * 86400 else "%Y-%m-%d"
    ticks = [t0] if span == 0 else [t0 + span * i / 4 for i in range(5)]
    labels: list[Markup] = []
    shown: set[str] = set()
    for i, t in enumerate(ticks):
        text = datetime.fromtimestamp(t, tz=UTC).strftime(fmt)
        if text in shown:  # a short span: say each time once
            continue
        shown.add(text)
        # The outer labels lean inwards so that the frame does not cut them off.
        anchor = "middle" if len(ticks) == 1 else ("start", *["middle"] * 3, "end")[i]
        label = '<text x="{:.1f}" y="{}" class="xlab" text-anchor="{}">{}</text>'
        labels.append(html(label, x_of(t), HEIGHT - BOTTOM + 16, anchor, text))
    return labels


def _line(
    s: Series,
    color: str,
    shape: str,
    x_of: Callable[[float], float],
    y_of: Callable[[float], float],
    y_format: Callable[[float], str],
) -> list[Markup]:
    points = sorted(s.points, key=lambda p: p.at)
    segments: list[list[tuple[float, float]]] = [[]]
    parts: list[Markup] = []
    for p in points:
        if p.value is None:
            segments.append([])
            continue
        x, y = x_of(p.at.timestamp()), y_of(p.value)
        segments[-1].append((x, y))
        tip = f"{p.label} · {when(p.at)} · {s.name} {y_format(p.value)}"
        parts.append(html("<g>{}<title>{}</title></g>", _marker(shape, x, y, color), tip))
    lines = [
        html(
            '<polyline points="{}" fill="none" stroke="{}" stroke-width="2"/>',
            " ".join(f"{x:.1f},{y:.1f}" for x, y in seg),
            color,
        )
        for seg in segments
        if len(seg) > 1
    ]
    return lines + parts
