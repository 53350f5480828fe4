"""A 10,000-sample golden comparison against a per-sample pure-Python loop over the same samples.

What is measured, in this process and on the same samples: ``engines.golden.compare`` (both
cost models through ``estimate_batch``, the summaries, the verdict, the worst samples, the
comparison with the baseline), against the straightforward way: a loop calling each model's
per-plan ``estimate`` and computing the same summary with plain Python (``sum``, ``sorted``,
a type-7 percentile, a sort for the worst samples). Each is timed ``--repeats`` times and the
median counts; every vectorised run reads the plans afresh (nothing is cached between runs).
Their ratio is the result (target: at least 20x, like bench/canary.py).

Honesty checks: the two must agree on every count (within tolerance, invalid samples, the four
feasibility cells, closer/farther/tied), on the maximum error exactly, on the mean and p90
relative errors to 1e-12, on the worst samples and their order, and on the verdict. The time
the vectorised path spends reading the plans into columns is printed too, so the ratio is not
read as "the models got 20x faster".
"""

from __future__ import annotations

import argparse
import json
import math
import random
import statistics
import time
from datetime import UTC, datetime
from typing import Any

from canary import make_plans

from costsim_analytics.engines.cost_models import CostModel, PlanBatch, load_cost_model
from costsim_analytics.engines.golden.comparison import GoldenConfig, compare
from costsim_analytics.engines.golden.datasets import GoldenDataset, GoldenSample, dataset_sha256
from costsim_analytics.engines.golden.results import GoldenComparison


def make_dataset(n: int, seed: int) -> GoldenDataset:
    """``n`` samples: synthetic shapes with random prompts, timeouts and budgets.

    The expectations are near V1's (a few cents off, some feasibility flipped), so that the
    errors and the flips vary.
    """
    rng = random.Random(seed)
    v1 = load_cost_model("v1")
    samples = []
    for i, plan in enumerate(make_plans(n, seed)):  # the canary benchmark's plans
        e = v1.estimate(plan)
        cost = max(0.0, e.cost_cents + rng.choice([0, 0, 0, 1, -1, 3]))
        feasible = e.feasible if rng.random() > 0.02 else not e.feasible
        samples.append(GoldenSample(f"g{i:06d}", plan, cost, feasible, e.duration_ms))
    samples.sort(key=lambda s: s.id)
    now = datetime.now(UTC)
    return GoldenDataset(
        "bench", 1, dataset_sha256(samples), "", "import", n, True, now, samples=tuple(samples)
    )


# --- the straightforward way: one sample at a time, plain Python -------------------------------


def pct(ordered: list[float], q: float) -> float:
    """Type-7 percentile of sorted values."""
    h = q / 100 * (len(ordered) - 1)
    lo = math.floor(h)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (h - lo) * (ordered[hi] - ordered[lo])


def python_summary(rows: list[tuple[Any, ...]], tolerance: float) -> dict[str, Any]:
    """rows: (valid, predicted cost, predicted feasible, expected cost, expected feasible)."""
    rel, abs_, within, invalid = [], [], 0, 0
    cells = [0, 0, 0, 0]
    for valid, cost, feasible, expected, expected_ok in rows:
        if not valid:
            invalid += 1
            continue
        a = abs(cost - expected)
        r = a / max(expected, 1.0)
        rel.append(r)
        abs_.append(a)
        within += r <= tolerance
        cells[2 * (not expected_ok) + (not feasible)] += 1
    ordered = sorted(rel)
    return {
        "within": within,
        "invalid": invalid,
        "cells": cells,
        "mean": sum(rel) / len(rel),
        "p90": pct(ordered, 90),
        "max_abs": max(abs_),
        "share": within / len(rows),
    }


