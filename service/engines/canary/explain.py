"""Explain a canary run: where its drift comes from, from its artifacts alone.

Pure domain: it takes the stored report, its ``report.json`` and the bytes of its
``comparisons.jsonl`` (checked against their checksums by the handler) and returns an
:class:`Explanation`: the drift attributed to groups of steps (``canary/attribution.py``),
the most drifting samples with their plans and a step-by-step breakdown, and the two cost
distributions on the very bins each KL of the report was computed on. Nothing is re-run:
every number is the run's own, so the answer is the same today and in a year. Runs written
before the comparisons kept per-step estimates are refused (:class:`RunNotExplainable`),
never guessed. The rules: docs/explain.md.

Example:
    >>> validate(ExplainRun("canary-1", group_by="colour"))
    Traceback (most recent call last):
    ...
    costsim_analytics.engines.errors.InvalidArgument: group_by: must be one of skill, \
position, iterations, prompt_band
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from costsim_analytics.engines.arrays import FloatArray
from costsim_analytics.engines.canary.attribution import (
    GROUP_BYS,
    PLAN_LEVEL,
    Inconsistent,
    Item,
    aligned,
    flip_causes,
    flip_weights,
    items_of,
    step_groups,
    whole_sample,
)
from costsim_analytics.engines.canary.groups import Attribution, Bootstrap, Ledger, attribute
from costsim_analytics.engines.canary.verdict import PERMUTATION_SEED_OFFSET
from costsim_analytics.engines.errors import FailedPrecondition, InvalidArgument
from costsim_analytics.engines.reports import CanaryReport, validate_run_id

DEFAULT_TOP = 10
MAX_TOP = 100
# The shares' bootstrap stream: after the run's own (seed .. seed + 2 bootstrap, + 3 the
# permutations), so an explanation never replays a stream the verdict used.
SEED_OFFSET = PERMUTATION_SEED_OFFSET + 1
# Resamples behind each share's interval: the run's own count, at most this many (each one
# costs a pass over every sample and group; 1,000 keep a 95 % interval's ends to about a
# tenth of its width).
MAX_RESAMPLES = 1000


class RunNotExplainable(FailedPrecondition):
    """The run's artifacts cannot explain it (too old, missing or altered); nothing guessed."""

    reason = "RUN_NOT_EXPLAINABLE"


@dataclass(frozen=True, slots=True)
class ExplainRun:
    """The ExplainCanaryRun command: one run, how to group its steps, how many samples to show."""

    run_id: str
    group_by: str = ""
    """One of :data:`GROUP_BYS`; empty: ``skill``."""
    top: int = 0
    """Most drifting samples to return, 0 to :data:`MAX_TOP`; 0: :data:`DEFAULT_TOP`."""

    @property
    def dimension(self) -> str:
        """``group_by`` with its default."""
        return self.group_by or "skill"

    @property
    def count(self) -> int:
        """``top`` with its default."""
        return self.top or DEFAULT_TOP


def validate(cmd: ExplainRun) -> None:
    """Refuse a bad run id, grouping or count, naming the field.

    Raises:
        InvalidArgument: ``run_id`` empty, too long or with control characters; ``group_by``
            not one of :data:`GROUP_BYS`; ``top`` outside 0..:data:`MAX_TOP`.
    """
    validate_run_id(cmd.run_id)
    if cmd.group_by and cmd.group_by not in GROUP_BYS:
        raise InvalidArgument.field("group_by", f"must be one of {', '.join(GROUP_BYS)}")
    if not 0 <= cmd.top <= MAX_TOP:
        raise InvalidArgument.field(
            "top", f"must be between 0 and {MAX_TOP} (0: the default, {DEFAULT_TOP})"
        )


@dataclass(frozen=True, slots=True)
class StepBreakdown:
    """One item of a drifting sample: a step (or the plan level) under both models."""

    position: int
    """0-based; -1 for the plan level."""
    skill: str
    group: str
    v1_cost: float | None
    v2_cost: float | None
    v1_latency_ms: float | None
    v2_latency_ms: float | None
    v1_risk: float | None
    v2_risk: float | None
    cost_delta: float
    flip_weight: float


@dataclass(frozen=True, slots=True)
class DriftingSample:
    """One of the most drifting samples, its plan and its step-by-step breakdown."""

    index: int
    """Its line in ``comparisons.jsonl`` (0-based), as ``diffs.jsonl`` names it."""
    id: str
    plan_input: Any
    v1_cost: float
    v2_cost: float
    v1_duration_ms: float
    v2_duration_ms: float
    v1_feasible: bool
    v2_feasible: bool
    cost_delta: float
    cost_delta_pct: float
    drift_score: float
    verdict: str
    flip_causes: tuple[str, ...]
    steps: tuple[StepBreakdown, ...]
    """Empty when the models gave no breakdown for it (its delta is all plan level)."""


