"""A run's step items added up by group, with a bootstrap interval on every share.

The items, their plan level and their flips' weights are ``canary/attribution.py``'s (whose
docstring states the rules); :func:`attribute` adds them up. A group's ``share`` is its sum
of ``|delta|`` over the run's, so the shares add up to 1 over the groups; its interval
resamples the samples (a sample's items go together) with
``engines/resampling.bootstrap_column_sums``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from costsim_analytics.engines.arrays import FloatArray
from costsim_analytics.engines.canary.attribution import (
    MAX_GROUPS,
    OTHER,
    PLAN_LEVEL,
    RISK_CAP,
    Item,
    group_order,
)
from costsim_analytics.engines.resampling import bootstrap_column_sums, percentile_interval


@dataclass(frozen=True, slots=True)
class Attribution:
    """One group's part of a run's drift (docs/explain.md)."""

    group: str
    steps: int
    samples: int
    v1_cost: float
    v2_cost: float
    delta: float
    abs_delta: float
    share: float
    share_low: float
    share_high: float
    flips: float
    flip_share: float
    flip_share_low: float
    flip_share_high: float
    v1_duration_ms: float
    v2_duration_ms: float
    duration_share: float
    v1_mean_risk: float | None
    v2_mean_risk: float | None
    risk_share: float

    @property
    def v1_cost_per_step(self) -> float:
        """Mean baseline cost of the group's steps, in cents."""
        return self.v1_cost / self.steps if self.steps else 0.0

    @property
    def v2_cost_per_step(self) -> float:
        """Mean candidate cost of the group's steps, in cents."""
        return self.v2_cost / self.steps if self.steps else 0.0


Row = Sequence[float]
"""A step under one model as comparisons.jsonl keeps it: ``[cost, latency, risk]``."""


@dataclass
class Ledger:
    """The step items of many samples in columns, their totals, and their flips' weights.

    Samples are added in order; :func:`attribute` adds the plan-level item of each sample
    itself (its totals minus its steps, summed left to right as the models fold them).
    """

    counts: list[int] = field(default_factory=list)
    group: list[str] = field(default_factory=list)
    v1: list[Row | None] = field(default_factory=list)
    v2: list[Row | None] = field(default_factory=list)
    totals: list[tuple[float, float, float, float]] = field(default_factory=list)
    flip_sample: list[int] = field(default_factory=list)
    flip_group: list[str] = field(default_factory=list)
    flip_weight: list[float] = field(default_factory=list)

    def add(
        self,
        row: Mapping[str, Any],
        groups: Sequence[str],
        v1: Sequence[Row | None],
        v2: Sequence[Row | None],
    ) -> None:
        """One sample's step items (``groups``, and each model's row or None) and totals."""
        base, cand = row["baseline"], row["candidate"]
        self.counts.append(len(groups))
        self.group.extend(groups)
        self.v1.extend(v1)
        self.v2.extend(v2)
        self.totals.append(
            (
                float(base["cost_cents"]),
                float(cand["cost_cents"]),
                float(base["duration_ms"]),
                float(cand["duration_ms"]),
            )
        )

    def add_items(self, row: Mapping[str, Any], items: Sequence[Item]) -> None:
        """One sample as :func:`items_of` gave it (its plan-level item is recomputed)."""
        steps = [i for i in items if i.position >= 0]
        self.add(row, [i.group for i in steps], [i.v1 for i in steps], [i.v2 for i in steps])

    def add_flip(self, items: Sequence[Item], weights: Sequence[float]) -> None:
        """The flip of the sample added last, split as ``weights`` (beyond ``items``: plan)."""
        sample = len(self.counts) - 1
        for k, weight in enumerate(weights):
            if weight:
                self.flip_sample.append(sample)
                self.flip_group.append(items[k].group if k < len(items) else PLAN_LEVEL)
                self.flip_weight.append(weight)


def _columns(values: Sequence[Row | None]) -> tuple[FloatArray, npt.NDArray[np.bool_]]:
    present = np.fromiter((v is not None for v in values), dtype=np.bool_, count=len(values))
    zero = (0.0, 0.0, 0.0)
    matrix = np.array([zero if v is None else v for v in values], dtype=np.float64)
    return matrix.reshape(-1, 3), present


