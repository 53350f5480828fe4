"""``/reports/<run_id>``: one canary report in full, its golden comparison included."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from costsim_analytics.api.dashboard.markup import (
    NONE,
    Markup,
    column_table,
    definitions,
    html,
    join,
    num,
    page,
    pct,
    status_badge,
    table,
    when,
)
from costsim_analytics.api.dashboard.pages import major_drift_share
from costsim_analytics.engines.findings import FailureReason, Interval
from costsim_analytics.engines.golden.results import (
    FeasibilityConfusion,
    GoldenComparison,
    GoldenSampleResult,
    GoldenSummary,
)
from costsim_analytics.engines.reports import CanaryReport, Judgement, ReportStatistics


def _interval(ci: Interval | None) -> str:
    if ci is None:
        return "-"
    return f"{num(ci.estimate)} [{num(ci.low)}, {num(ci.high)}] ({pct(ci.level, 0)})"


def _code(text: str) -> Markup:
    return html('<span class="code">{}</span>', text)


_REASON_COLUMNS: tuple[tuple[str, Callable[[FailureReason], object]], ...] = (
    ("Code", lambda r: _code(r.code)),
    ("Metric", lambda r: r.metric),
    ("Observed", lambda r: num(r.observed)),
    ("Rule", lambda r: f"{r.comparator}\u00a0{num(r.threshold)}"),
    ("Interval", lambda r: _interval(r.interval)),
    ("Message", lambda r: r.message),
)


def reasons_table(reasons: Sequence[FailureReason]) -> Markup:
    """Structured failure reasons: what was measured against which threshold, and the sentence."""
    return column_table(_REASON_COLUMNS, reasons, cls="reasons")


def _reasons_section(report: CanaryReport) -> Markup:
    if report.reasons:
        return reasons_table(report.reasons)
    if report.failure_reasons:  # reports stored before reasons were structured
        return html(
            '<ul class="reasons">{}</ul>',
            join(html("<li>{}</li>", m) for m in report.failure_reasons),
        )
    return html(
        '<p class="muted">{}</p>', "None: the canary passed." if report.passed else "None recorded."
    )


def _statistics(stats: ReportStatistics | None) -> Markup:
    if stats is None:
        return html('<p class="muted">No statistics recorded.</p>')
    t = stats.paired_test
    overview = definitions(
        [
            ("JS divergence", num(stats.js_divergence)),
            ("KL bins / epsilon", f"{stats.kl_bins} / {num(stats.kl_epsilon)}"),
            ("Outlier share", pct(stats.outlier_share)),
            ("Major drift + mismatch share", pct(stats.major_drift_share)),
            (
                "Paired test",
                f"{t.method}: n {t.n} ({t.n_nonzero} non-zero), statistic {num(t.statistic)}, "
                f"p {num(t.p_value)}, effect size {num(t.effect_size)}, "
                f"median difference {num(t.median_difference)}",
            ),
        ]
    )
    intervals = table(
        ("Confidence interval", "Estimate", "Low", "High", "Level", "Resamples"),
        (
            (name, num(ci.estimate), num(ci.low), num(ci.high), pct(ci.level, 0), num(ci.resamples))
            for name, ci in (
                ("Median cost difference", stats.median_cost_diff_ci),
                ("p90 cost difference", stats.p90_cost_diff_ci),
                ("Median relative delta", stats.median_relative_delta_ci),
            )
            if ci is not None
        ),
    )
    return html("{}{}", overview, intervals)


def _optional(value: float | None) -> object:
    return NONE if value is None else num(value)


def judgement_section(j: Judgement | None) -> Markup:
    """The judge behind the verdict and each rule's decision (pass, fail, inconclusive)."""
    if j is None:
        return html('<p class="muted">No judgement recorded (a report from before judges).</p>')
    overview = definitions(
        [
            ("Judge", j.judge),
            ("KL binning", f"{j.kl_bin_method}, {j.kl_bins} bins, {j.kl_smoothing} smoothing"),
            ("KL / JS under it", f"{num(j.kl)} / {num(j.js)}"),
            (
                "KL permutation test",
                "none"
                if not j.permutations
                else f"p {num(j.kl_p_value)} over {num(j.permutations)} sign flips "
                f"(seed {j.permutation_seed})",
            ),
            (
                "False-alarm budget",
                "-" if j.correction == "none" else f"{j.alpha} ({j.correction})",
            ),
        ]
    )
    rules = column_table(
        (
            ("Rule", lambda r: _code(r.rule)),
            ("Observed", lambda r: num(r.observed)),
            ("Threshold", lambda r: num(r.threshold)),
            ("p-value", lambda r: _optional(r.p_value)),
            ("Level", lambda r: _optional(r.level)),
            ("Upper bound", lambda r: _optional(r.upper_bound)),
            ("Decision", lambda r: status_badge(r.decision)),
        ),
        j.rules,
        cls="rules",
    )
    return html("{}{}", overview, rules)


