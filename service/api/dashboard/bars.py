"""Bar charts drawn on the server as inline SVG: shares with their intervals, histograms.

Like ``charts.py``: no script, no external resource; every bar carries a ``<title>`` the
browser shows on hover, and colour is never the only cue (the two histogram series differ in
fill pattern, and both are named in the legend and in each bar's title).

Example:
    >>> share_chart("Shares", [Bar("llm_invoke", 0.75, 0.7, 0.8)]).startswith("<svg")
    True

"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from costsim_analytics.api.dashboard.charts import PALETTE
from costsim_analytics.api.dashboard.markup import Markup, html, join, num, pct

WIDTH = 560
LABEL_W, RIGHT, TOP, ROW_H = 170, 70, 30, 22
_STYLE = (
    ".frame{fill:#fff;stroke:#d0d7de} .grid{stroke:#eaeef2} "
    ".lab{font:12px sans-serif;fill:#1b1f24;text-anchor:end} "
    ".val{font:11px sans-serif;fill:#57606a} .xlab{font:11px sans-serif;fill:#57606a} "
    ".legend{font:12px sans-serif;fill:#1b1f24} .ci{stroke:#1b1f24;stroke-width:1.5} "
    ".empty{font:13px sans-serif;fill:#57606a;text-anchor:middle}"
)


@dataclass(frozen=True, slots=True)
class Bar:
    """One group's share, with its interval."""

    label: str
    value: float
    low: float
    high: float


def _svg(label: str, width: int, height: int, body: Sequence[Markup]) -> Markup:
    return html(
        '<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {w} {h}" width="100%" role="img" '
        'aria-label="{label}"><title>{label}</title><style>{style}</style>{body}</svg>',
        w=width,
        h=height,
        label=label,
        style=Markup(_STYLE),
        body=join(body),
    )


def _short(text: str, limit: int = 24) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def share_chart(title: str, bars: Sequence[Bar]) -> Markup:
    """Horizontal bars of shares (0-100 %), each with its interval as a whisker."""
    plot_w = WIDTH - LABEL_W - RIGHT
    height = TOP + max(1, len(bars)) * ROW_H + 24
    parts: list[Markup] = [html('<rect x="{}" y="{}" width="{}" height="{}" class="frame"/>',
                                LABEL_W, TOP, plot_w, height - TOP - 24)]  # fmt: skip
    for i in range(5):
        x = LABEL_W + plot_w * i / 4
        parts.append(html('<line x1="{x:.1f}" x2="{x:.1f}" y1="{}" y2="{}" class="grid"/>',
                          TOP, height - 24, x=x))  # fmt: skip
        parts.append(html('<text x="{:.1f}" y="{}" class="xlab" text-anchor="middle">{}</text>',
                          x, height - 8, pct(i / 4, 0)))  # fmt: skip
    parts.append(html('<text x="{}" y="18" class="legend">{}</text>', LABEL_W, title))
    if not bars:
        parts.append(html('<text x="{}" y="{}" class="empty">nothing moved</text>',
                          LABEL_W + plot_w / 2, TOP + 15))  # fmt: skip
    for row, bar in enumerate(bars):
        y = TOP + row * ROW_H + 4
        w = max(0.0, min(bar.value, 1.0)) * plot_w
        lo = LABEL_W + max(0.0, min(bar.low, 1.0)) * plot_w
        hi = LABEL_W + max(0.0, min(bar.high, 1.0)) * plot_w
        tip = f"{bar.label}: {pct(bar.value)} [{pct(bar.low)}, {pct(bar.high)}]"
        parts.append(
            html(
                '<g><text x="{lx}" y="{ty:.1f}" class="lab">{label}</text>'
                '<rect x="{x}" y="{y:.1f}" width="{w:.1f}" height="14" fill="{color}"/>'
                '<line x1="{lo:.1f}" x2="{hi:.1f}" y1="{cy:.1f}" y2="{cy:.1f}" class="ci"/>'
                '<text x="{vx:.1f}" y="{ty:.1f}" class="val">{value}</text>'
                "<title>{tip}</title></g>",
                lx=LABEL_W - 6,
                ty=y + 11,
                label=_short(bar.label),
                x=LABEL_W,
                y=y,
                w=w,
                color=PALETTE[0],
                lo=lo,
                hi=hi,
                cy=y + 7,
                vx=LABEL_W + plot_w + 6,
                value=pct(bar.value),
                tip=tip,
            )
        )
    label = f"{title}: " + "; ".join(f"{b.label} {pct(b.value)}" for b in bars)
    return _svg(label, WIDTH, height, parts)