def python_compare(
    d: GoldenDataset, candidate: CostModel, baseline: CostModel, config: GoldenConfig
) -> dict[str, Any]:
    per_model: dict[str, list[tuple[Any, ...]]] = {candidate.name: [], baseline.name: []}
    for s in d.samples:
        for model in (candidate, baseline):
            try:
                e = model.estimate(s.plan_input)
                row = (True, e.cost_cents, e.feasible, s.expected_cost_cents, s.expected_feasible)
            except ValueError:
                row = (False, math.nan, False, s.expected_cost_cents, s.expected_feasible)
            per_model[model.name].append(row)
    cand_rows, base_rows = per_model[candidate.name], per_model[baseline.name]
    cand = python_summary(cand_rows, config.tolerance)
    base = python_summary(base_rows, config.tolerance)
    closer = farther = tied = 0
    for c, b in zip(cand_rows, base_rows, strict=True):
        if c[0] and b[0]:
            ca, ba = abs(c[1] - c[3]), abs(b[1] - b[3])
            closer += ca < ba
            farther += ca > ba
            tied += ca == ba

    def badness(i: int) -> tuple[Any, ...]:
        valid, cost, feasible, expected, expected_ok = cand_rows[i]
        if not valid:
            return (0, 0, -math.inf, -math.inf, i)
        a = abs(cost - expected)
        return (1, 0 if feasible != expected_ok else 1, -(a / max(expected, 1.0)), -a, i)

    worst = sorted(range(len(cand_rows)), key=badness)[: config.worst_samples]
    flips = cand["cells"][1] + cand["cells"][2]
    return {
        "candidate": cand,
        "baseline": base,
        "closer": closer,
        "farther": farther,
        "tied": tied,
        "worst": [d.samples[i].id for i in worst],
        "passed": cand["share"] >= config.min_share and flips <= config.max_feasibility_flips,
    }


# --- agreement ---------------------------------------------------------------------------------


def check(c: GoldenComparison, ref: dict[str, Any]) -> None:
    for summary, r in ((c.candidate, ref["candidate"]), (c.baseline, ref["baseline"])):
        f = summary.feasibility
        cells = [
            f.expected_feasible_predicted_feasible,
            f.expected_feasible_predicted_infeasible,
            f.expected_infeasible_predicted_feasible,
            f.expected_infeasible_predicted_infeasible,
        ]
        assert (summary.within_tolerance, summary.invalid_samples, cells) == (
            r["within"],
            r["invalid"],
            r["cells"],
        ), (summary, r)
        assert summary.max_absolute_error == r["max_abs"]
        assert summary.within_tolerance_share == r["share"]
        assert summary.mean_relative_error is not None
        assert summary.p90_relative_error is not None
        assert math.isclose(summary.mean_relative_error, r["mean"], rel_tol=1e-12, abs_tol=1e-15)
        assert math.isclose(summary.p90_relative_error, r["p90"], rel_tol=1e-12, abs_tol=1e-15)
    assert (c.closer_samples, c.farther_samples, c.tied_samples) == (
        ref["closer"],
        ref["farther"],
        ref["tied"],
    )
    assert [w.id for w in c.worst_samples] == ref["worst"]
    assert c.passed == ref["passed"]


def timed(fn: Any, repeats: int) -> tuple[float, list[float], Any]:
    times, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), times, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=10_000)
    parser.add_argument("--repeats", type=int, default=5, help="runs of each (median counts)")
    args = parser.parse_args()
    d = make_dataset(args.samples, seed=5)
    candidate, baseline = load_cost_model("v2"), load_cost_model("v1")
    config = GoldenConfig()

    vector_s, vector_runs, comparison = timed(
        lambda: compare(d, candidate, baseline, config), args.repeats
    )
    loop_s, loop_runs, reference = timed(
        lambda: python_compare(d, candidate, baseline, config), args.repeats
    )
    check(comparison, reference)
    read_s, _, _ = timed(lambda: PlanBatch([s.plan_input for s in d.samples]).columns, args.repeats)

    ratio = loop_s / vector_s
    after_read = loop_s / max(vector_s - read_s, 1e-9)
    cand = comparison.candidate
    print(
        f"{args.samples} golden samples; the loop agrees on every count, the errors, the worst "
        f"samples and the verdict ({'pass' if comparison.passed else 'fail'}: "
        f"{cand.within_tolerance_share:.1%} within {config.tolerance:.0%}, "
        f"{cand.feasibility.flips} flips)"
    )
    runs = ", ".join(f"{t * 1000:.1f}" for t in vector_runs)
    print(f"vectorised compare:   {vector_s * 1000:.1f} ms (median of {runs})")
    print(f"  of which reading the plans into columns: {read_s * 1000:.1f} ms")
    runs = ", ".join(f"{t * 1000:.0f}" for t in loop_runs)
    print(f"pure-Python loop:     {loop_s * 1000:.1f} ms (median of {runs})")
    print(f"ratio loop/vectorised: {ratio:.1f}x (target 20x)")
    print(f"ratio with the plans already read (loop / the rest): {after_read:.1f}x")
    print(
        json.dumps(
            {
                "bench": "golden",
                "ratio": round(ratio, 1),
                "target": 20,
                "vectorised_s": round(vector_s, 4),
                "loop_s": round(loop_s, 4),
                "read_plans_s": round(read_s, 4),
                "ratio_plans_read": round(after_read, 1),
                "samples": args.samples,
            }
        )
    )


if __name__ == "__main__":
    main()