def _artifacts(report: CanaryReport) -> Markup:
    rows: list[tuple[object, ...]] = [
        (
            html('<span class="mono">{}</span>', a.path),
            html('<span class="mono">{}</span>', a.sha256),
            num(a.size_bytes),
        )
        for a in report.artifacts
    ]
    listed = {a.path for a in report.artifacts}
    rows += [
        (html('<span class="mono">{}</span>', p), NONE, NONE)
        for p in report.artifact_paths
        if p not in listed
    ]
    if not rows:
        return html('<p class="muted">No artifacts.</p>')
    return table(("Path", "sha256", "Bytes"), rows, cls="artifacts")


def _confusion(f: FeasibilityConfusion) -> str:
    return (
        f"{f.flips} flips (expected feasible → infeasible "
        f"{f.expected_feasible_predicted_infeasible}, infeasible → feasible "
        f"{f.expected_infeasible_predicted_feasible}; agreeing "
        f"{f.expected_feasible_predicted_feasible} + {f.expected_infeasible_predicted_infeasible})"
    )


# The rows of the candidate/baseline table: a label, and how a summary shows it.
_SUMMARY_ROWS: tuple[tuple[str, Callable[[GoldenSummary], str]], ...] = (
    ("Model", lambda s: s.model),
    ("Samples", lambda s: num(s.samples)),
    ("Not estimated", lambda s: num(s.invalid_samples)),
    ("Within tolerance", lambda s: num(s.within_tolerance)),
    ("Share within tolerance", lambda s: pct(s.within_tolerance_share)),
    ("Mean relative error", lambda s: pct(s.mean_relative_error)),
    ("p90 relative error", lambda s: pct(s.p90_relative_error)),
    ("Mean absolute error (cents)", lambda s: num(s.mean_absolute_error)),
    ("Max absolute error (cents)", lambda s: num(s.max_absolute_error)),
    ("Feasibility", lambda s: _confusion(s.feasibility)),
)


def _summaries(candidate: GoldenSummary, baseline: GoldenSummary) -> Markup:
    rows = [(label, show(candidate), show(baseline)) for label, show in _SUMMARY_ROWS]
    return table(("", "Candidate", "Baseline"), rows, cls="summaries")


_WORST_COLUMNS: tuple[tuple[str, Callable[[GoldenSampleResult], object]], ...] = (
    ("Sample", lambda s: _code(s.id)),
    ("Expected (cents)", lambda s: num(s.expected_cost_cents)),
    ("Expected feasible", lambda s: num(s.expected_feasible)),
    ("Candidate (cents)", lambda s: num(s.candidate_cost_cents)),
    ("Candidate feasible", lambda s: num(s.candidate_feasible)),
    ("Abs. error", lambda s: num(s.absolute_error)),
    ("Rel. error", lambda s: pct(s.relative_error)),
    ("Within tol.", lambda s: num(s.within_tolerance)),
    ("Baseline (cents)", lambda s: num(s.baseline_cost_cents)),
    ("Baseline rel. error", lambda s: pct(s.baseline_relative_error)),
    ("Error", lambda s: s.error or ""),
)


