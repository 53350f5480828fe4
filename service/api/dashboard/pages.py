"""The reports page, the golden datasets page and the error page, as HTML strings.

Pure functions of domain objects: the app fetches, these render (unit-tested without a server).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

from costsim_analytics.api.dashboard.charts import Point, Series, line_chart
from costsim_analytics.api.dashboard.markup import (
    NONE,
    Markup,
    column_table,
    html,
    join,
    num,
    page,
    path_segment,
    pct,
    status_badge,
    when,
)
from costsim_analytics.engines.golden.datasets import GoldenDataset
from costsim_analytics.engines.reports import CANARY_STATUSES, CanaryReport

_ACTIVE = html('<span class="badge pass">active</span>')
_INACTIVE = html('<span class="muted">no</span>')


def major_drift_share(report: CanaryReport) -> float | None:
    """``major_drift_samples / total_samples``; None without samples."""
    if report.total_samples <= 0:
        return None
    return report.major_drift_samples / report.total_samples


def golden_share(report: CanaryReport) -> float | None:
    """The candidate's share of golden samples within tolerance; None without a comparison."""
    comparison = report.golden_comparison
    return None if comparison is None else comparison.candidate.within_tolerance_share


def report_link(run_id: str) -> Markup:
    """A link to the report page of ``run_id``."""
    return html('<a class="mono" href="/reports/{}">{}</a>', path_segment(run_id), run_id)


def reason_list(report: CanaryReport) -> Markup:
    """The report's failure reasons as sentences (the structured ones when present)."""
    messages = [r.message for r in report.reasons] or list(report.failure_reasons)
    if report.golden_comparison is not None:
        known = set(messages)
        messages += [r.message for r in report.golden_comparison.reasons if r.message not in known]
    if not messages:
        return NONE
    return html('<ul class="reasons">{}</ul>', join(html("<li>{}</li>", m) for m in messages))


def trend_charts(reports: Sequence[CanaryReport]) -> Markup:
    """KL divergence in one chart, the two shares (0-100 %) in the other."""

    def series(name: str, value: Callable[[CanaryReport], float | None]) -> Series:
        return Series(name, [Point(r.timestamp, value(r), r.run_id) for r in reports])

    kl = series("KL divergence", lambda r: r.kl_divergence)
    drift = series("major-drift share", major_drift_share)
    golden = series("golden within tolerance", golden_share)
    return html(
        '<div class="charts"><figure class="chart">{}</figure>'
        '<figure class="chart">{}</figure></div>',
        line_chart("KL divergence over time", [kl]),
        line_chart("Shares over time", [drift, golden], y_max=1.0, y_format=lambda v: pct(v, 0)),
    )


def _filters(current: str, limit: int) -> Markup:
    links = [("", "all"), *((s, s) for s in CANARY_STATUSES)]
    return join(
        (
            html(
                '<a href="/?status={}&amp;limit={}"{}>{}</a>',
                status,
                limit,
                Markup(' aria-current="true" class="current"' if status == current else ""),
                text,
            )
            for status, text in links
        ),
        " · ",
    )


def _golden_cell(report: CanaryReport) -> Markup:
    comparison = report.golden_comparison
    if comparison is None:
        return NONE
    return html(
        '{} {}<br><span class="muted">{} v{}</span>',
        pct(comparison.candidate.within_tolerance_share),
        status_badge("pass" if comparison.passed else "fail"),
        comparison.dataset_name,
        comparison.dataset_version,
    )


_REPORT_COLUMNS: tuple[tuple[str, Callable[[CanaryReport], object]], ...] = (
    ("Time", lambda r: when(r.timestamp)),
    ("Run", lambda r: report_link(r.run_id)),
    ("Status", lambda r: status_badge(r.status)),
    ("Passed", lambda r: num(r.passed)),
    ("Samples", lambda r: num(r.total_samples)),
    ("KL divergence", lambda r: num(r.kl_divergence)),
    ("Major drift", lambda r: pct(major_drift_share(r))),
    ("Golden within tol.", _golden_cell),
    ("Failure reasons", reason_list),
)


