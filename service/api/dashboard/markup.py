"""Auto-escaping HTML templates: every value is escaped unless it is already :class:`Markup`.

Report ids, failure reasons, dataset names and model names are user data, so the templates
never paste a value as is: :func:`html` escapes each argument (quotes included, so values are
safe inside attributes too), and only the output of :func:`html` and the other helpers here is
trusted as markup.

Example:
    >>> html("<td>{}</td>", "<script>")
    Markup('<td>&lt;script&gt;</td>')
    >>> html("<ul>{}</ul>", join(html("<li>{}</li>", x) for x in ["a&b", "c"]))
    Markup('<ul><li>a&amp;b</li><li>c</li></ul>')

"""

from __future__ import annotations

import math
import string
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime
from html import escape
from typing import Any, TypeVar
from urllib.parse import quote

from costsim_analytics.engines.reports import CANARY_STATUSES

T = TypeVar("T")


class Markup(str):
    """A string of trusted HTML (made by the helpers in this module)."""

    __slots__ = ()

    def __repr__(self) -> str:
        return f"Markup({str.__repr__(self)})"


class _EscapingFormatter(string.Formatter):
    def format_field(self, value: Any, format_spec: str) -> str:
        if isinstance(value, Markup):
            return value
        return escape(super().format_field(value, format_spec), quote=True)


_FORMATTER = _EscapingFormatter()
# An absent value in a cell.
NONE = Markup('<span class="muted">-</span>')


def html(template: str, /, *args: Any, **kwargs: Any) -> Markup:
    """``template.format(...)`` with every argument escaped unless it is :class:`Markup`."""
    return Markup(_FORMATTER.format(template, *args, **kwargs))


def join(parts: Iterable[Markup], sep: str = "") -> Markup:
    """Concatenate markup (plain strings are escaped)."""
    return Markup(sep.join(p if isinstance(p, Markup) else escape(p, quote=True) for p in parts))


def path_segment(value: str) -> str:
    """``value`` as one URL path segment (``/`` included), to put into an ``href``."""
    return quote(value, safe="")


def num(value: float | int | None, digits: int = 4) -> str:
    """A number for people: ``-`` when absent, integers as they are, floats rounded."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if not math.isfinite(value):
        return str(value)
    return f"{value:,.1f}" if abs(value) >= 1000 else f"{value:.{digits}g}"


def pct(value: float | None, digits: int = 1) -> str:
    """A share as a percentage, ``-`` when absent."""
    return "-" if value is None or not math.isfinite(value) else f"{value * 100:.{digits}f} %"


def when(value: datetime | None) -> str:
    """A timestamp in UTC to the second."""
    return "-" if value is None else value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def status_badge(status: str) -> Markup:
    """A coloured status label (colour is never the only cue: the word is there too)."""
    known = status if status in CANARY_STATUSES else "unknown"
    return html('<span class="badge {}">{}</span>', known, status or "-")


def table(headers: Iterable[str], rows: Iterable[Iterable[Any]], *, cls: str = "") -> Markup:
    """A table; cells are escaped unless they are :class:`Markup`."""
    head = join(html("<th>{}</th>", h) for h in headers)
    body = join(html("<tr>{}</tr>", join(html("<td>{}</td>", c) for c in row)) for row in rows)
    return html(
        '<table class="{}"><thead><tr>{}</tr></thead><tbody>{}</tbody></table>', cls, head, body
    )


def column_table(
    columns: Sequence[tuple[str, Callable[[T], object]]], items: Iterable[T], *, cls: str = ""
) -> Markup:
    """A table of ``items``, a row each; ``columns`` pair each header with how to get its cell."""
    rows = ([cell(item) for _, cell in columns] for item in items)
    return table([header for header, _ in columns], rows, cls=cls)


def definitions(items: Iterable[tuple[str, Any]]) -> Markup:
    """A definition list of name/value pairs."""
    return html("<dl>{}</dl>", join(html("<dt>{}</dt><dd>{}</dd>", k, v) for k, v in items))


STYLE = """
:root { --fg:#1b1f24; --muted:#57606a; --line:#d0d7de; --bg:#ffffff; --panel:#f6f8fa;
  --pass:#1a7f37; --fail:#cf222e; --error:#9a6700; --skipped:#57606a;
  --inconclusive:#8250df; }
* { box-sizing:border-box; }
body { margin:0; font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;
  color:var(--fg); background:var(--bg); }
header { background:#24292f; color:#fff; padding:10px 24px; display:flex; gap:24px;
  align-items:baseline; }
header a { color:#fff; text-decoration:none; }
header strong { font-size:16px; margin-right:12px; }
main { padding:16px 24px 40px; max-width:1240px; }
h1 { font-size:20px; margin:8px 0 12px; word-break:break-all; }
h2 { font-size:16px; margin:24px 0 8px; border-bottom:1px solid var(--line); padding-bottom:4px; }
table { border-collapse:collapse; width:100%; margin:4px 0 12px; }
th, td { border:1px solid var(--line); padding:4px 8px; text-align:left; vertical-align:top; }
th { background:var(--panel); font-weight:600; }
td.num, th.num { text-align:right; font-variant-numeric:tabular-nums; }
table.metrics, table.summaries { width:auto; min-width:480px; }
.code { font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace; font-size:12px;
  white-space:nowrap; }
code, .mono { font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace; font-size:12px;
  word-break:break-all; }
dl { display:grid; grid-template-columns:max-content 1fr; gap:2px 16px; margin:4px 0 12px; }
dt { color:var(--muted); } dd { margin:0; }
.badge { display:inline-block; padding:0 8px; border-radius:10px; color:#fff; font-weight:600;
  font-size:12px; }
.badge.pass { background:var(--pass); } .badge.fail { background:var(--fail); }
.badge.error { background:var(--error); }
.badge.inconclusive { background:var(--inconclusive); }
.badge.skipped, .badge.unknown { background:var(--skipped); }
.reasons { margin:0; padding-left:18px; } .muted { color:var(--muted); }
.charts { display:grid; grid-template-columns:repeat(auto-fit, minmax(520px, 1fr)); gap:16px; }
.chart { border:1px solid var(--line); border-radius:6px; padding:8px; background:#fff;
  margin:0; }
a.current { font-weight:700; color:var(--fg); text-decoration:none; }
.note { background:var(--panel); border:1px solid var(--line); border-radius:6px;
  padding:8px 12px; }
"""


def page(title: str, body: Markup, *, nav: str = "") -> str:
    """A whole HTML document: no external resource of any kind (the page works offline)."""
    links = (("/", "Reports", "reports"), ("/golden", "Golden datasets", "golden"))
    navigation = join(
        html(
            '<a href="{}"{}>{}</a>',
            href,
            Markup(' aria-current="page"' if key == nav else ""),
            text,
        )
        for href, text, key in links
    )
    return html(
        "<!DOCTYPE html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        "<title>{title} · costsim-analytics</title><style>{style}</style></head>"
        "<body><header><strong>costsim-analytics</strong>{nav}"
        '<a href="/metrics">Metrics</a></header><main>{body}</main></body></html>\n',
        title=title,
        style=Markup(STYLE),
        nav=navigation,
        body=body,
    )