def golden_section(
    comparison: GoldenComparison | None, shown: frozenset[str] = frozenset()
) -> Markup:
    """The golden comparison: dataset, verdict, both models' summaries, the worst samples.

    Its reasons are listed unless their messages are in ``shown`` (the report's own reasons,
    which a failing golden comparison adds to).
    """
    if comparison is None:
        return html(
            '<p class="muted">{}</p>',
            "No golden comparison: this run was not judged against a golden dataset.",
        )
    c = comparison
    head = definitions(
        [
            (
                "Dataset",
                html(
                    '<a href="/golden#{}">{} version {}</a>',
                    f"{c.dataset_name}-v{c.dataset_version}",
                    c.dataset_name,
                    c.dataset_version,
                ),
            ),
            ("Dataset sha256", html('<span class="mono">{}</span>', c.dataset_sha256)),
            ("Verdict", status_badge("pass" if c.passed else "fail")),
            ("Candidate within tolerance", pct(c.candidate.within_tolerance_share)),
            (
                "Rule",
                f"at least {pct(c.min_share)} of samples within {pct(c.tolerance)} relative error, "
                f"at most {c.max_feasibility_flips} feasibility flips",
            ),
            (
                "Against the baseline",
                f"{c.direction}: {c.closer_samples} samples closer, {c.farther_samples} farther, "
                f"{c.tied_samples} tied; mean relative error delta "
                f"{pct(c.mean_relative_error_delta, 2)}",
            ),
        ]
    )
    unshown = [r for r in c.reasons if r.message not in shown]
    reasons = reasons_table(unshown) if unshown else Markup("")
    worst = column_table(_WORST_COLUMNS, c.worst_samples, cls="worst")
    return html(
        "{}{}<h3>Candidate and baseline</h3>{}<h3>Worst samples ({})</h3>{}",
        head,
        reasons,
        _summaries(c.candidate, c.baseline),
        len(c.worst_samples),
        worst,
    )


def report_page(report: CanaryReport, drift: Markup | None = None) -> str:
    """Every metric, reason, statistic, artifact and the golden comparison of one report.

    ``drift`` is the "Where the drift comes from" section (``drift_page.py``), or the
    sentence saying why the run cannot be explained.
    """
    r = report
    overview = definitions(
        [
            ("Status", html("{} passed: {}", status_badge(r.status), num(r.passed))),
            ("Run time", when(r.timestamp)),
            ("Stored", when(r.created_at)),
            (
                "Baseline / candidate model",
                f"{r.baseline_model or '-'} / {r.candidate_model or '-'}",
            ),
            ("Sample source", r.sample_source or "-"),
            ("Seed", str(r.seed)),
        ]
    )
    metrics = table(
        ("Metric", "Value"),
        [
            ("Total samples", num(r.total_samples)),
            ("Matching", num(r.matching_samples)),
            ("Minor drift", num(r.minor_drift_samples)),
            ("Major drift", num(r.major_drift_samples)),
            ("Major-drift share", pct(major_drift_share(r))),
            ("Invalid samples", num(r.invalid_samples)),
            ("Outliers", num(r.outlier_count)),
            ("Median cost difference", num(r.median_cost_diff)),
            ("p90 cost difference", num(r.p90_cost_diff)),
            ("KL divergence", num(r.kl_divergence)),
        ],
        cls="metrics",
    )
    body = html(
        '<h1>Canary report <span class="mono">{}</span></h1>{}'
        "<h2>Metrics</h2>{}<h2>Failure reasons</h2>{}<h2>Verdict</h2>{}"
        '<h2 id="drift">Where the drift comes from</h2>{}<h2>Statistics</h2>{}'
        "<h2>Golden comparison</h2>{}<h2>Artifacts</h2>{}",
        r.run_id,
        overview,
        metrics,
        _reasons_section(r),
        judgement_section(r.statistics.judgement if r.statistics else None),
        drift if drift is not None else html('<p class="muted">{}</p>', "Not computed."),
        _statistics(r.statistics),
        golden_section(r.golden_comparison, frozenset(x.message for x in r.reasons)),
        _artifacts(r),
    )
    return page(f"Report {r.run_id}", body, nav="reports")