@dataclass(frozen=True, slots=True)
class Histogram:
    """Both cost distributions on the bins one of the report's KL values was computed on."""

    name: str
    """``kl_divergence`` (the report's column: equal-width bins, epsilon smoothing) or
    ``judgement`` (the KL the verdict's rule read, under its judge's binning)."""
    method: str
    kl: float | None
    edges: tuple[float, ...]
    baseline_counts: tuple[int, ...]
    candidate_counts: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class Explanation:
    """Where a run's drift comes from (docs/explain.md)."""

    run_id: str
    group_by: str
    baseline_model: str
    candidate_model: str
    samples: int
    """Valid samples (both models estimated them): the report's ``total_samples``."""
    samples_without_steps: int
    """Of them, samples a model gave no breakdown for: their delta is all plan level."""
    steps: int
    total_delta: float
    """Sum of the items' cost deltas: the run's total candidate - baseline, in cents."""
    total_abs_delta: float
    """Sum of the items' ``|delta|``: what the shares divide."""
    samples_abs_delta: float
    """Sum of the samples' ``|delta|`` (at most ``total_abs_delta``)."""
    flips: int
    bootstrap: Bootstrap
    groups: tuple[Attribution, ...]
    top: tuple[DriftingSample, ...]
    histograms: tuple[Histogram, ...]


def _refuse(run_id: str, why: str) -> RunNotExplainable:
    return RunNotExplainable(f"canary run {run_id!r} cannot be explained: {why}")


def _rows(run_id: str, comparisons: bytes) -> list[dict[str, Any]]:
    try:
        return [json.loads(line) for line in comparisons.splitlines() if line]
    except ValueError as exc:
        raise _refuse(run_id, f"comparisons.jsonl is not JSON lines ({exc})") from exc


def _valid(row: Mapping[str, Any]) -> bool:
    return bool(row["baseline"]["valid"]) and bool(row["candidate"]["valid"])


def explain(
    cmd: ExplainRun,
    report: CanaryReport,
    report_json: Mapping[str, Any],
    comparisons: bytes,
) -> Explanation:
    """Explain ``report`` from its artifacts (already checked against their checksums).

    Raises:
        RunNotExplainable: the comparisons predate per-step estimates, or do not agree with
            the report (another number of valid samples, histograms the report's bins do not
            reproduce, a breakdown that does not fit its plan).
    """
    run_id, group_by = report.run_id, cmd.dimension
    ledger = Ledger()
    valid: list[tuple[int, dict[str, Any]]] = []
    without_steps = flips = 0
    try:
        for index, row in enumerate(_rows(run_id, comparisons)):
            if not _valid(row):
                continue
            base, cand = row["baseline"], row["candidate"]
            if "steps" not in base or "steps" not in cand:
                raise _refuse(
                    run_id,
                    "its comparisons.jsonl predates per-step estimates (they are kept from "
                    "this version on); run the canary again to explain it",
                )
            valid.append((index, row))
            if base["steps"] is None or cand["steps"] is None:
                without_steps += 1
                ledger.add(row, (), (), ())
            elif aligned(row):  # the common case, without an object per step
                names = step_groups(row["plan_input"]["plan"], group_by)
                ledger.add(row, names, base["steps"], cand["steps"])
            else:
                ledger.add_items(row, items_of(row, group_by))
            if bool(base["feasible"]) != bool(cand["feasible"]):
                flips += 1
                items = _items(row, group_by)
                ledger.add_flip(items, _flip(row, items))
    except (Inconsistent, KeyError, TypeError, IndexError) as exc:
        raise _refuse(run_id, f"comparisons.jsonl does not fit its plans ({exc!r})") from exc
    if len(valid) != report.total_samples:
        raise _refuse(
            run_id,
            f"comparisons.jsonl holds {len(valid)} valid samples, the report "
            f"{report.total_samples}",
        )
    config = report_json.get("config") or {}
    bootstrap = Bootstrap(
        resamples=min(int(config.get("bootstrap_resamples", MAX_RESAMPLES)), MAX_RESAMPLES),
        seed=report.seed + SEED_OFFSET,
        level=float(config.get("confidence_level", 0.95)),
    )
    groups, totals = attribute(ledger, group_by, bootstrap)
    v1 = np.array([float(row["baseline"]["cost_cents"]) for _, row in valid])
    v2 = np.array([float(row["candidate"]["cost_cents"]) for _, row in valid])
    return Explanation(
        run_id=run_id,
        group_by=group_by,
        baseline_model=report.baseline_model,
        candidate_model=report.candidate_model,
        samples=len(valid),
        samples_without_steps=without_steps,
        steps=int(totals["steps"]),
        total_delta=totals["delta"],
        total_abs_delta=totals["abs_delta"],
        samples_abs_delta=float(np.abs(v2 - v1).sum()),
        flips=flips,
        bootstrap=bootstrap,
        groups=groups,
        top=_top(valid, cmd.count, group_by),
        histograms=_histograms(run_id, report, report_json, v1, v2),
    )