def reports_page(reports: Sequence[CanaryReport], *, status: str = "", limit: int = 50) -> str:
    """``/``: the recent reports, newest first, and their trends (oldest to newest)."""
    counts = {s: sum(r.status == s for r in reports) for s in CANARY_STATUSES}
    summary = html(
        "<p>{} most recent reports{}: {}. Filter: {}</p>",
        len(reports),
        f" with status {status}" if status else "",
        join((html("{} {}", counts[s], s) for s in CANARY_STATUSES), ", "),
        _filters(status, limit),
    )
    listing = (
        column_table(_REPORT_COLUMNS, reports, cls="reports")
        if reports
        else html(
            '<p class="note">No canary reports yet: run one with <code>{}</code>.</p>',
            "costsim-analytics canary run",
        )
    )
    body = html(
        "<h1>Canary reports</h1>{}<h2>Trends</h2>{}<h2>Reports</h2>{}",
        summary,
        trend_charts(list(reversed(reports))),
        listing,
    )
    return page("Canary reports", body, nav="reports")


def golden_page(datasets: Sequence[GoldenDataset], reports: Iterable[CanaryReport] = ()) -> str:
    """``/golden``: every version of every golden dataset."""
    latest: dict[tuple[str, int], Markup] = {}
    for r in reports:  # newest first: the first one seen is the latest
        c = r.golden_comparison
        if c is not None and (c.dataset_name, c.dataset_version) not in latest:
            latest[(c.dataset_name, c.dataset_version)] = html(
                "{} within tolerance {}<br>{}",
                pct(c.candidate.within_tolerance_share),
                status_badge("pass" if c.passed else "fail"),
                report_link(r.run_id),
            )
    columns: tuple[tuple[str, Callable[[GoldenDataset], object]], ...] = (
        (
            "Name",
            lambda d: html(
                '<span class="code" id="{}">{}</span>', f"{d.name}-v{d.version}", d.name
            ),
        ),
        ("Version", lambda d: num(d.version)),
        ("Active", lambda d: _ACTIVE if d.active else _INACTIVE),
        ("Samples", lambda d: num(d.sample_count)),
        ("sha256", lambda d: html('<span class="mono">{}</span>', d.sha256)),
        ("Source", lambda d: d.source),
        ("Description", lambda d: d.description),
        ("Created", lambda d: when(d.created_at)),
        ("Latest judged report", lambda d: latest.get((d.name, d.version), NONE)),
    )
    names = len({d.name for d in datasets})
    listing = (
        column_table(columns, datasets, cls="golden")
        if datasets
        else html(
            '<p class="note">No golden datasets yet: import one with <code>{}</code>.</p>',
            "costsim-analytics golden import FILE.jsonl --name NAME",
        )
    )
    body = html(
        "<h1>Golden datasets</h1><p>{} {}, {} {}. Versions are immutable; one version per name "
        "is active and judges the canary runs that name the dataset.</p>{}",
        names,
        "dataset" if names == 1 else "datasets",
        len(datasets),
        "version" if len(datasets) == 1 else "versions",
        listing,
    )
    return page("Golden datasets", body, nav="golden")


def error_page(status: int, title: str, message: str) -> str:
    """A page for a 4xx/5xx answer."""
    body = html(
        '<h1>{} {}</h1><p class="note">{}</p><p><a href="/">All reports</a></p>',
        status,
        title,
        message,
    )
    return page(title, body)


def login_page(message: str = "") -> str:
    """``/login``: a form that posts a bearer token once; the server keeps it in a cookie.

    Plain HTML (no script), so it works offline under the same Content-Security-Policy as
    every other page.
    """
    note = html('<p class="note" role="alert">{}</p>', message) if message else html("")
    body = html(
        "<h1>Sign in</h1>{}"
        "<p>Paste a bearer token (a JWT whose identity the policy grants the "
        "<code>reader</code> role). The server checks it and keeps it in an HttpOnly cookie "
        'for this browser session; <a href="/logout">sign out</a> forgets it.</p>'
        '<form method="post" action="/login">'
        '<p><label for="token">Bearer token</label><br>'
        '<input id="token" name="token" type="password" autocomplete="off" required '
        'size="60" maxlength="8192"></p>'
        '<p><button type="submit">Sign in</button></p></form>'
        '<p class="muted">Command line: <code>{}</code></p>',
        note,
        "costsim-analytics token mint --sub NAME --secret-file FILE",
    )
    return page("Sign in", body)


def sign_in_required_page(message: str) -> str:
    """The 401 page: why, and a link to the sign-in form."""
    body = html(
        '<h1>401 Sign-in required</h1><p class="note">{}</p>'
        '<p><a href="/login">Sign in with a token</a>, or connect with a client certificate '
        "or an <code>Authorization: Bearer</code> header.</p>",
        message,
    )
    return page("Sign-in required", body)