def histogram_chart(
    title: str,
    edges: Sequence[float],
    series: Sequence[tuple[str, Sequence[int]]],
) -> Markup:
    """Side-by-side bars per bin: each series' share of its samples in that bin."""
    height, left, bottom = 250, 48, 46
    plot_w, plot_h = WIDTH - left - 16, height - TOP - bottom
    bins = max(1, len(edges) - 1)
    totals = [max(1, sum(counts)) for _, counts in series]
    top = max((c / t for (_, counts), t in zip(series, totals, strict=True) for c in counts),
              default=0.0) or 1.0  # fmt: skip
    parts: list[Markup] = [html('<rect x="{}" y="{}" width="{}" height="{}" class="frame"/>',
                                left, TOP, plot_w, plot_h)]  # fmt: skip
    for i in range(5):
        y = TOP + plot_h - plot_h * i / 4
        parts.append(html('<line x1="{}" x2="{}" y1="{y:.1f}" y2="{y:.1f}" class="grid"/>',
                          left, left + plot_w, y=y))  # fmt: skip
        parts.append(html('<text x="{}" y="{:.1f}" class="xlab" text-anchor="end">{}</text>',
                          left - 4, y + 4, pct(top * i / 4, 0)))  # fmt: skip
    slot = plot_w / bins
    bar_w = max(1.0, slot / (len(series) + 0.5))
    for s, (name, counts) in enumerate(series):
        color = PALETTE[s % len(PALETTE)]
        lx = left + s * 160
        parts.append(html('<rect x="{}" y="8" width="10" height="10" fill="{}"{}/>', lx, color,
                          Markup(' fill-opacity="0.55"' if s else "")))  # fmt: skip
        parts.append(html('<text x="{}" y="18" class="legend">{}</text>', lx + 14, name))
        for b, count in enumerate(counts):
            share = count / totals[s]
            h = share / top * plot_h
            x = left + b * slot + slot * 0.25 / (len(series) + 0.5) + s * bar_w
            low, high = edges[b], edges[b + 1] if b + 1 < len(edges) else edges[b]
            tip = f"{name}: {count} samples ({pct(share)}) in [{num(low)}, {num(high)}] cents"
            parts.append(
                html(
                    '<g><rect x="{:.1f}" y="{:.1f}" width="{:.1f}" height="{:.1f}" fill="{}"{}/>'
                    "<title>{}</title></g>",
                    x,
                    TOP + plot_h - h,
                    bar_w,
                    h,
                    color,
                    Markup(' fill-opacity="0.55"' if s else ""),
                    tip,
                )
            )
    for b in range(0, bins + 1, max(1, bins // 6)):
        x = left + b * slot
        parts.append(html('<text x="{:.1f}" y="{}" class="xlab" text-anchor="middle">{}</text>',
                          x, TOP + plot_h + 16, num(edges[b], 3)))  # fmt: skip
    parts.append(html('<text x="{}" y="{}" class="xlab" text-anchor="middle">{}</text>',
                      left + plot_w / 2, height - 6, f"{title} (cost in cents)"))  # fmt: skip
    label = f"{title}: {bins} bins; " + "; ".join(f"{n} {sum(c)} samples" for n, c in series)
    return _svg(label, WIDTH, height, parts)
