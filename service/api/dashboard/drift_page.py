"""The "Where the drift comes from" section: a run's explanation as HTML (pure).

The report page shows it under the report (by skill, the five most drifting samples);
``/reports/<run_id>/drift`` shows it alone, with ``?group_by=`` and ``?top=``. A run that
cannot be explained (from before per-step estimates, artifacts missing or altered) shows a
sentence saying why instead.
"""

from __future__ import annotations

import json
from collections.abc import Callable

from costsim_analytics.api.dashboard.bars import Bar, histogram_chart, share_chart
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
)
from costsim_analytics.engines.canary.attribution import GROUP_BYS
from costsim_analytics.engines.canary.explain import (
    DriftingSample,
    Explanation,
    Histogram,
    StepBreakdown,
)
from costsim_analytics.engines.canary.groups import Attribution

REPORT_TOP = 5
_TITLES = {"kl_divergence": "the report's KL divergence", "judgement": "the verdict's KL"}


def _interval(low: float, high: float) -> str:
    return f"[{pct(low)}, {pct(high)}]"


_GROUP_COLUMNS: tuple[tuple[str, Callable[[Attribution], object]], ...] = (
    ("Group", lambda g: html('<span class="code">{}</span>', g.group)),
    ("Steps", lambda g: num(g.steps)),
    ("Samples", lambda g: num(g.samples)),
    ("V1 ¢/step", lambda g: num(g.v1_cost_per_step)),
    ("V2 ¢/step", lambda g: num(g.v2_cost_per_step)),
    ("Delta ¢", lambda g: num(g.delta)),
    ("Share of |delta|", lambda g: f"{pct(g.share)} {_interval(g.share_low, g.share_high)}"),
    ("Flips", lambda g: f"{num(g.flips, 3)} ({pct(g.flip_share)})"),
    ("Latency share", lambda g: pct(g.duration_share)),
    ("Risk V1 / V2", lambda g: f"{num(g.v1_mean_risk, 3)} / {num(g.v2_mean_risk, 3)}"),
    ("Risk share", lambda g: pct(g.risk_share)),
)


def _optional(value: float | None) -> object:
    return NONE if value is None else num(value)


_STEP_COLUMNS: tuple[tuple[str, Callable[[StepBreakdown], object]], ...] = (
    ("Step", lambda s: "plan" if s.position < 0 else str(s.position + 1)),
    ("Skill", lambda s: html('<span class="code">{}</span>', s.skill)),
    ("V1 ¢", lambda s: _optional(s.v1_cost)),
    ("V2 ¢", lambda s: _optional(s.v2_cost)),
    ("Delta ¢", lambda s: num(s.cost_delta)),
    ("V1 ms", lambda s: _optional(s.v1_latency_ms)),
    ("V2 ms", lambda s: _optional(s.v2_latency_ms)),
    ("V1 risk", lambda s: _optional(s.v1_risk)),
    ("V2 risk", lambda s: _optional(s.v2_risk)),
    ("Flip part", lambda s: pct(s.flip_weight) if s.flip_weight else NONE),
)


def _sample(s: DriftingSample) -> Markup:
    causes = ", ".join(s.flip_causes) or "none"
    head = html(
        '<h3><span class="mono">{}</span> (line {} of comparisons.jsonl): {}</h3>'
        "<p>drift score {}, cost {} → {} cents ({}), feasible {} → {} (flip: {})</p>",
        s.id,
        s.index,
        s.verdict,
        num(s.drift_score, 3),
        num(s.v1_cost),
        num(s.v2_cost),
        pct(s.cost_delta_pct),
        num(s.v1_feasible),
        num(s.v2_feasible),
        causes,
    )
    steps = (
        column_table(_STEP_COLUMNS, s.steps, cls="steps")
        if s.steps
        else html('<p class="muted">{}</p>', "No per-step breakdown from the models.")
    )
    plan = json.dumps(s.plan_input, sort_keys=True)
    shown = plan if len(plan) <= 2000 else plan[:1999] + "…"
    return html(
        '{}{}<details><summary>Plan</summary><pre class="mono">{}</pre></details>',
        head,
        steps,
        shown,
    )


def _histogram(h: Histogram, baseline: str, candidate: str) -> Markup:
    title = f"{_TITLES.get(h.name, h.name)}: {h.method} bins"
    if h.kl is not None:
        title += f", KL {num(h.kl)}"
    chart = histogram_chart(
        title, h.edges, [(baseline, h.baseline_counts), (candidate, h.candidate_counts)]
    )
    return html('<figure class="chart">{}</figure>', chart)


def drift_section(e: Explanation, *, run_link: bool = False) -> Markup:
    """The explanation: the share chart, the groups, the histograms, the drifting samples."""
    bars = [Bar(g.group, g.share, g.share_low, g.share_high) for g in e.groups if g.abs_delta]
    flip_bars = [Bar(g.group, g.flip_share, g.flip_share_low, g.flip_share_high)
                 for g in e.groups if g.flips]  # fmt: skip
    overview = html(
        '<p class="note">{} samples, {} steps, grouped by <b>{}</b>: total delta {} cents '
        "({} step by step, the sum the shares divide), {} feasibility flips. Intervals: {} "
        "bootstrap over the samples, {} resamples, seed {}.{}</p>",
        num(e.samples),
        num(e.steps),
        e.group_by,
        num(e.total_delta),
        num(e.total_abs_delta),
        num(e.flips),
        pct(e.bootstrap.level, 0),
        num(e.bootstrap.resamples),
        e.bootstrap.seed,
        (
            f" {e.samples_without_steps} samples have no per-step breakdown: their delta "
            "is counted at the plan level."
            if e.samples_without_steps
            else ""
        ),
    )
    charts = [html('<figure class="chart">{}</figure>', share_chart("Share of |cost delta|", bars))]
    if flip_bars:
        charts.append(
            html(
                '<figure class="chart">{}</figure>',
                share_chart("Share of feasibility flips", flip_bars),
            )
        )
    histograms = join(_histogram(h, e.baseline_model, e.candidate_model) for h in e.histograms)
    links = join(html('<a href="?group_by={}">{}</a> ', g, g.replace("_", " ")) for g in GROUP_BYS)
    more = ""
    if run_link:
        more = html(
            ' · <a href="/reports/{}/drift?group_by={}&amp;top=20">more samples</a>',
            path_segment(e.run_id),
            e.group_by,
        )
    return html(
        '{}<div class="charts">{}</div><p>Group by: {}{}</p>{}'
        '<h3>Both cost distributions on the bins each KL was computed on</h3><div class="charts">'
        "{}</div><h3>The {} most drifting samples</h3>{}",
        overview,
        join(charts),
        links if not run_link else Markup(""),
        more,
        column_table(_GROUP_COLUMNS, e.groups, cls="groups"),
        histograms or html('<p class="muted">{}</p>', "No histogram recorded for this run."),
        len(e.top),
        join(_sample(s) for s in e.top),
    )


def unexplained(message: str) -> Markup:
    """The sentence shown instead of an explanation."""
    return html('<p class="note">{}</p>', message)


def drift_page(run_id: str, section: Markup) -> str:
    """``/reports/<run_id>/drift``: the section alone."""
    body = html(
        '<h1>Where the drift comes from: <a class="mono" href="/reports/{}">{}</a></h1>{}',
        path_segment(run_id),
        run_id,
        section,
    )
    return page(f"Drift of {run_id}", body, nav="reports")