@dataclass(frozen=True, slots=True)
class Bootstrap:
    """How the shares' intervals are drawn: resamples of the samples, a seed, a level."""

    resamples: int
    seed: int
    level: float


def attribute(
    ledger: Ledger, group_by: str, bootstrap: Bootstrap
) -> tuple[tuple[Attribution, ...], dict[str, float]]:
    """The groups (ordered, at most :data:`MAX_GROUPS` + 1) and the run's totals."""
    n_samples = len(ledger.counts)
    v1, has1 = _columns(ledger.v1)
    v2, has2 = _columns(ledger.v2)
    sample = np.repeat(np.arange(n_samples), ledger.counts)
    groups = list(ledger.group)
    # The plan-level item of each sample: its totals minus its steps' (bincount adds each
    # sample's steps left to right from 0.0, as the models fold them: V1's is exactly 0).
    totals = np.array(ledger.totals, dtype=np.float64).reshape(-1, 4)
    residual = (
        np.column_stack(
            [
                totals[:, j] - np.bincount(sample, weights=col, minlength=n_samples)
                for j, col in enumerate((v1[:, 0], v2[:, 0], v1[:, 1], v2[:, 1]))
            ]
        )
        if n_samples
        else np.zeros((0, 4))
    )
    plan_rows = np.flatnonzero(residual.any(axis=1))
    if plan_rows.size:
        sample = np.concatenate([sample, plan_rows])
        groups += [PLAN_LEVEL] * plan_rows.size
        r = residual[plan_rows]
        zeros = np.zeros(plan_rows.size)
        v1 = np.vstack([v1, np.column_stack([r[:, 0], r[:, 2], zeros])])
        v2 = np.vstack([v2, np.column_stack([r[:, 1], r[:, 3], zeros])])
        planned = np.zeros(plan_rows.size, dtype=np.bool_)
        has1, has2 = np.concatenate([has1, ~planned]), np.concatenate([has2, ~planned])
        risky = np.concatenate([np.ones(len(ledger.group), dtype=np.bool_), planned])
    else:
        risky = np.ones(len(groups), dtype=np.bool_)
    names = sorted(set(groups) | set(ledger.flip_group))
    codes = {name: k for k, name in enumerate(names)}
    group = np.array([codes[g] for g in groups], dtype=np.intp)
    flip_group = np.array([codes[g] for g in ledger.flip_group], dtype=np.intp)
    flip_sample = np.array(ledger.flip_sample, dtype=np.intp)
    flips = np.array(ledger.flip_weight, dtype=np.float64)
    k = len(names)
    cost_delta = v2[:, 0] - v1[:, 0]
    abs_cost = np.abs(cost_delta)
    abs_latency = np.abs(v2[:, 1] - v1[:, 1])
    steps1, steps2 = has1 & risky, has2 & risky  # risk is a step's, never the plan's
    risk1 = np.where(steps1, np.minimum(v1[:, 2], RISK_CAP), 0.0)
    risk2 = np.where(steps2, np.minimum(v2[:, 2], RISK_CAP), 0.0)
    survival = np.abs(np.log1p(-risk2) - np.log1p(-risk1))

    def by_group(values: FloatArray) -> FloatArray:
        return np.asarray(np.bincount(group, weights=values, minlength=k), dtype=np.float64)

    def flips_by_group() -> FloatArray:
        return np.asarray(np.bincount(flip_group, weights=flips, minlength=k), dtype=np.float64)

    abs_by, flips_by = by_group(abs_cost), flips_by_group()
    if k > MAX_GROUPS:
        # The MAX_GROUPS largest by |delta| (then flips, then name) are listed; the rest, one.
        ranked = sorted(range(k), key=lambda g: (-abs_by[g], -flips_by[g], names[g]))
        kept = set(ranked[:MAX_GROUPS])
        remap = np.array([g if g in kept else k for g in range(k)], dtype=np.intp)
        names.append(OTHER)
        group, flip_group, k = remap[group], remap[flip_group], k + 1
        abs_by, flips_by = by_group(abs_cost), flips_by_group()
    total_abs, total_flips = float(abs_by.sum()), float(flips_by.sum())
    low, high = _share_intervals(
        (sample, group, abs_cost), (flip_sample, flip_group, flips), k, n_samples, bootstrap
    )
    counts = np.bincount(group, minlength=k)
    pairs = np.unique(group * max(n_samples, 1) + sample)
    samples = np.bincount(pairs // max(n_samples, 1), minlength=k)
    v1_cost, v2_cost = by_group(v1[:, 0]), by_group(v2[:, 0])
    v1_lat, v2_lat = by_group(v1[:, 1]), by_group(v2[:, 1])
    lat_by, surv_by = by_group(abs_latency), by_group(survival)
    n1, n2 = np.bincount(group[steps1], minlength=k), np.bincount(group[steps2], minlength=k)
    r1_by, r2_by = by_group(risk1), by_group(risk2)
    total_lat, total_surv = float(lat_by.sum()), float(surv_by.sum())
    rows = [
        Attribution(
            group=names[g],
            steps=int(counts[g]),
            samples=int(samples[g]),
            v1_cost=float(v1_cost[g]),
            v2_cost=float(v2_cost[g]),
            delta=float(v2_cost[g] - v1_cost[g]),
            abs_delta=float(abs_by[g]),
            share=_ratio(abs_by[g], total_abs),
            share_low=float(low[g]),
            share_high=float(high[g]),
            flips=float(flips_by[g]),
            flip_share=_ratio(flips_by[g], total_flips),
            flip_share_low=float(low[k + g]),
            flip_share_high=float(high[k + g]),
            v1_duration_ms=float(v1_lat[g]),
            v2_duration_ms=float(v2_lat[g]),
            duration_share=_ratio(lat_by[g], total_lat),
            v1_mean_risk=float(r1_by[g] / n1[g]) if n1[g] else None,
            v2_mean_risk=float(r2_by[g] / n2[g]) if n2[g] else None,
            risk_share=_ratio(surv_by[g], total_surv),
        )
        for g in range(k)
        if counts[g] or flips_by[g]  # not an OTHER that took nothing
    ]
    order = group_order(group_by)
    if order:
        rows.sort(key=lambda r: (order.get(r.group, len(order) + 2), r.group))
    else:
        rows.sort(key=lambda r: (r.group == OTHER, -r.abs_delta, -r.flips, r.group))
    summary = {
        "abs_delta": total_abs,
        "delta": float(cost_delta.sum()),
        "flips": total_flips,
        "abs_duration_delta": total_lat,
        "risk_change": total_surv,
        "steps": float(len(ledger.group)),
    }
    return tuple(rows), summary


def _ratio(part: float, whole: float) -> float:
    return float(part / whole) if whole > 0.0 else 0.0


Entries = tuple[npt.NDArray[np.intp], npt.NDArray[np.intp], FloatArray]
"""(sample, group, value) of each entry to add up."""


def _share_intervals(
    costs: Entries, flips: Entries, k: int, n_samples: int, bootstrap: Bootstrap
) -> tuple[FloatArray, FloatArray]:
    """Bootstrap intervals of every cost share (first ``k``) and flip share (next ``k``).

    The samples are resampled (a sample's items go together); a resample in which nothing
    moved has shares 0, as the point estimate would.
    """
    zeros = np.zeros(2 * k)
    if k == 0 or n_samples == 0:
        return zeros, zeros
    per_sample = np.zeros((n_samples, 2 * k))
    for offset, (sample, group, values) in ((0, costs), (k, flips)):
        np.add.at(per_sample, (sample, offset + group), values)
    used = np.flatnonzero(per_sample.any(axis=0))
    if used.size == 0:
        return zeros, zeros
    rng = np.random.default_rng(bootstrap.seed)
    sums = np.zeros((bootstrap.resamples, 2 * k))
    sums[:, used] = bootstrap_column_sums(per_sample[:, used], bootstrap.resamples, rng)
    shares = np.zeros_like(sums)
    for block in (slice(0, k), slice(k, 2 * k)):
        total = sums[:, block].sum(axis=1, keepdims=True)
        np.divide(sums[:, block], total, out=shares[:, block], where=total > 0.0)
    return percentile_interval(shares, bootstrap.level)