def _items(row: Mapping[str, Any], group_by: str) -> list[Item]:
    """Every item of a valid row, its plan-level item included."""
    base, cand = row["baseline"], row["candidate"]
    if base["steps"] is None or cand["steps"] is None:
        return whole_sample(row)
    return items_of(row, group_by)


def _flip(row: Mapping[str, Any], items: Sequence[Item]) -> list[float]:
    """How the sample's feasibility flip (if any) is split over its items."""
    infeasible = not bool(row["candidate"]["feasible"])
    return flip_weights(flip_causes(row, items), items, candidate_infeasible=infeasible)


def _top(
    valid: Sequence[tuple[int, dict[str, Any]]], count: int, group_by: str
) -> tuple[DriftingSample, ...]:
    """The ``count`` most drifting samples: by drift score, then ``|delta|``, then line."""
    ranked = sorted(
        valid,
        key=lambda v: (-float(v[1]["drift_score"]), -abs(float(v[1]["cost_delta"])), v[0]),
    )
    out = []
    for index, row in ranked[:count]:
        base, cand = row["baseline"], row["candidate"]
        items = _items(row, group_by)
        causes = flip_causes(row, items)
        weights = _flip(row, items)
        no_steps = base["steps"] is None or cand["steps"] is None
        steps = () if no_steps else tuple(_step(i, w) for i, w in zip(items, weights, strict=False))
        out.append(
            DriftingSample(
                index=index,
                id=str(row["id"]),
                plan_input=row["plan_input"],
                v1_cost=float(base["cost_cents"]),
                v2_cost=float(cand["cost_cents"]),
                v1_duration_ms=float(base["duration_ms"]),
                v2_duration_ms=float(cand["duration_ms"]),
                v1_feasible=bool(base["feasible"]),
                v2_feasible=bool(cand["feasible"]),
                cost_delta=float(row["cost_delta"]),
                cost_delta_pct=float(row["cost_delta_pct"]),
                drift_score=float(row["drift_score"]),
                verdict=str(row["verdict"]),
                flip_causes=causes,
                steps=steps,
            )
        )
    return tuple(out)


def _step(item: Item, weight: float) -> StepBreakdown:
    v1, v2 = item.v1, item.v2
    plan = item.group == PLAN_LEVEL
    return StepBreakdown(
        position=item.position,
        skill=item.skill,
        group=item.group,
        v1_cost=None if v1 is None else v1[0],
        v2_cost=None if v2 is None else v2[0],
        v1_latency_ms=None if v1 is None else v1[1],
        v2_latency_ms=None if v2 is None else v2[1],
        v1_risk=None if v1 is None or plan else v1[2],
        v2_risk=None if v2 is None or plan else v2[2],
        cost_delta=item.cost_delta,
        flip_weight=weight,
    )


def _histograms(
    run_id: str,
    report: CanaryReport,
    report_json: Mapping[str, Any],
    v1: FloatArray,
    v2: FloatArray,
) -> tuple[Histogram, ...]:
    """Both distributions recounted on the report's own edges; they must match its counts."""
    judgement = report.statistics.judgement if report.statistics else None
    specs = (
        ("kl_divergence", report_json.get("kl_binning"), report.kl_divergence),
        (
            "judgement",
            report_json.get("judge_binning"),
            None if judgement is None else judgement.kl,
        ),
    )
    out = []
    for name, binning, kl in specs:
        if not binning or not binning.get("edges"):
            continue
        edges = np.array(binning["edges"], dtype=np.float64)
        # np.histogram's bins: [a, b) but the last, closed; the engine's assign() is the same.
        counts = tuple(
            tuple(int(c) for c in np.histogram(values, bins=edges)[0]) for values in (v1, v2)
        )
        stored = (tuple(binning["baseline_counts"]), tuple(binning["candidate_counts"]))
        if counts != stored:
            raise _refuse(run_id, f"its comparisons do not reproduce the report's {name} histogram")
        method = str(binning.get("method", "equal-width"))
        out.append(
            Histogram(
                name=name,
                method=method,
                kl=kl,
                edges=tuple(edges.tolist()),
                baseline_counts=counts[0],
                candidate_counts=counts[1],
            )
        )
    return tuple(out)
