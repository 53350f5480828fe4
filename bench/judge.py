"""Operating characteristics of the canary judge: false alarms and power, by sample count.

What is measured: for each scenario (a way the candidate can differ from V1) and each sample
count n, the share of seeded canary runs that pass, fail and come out inconclusive, under the
calibrated judge and under the predecessor's rule (``legacy``), side by side. Every run goes
through the real engine, ``engines.canary.evaluate``, with the real V1 cost model as the
baseline and a candidate that wraps V1 (``DriftedModel``): it prices each plan with V1, then
applies the scenario's per-plan change (a cost factor, rounded to whole cents as every cost
model rounds, and/or a feasibility flip). No server, no database.

Ground truth: each scenario's population value of every rule's statistic on 100,000 plans
(KL under the calibrated judge's binning, outlier share, major drift share). A scenario
*should fail* when some value is at least 1.5 times its threshold, *should pass* when every
value is below half of it; between the two it is a grey zone, reported but not scored.

The last line is JSON: ``false_alarm_max`` (highest fail rate over should-pass scenarios, any
n), ``power_min_n100`` / ``power_min_n1000`` (lowest fail rate over should-fail scenarios at
that n) and ``extreme_gap_max`` (largest drop in fail rate from a (c) scenario to its (d)
twin, n >= 100), for the calibrated judge, with the legacy judge's under ``"legacy"``.

    python bench/judge.py                 # 1,000 repetitions (minutes on 2 cores)
    python bench/judge.py --reps 100      # a quick look
    python bench/judge.py --options       # the KL rule's options side by side (docs table)
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import time
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

import numpy as np

from costsim_analytics.engines.canary import permutation as perm
from costsim_analytics.engines.canary.evaluation import CanaryConfig, Sample, evaluate
from costsim_analytics.engines.canary.judge import JUDGES, JudgeSpec
from costsim_analytics.engines.cost_models import BatchEstimates, Estimate, load_cost_model
from costsim_analytics.engines.statistics import MAJOR_DRIFT, MISMATCH, drift

POPULATION = 100_000
SIZES = (30, 100, 1000)
EXTREME_CENTS = 1_000_000
NOW = datetime(2026, 1, 1, tzinfo=UTC)
_PROMPTS = {k: "x" * k for k in (200, 3000, 9000, 24000, 70000)}
_SKILLS = ("llm_invoke", "http_call", "json_transform", "email_send", "custom_enricher", "kv_get")


def typical_plans(size: int, seed: int) -> list[dict[str, Any]]:
    """Plans of 1-5 steps over V1's skills, iterations log-uniform in 1..40, ample budgets."""
    rng = np.random.default_rng(seed)
    prompts = list(_PROMPTS.values())
    plans = []
    for i in range(size):
        steps = []
        for _ in range(int(rng.integers(1, 6))):
            skill = _SKILLS[int(rng.integers(0, len(_SKILLS)))]
            step: dict[str, Any] = {"skill": skill, "params": {}}
            if skill == "llm_invoke":
                step["params"]["prompt"] = prompts[int(rng.integers(0, len(prompts)))]
            iterations = int(np.exp(rng.uniform(0.0, np.log(40.0))))
            if iterations > 1:
                step["iterations"] = iterations
            steps.append(step)
        plans.append({"plan": steps, "budget_cents": 10_000_000, "bench_id": i})
    return plans


def pareto_plans(size: int, seed: int) -> list[dict[str, Any]]:
    """Plans of 1-3 priced steps whose iterations are Pareto (shape 1.16, the 80/20 law)."""
    rng = np.random.default_rng(seed)
    plans = []
    for i in range(size):
        steps = []
        for _ in range(int(rng.integers(1, 4))):
            skill = ("llm_invoke", "email_send", "custom_enricher")[int(rng.integers(0, 3))]
            iterations = int(min(100_000, np.ceil(rng.pareto(1.16) + 1.0)))
            steps.append({"skill": skill, "params": {}, "iterations": iterations})
        plans.append({"plan": steps, "budget_cents": 1e12, "bench_id": i})
    return plans


def extreme_plan(bench_id: int) -> dict[str, Any]:
    """One plan that V1 prices at 1,000,000 cents (an unknown skill, 100,000 iterations)."""
    step = {"skill": "custom_enricher", "params": {}, "iterations": EXTREME_CENTS // 10}
    return {"plan": [step], "budget_cents": 1e12, "bench_id": bench_id}


class DriftedModel:
    """A candidate that is V1 with a per-plan change: cost x factor (rounded), feasibility flip.

    The change of a plan is looked up by its ``bench_id`` (ignored by the cost models), so a
    plan gets the same change in every sample it is drawn into, like a real model would.
    """

    version = "bench"

    def __init__(self, name: str, factor: np.ndarray, flip: np.ndarray) -> None:
        self.name = name
        self._v1 = load_cost_model("v1")
        self._factor = factor
        self._flip = flip

    def _ids(self, plan_inputs: Sequence[Mapping[str, Any]]) -> np.ndarray:
        return np.fromiter((p["bench_id"] for p in plan_inputs), dtype=np.intp)

    def estimate(self, plan_input: Mapping[str, Any]) -> Estimate:
        """V1's estimate of one plan with the plan's change applied."""
        base = self._v1.estimate(plan_input)
        i = int(plan_input["bench_id"])
        cost = float(round(base.cost_cents * float(self._factor[i])))
        return replace(base, cost_cents=cost, feasible=base.feasible != bool(self._flip[i]))

    def estimate_batch(self, plan_inputs: Sequence[Mapping[str, Any]]) -> BatchEstimates:
        """V1's estimates of many plans with each plan's change applied."""
        base = self._v1.estimate_batch(plan_inputs)
        ids = self._ids(plan_inputs)
        # numpy rounds half to even, as Python's round does in V2.
        cost = np.round(base.cost_cents * self._factor[ids])
        feasible = np.where(base.valid, base.feasible != self._flip[ids], False)
        return replace(base, cost_cents=cost, feasible=feasible)


@dataclass(frozen=True)
class Scenario:
    """One way V2 can differ from V1; ``twin``: the (c) scenario a (d) one extends."""

    name: str
    group: str
    population: str = "typical"
    jitter: float = 0.0
    shift: float = 0.0
    shift_share: float = 0.0
    flip_share: float = 0.0
    extreme: bool = False
    twin: str = ""


def scenarios() -> list[Scenario]:
    """The scenarios of the issue: (a) to (f)."""
    out = [
        Scenario("a identical", "a"),
        Scenario("b jitter 1%", "b", jitter=0.01),
        Scenario("b jitter 5%", "b", jitter=0.05),
    ]
    for share in (0.2, 1.0):
        for shift in (0.10, 0.25, 0.50):
            name = f"c +{shift:.0%} on {share:.0%}"
            out.append(Scenario(name, "c", shift=shift, shift_share=share))
            out.append(
                Scenario(
                    f"d +{shift:.0%} on {share:.0%} +extreme",
                    "d",
                    shift=shift,
                    shift_share=share,
                    extreme=True,
                    twin=name,
                )
            )
    out += [
        Scenario("e flips 2%", "e", flip_share=0.02),
        Scenario("e flips 10%", "e", flip_share=0.10),
        Scenario("f pareto jitter 5%", "f", population="pareto", jitter=0.05),
        Scenario("f pareto +50% on all", "f", population="pareto", shift=0.5, shift_share=1.0),
    ]
    return out


def _key(s: Scenario) -> int:
    """A seed for the scenario; a (d) scenario shares its (c) twin's.

    So the twins differ only by the extreme plan: the same per-plan changes, the same draws.
    """
    return zlib.crc32((s.twin or s.name).encode())


def plans_for(population: str) -> list[dict[str, Any]]:
    """The population's 100,000 plans plus the extreme plan at id 100,000 (seeded)."""
    make = typical_plans if population == "typical" else pareto_plans
    return [*make(POPULATION, seed=11), extreme_plan(POPULATION)]


def candidate_for(s: Scenario, seed: int) -> DriftedModel:
    """The scenario's candidate model; its per-plan changes are drawn once per scenario."""
    rng = np.random.default_rng([seed, _key(s)])
    size = POPULATION + 1
    factor = np.ones(size)
    if s.jitter:
        factor += rng.uniform(-s.jitter, s.jitter, size)
    if s.shift:
        chosen = rng.random(size) < s.shift_share
        factor[chosen] *= 1.0 + s.shift
    flip = rng.random(size) < s.flip_share
    factor[POPULATION], flip[POPULATION] = 1.0, False  # the extreme plan: priced the same
    return DriftedModel(f"v1~{s.name}", factor, flip)


def population_values(
    s: Scenario, plans: list[dict[str, Any]], config: CanaryConfig
) -> dict[str, float]:
    """Every rule's statistic on the 100,000 plans (the extreme plan is one of them in (d))."""
    chosen = plans if s.extreme else plans[:POPULATION]
    v1 = load_cost_model("v1").estimate_batch(chosen)
    v2 = candidate_for(s, seed=7).estimate_batch(chosen)
    d = drift(v1.cost_cents, v2.cost_cents, v1.feasible, v2.feasible)
    binning = JUDGES["calibrated"].binning
    return {
        "kl": perm.binned(v1.cost_cents, v2.cost_cents, binning).kl,
        "outlier_share": float(np.mean(d.drift_score > config.outlier_threshold)),
        "major_share": float(np.mean(np.isin(d.verdict, (MAJOR_DRIFT, MISMATCH)))),
    }


def label(values: Mapping[str, float], config: CanaryConfig) -> str:
    """``should-fail``, ``should-pass`` or ``grey`` from the population values."""
    pairs = [
        (values["kl"], config.drift_threshold),
        (values["outlier_share"], config.outlier_max_pct),
        (values["major_share"], config.major_drift_max_pct),
    ]
    if any(v >= 1.5 * t for v, t in pairs):
        return "should-fail"
    if all(v < 0.5 * t for v, t in pairs):
        return "should-pass"
    return "grey"


_PLANS: dict[str, list[dict[str, Any]]] = {}


def run_cell(task: tuple[Scenario, int, int, dict[str, JudgeSpec]]) -> dict[str, Any]:
    """``reps`` seeded canaries of one scenario at one n, under every judge given."""
    s, n, reps, judges = task
    if s.population not in _PLANS:
        _PLANS[s.population] = plans_for(s.population)
    plans = _PLANS[s.population]
    baseline, candidate = load_cost_model("v1"), candidate_for(s, seed=7)
    counts = {name: {"pass": 0, "fail": 0, "inconclusive": 0, "kl_fail": 0} for name in judges}
    for rep in range(reps):
        rng = np.random.default_rng([n, rep, _key(s)])
        ids = rng.integers(0, POPULATION, n)
        if s.extreme:
            ids[0] = POPULATION
        samples = [Sample(str(j), plans[i]) for j, i in enumerate(ids)]
        for name, spec in judges.items():
            config = CanaryConfig(judge=spec, min_samples=min(SIZES))
            report = evaluate(
                samples, baseline, candidate, config,
                run_id="bench", timestamp=NOW, seed=rep, sample_source="bench",
            ).report  # fmt: skip
            counts[name][report.status] += 1
            judgement = report.statistics.judgement if report.statistics else None
            if judgement and judgement.rules[0].decision == "fail":
                counts[name]["kl_fail"] += 1
    return {"scenario": s.name, "n": n, "reps": reps, "counts": counts}


def summarise(rows: list[dict[str, Any]], labels: Mapping[str, str], judge: str) -> dict[str, Any]:
    """The JSON metrics of one judge."""
    rate = {(r["scenario"], r["n"]): r["counts"][judge]["fail"] / r["reps"] for r in rows}
    passing = [v for (s, _), v in rate.items() if labels[s] == "should-pass"]
    power = {
        n: [v for (s, m), v in rate.items() if m == n and labels[s] == "should-fail"] for n in SIZES
    }
    gaps = [
        rate[(sc.twin, n)] - rate[(sc.name, n)]
        for sc in scenarios()
        if sc.twin and (sc.twin, 100) in rate
        for n in SIZES
        if n >= 100 and labels[sc.twin] == "should-fail"
    ]
    return {
        "false_alarm_max": max(passing, default=0.0),
        "power_min_n30": min(power[30], default=1.0),
        "power_min_n100": min(power[100], default=1.0),
        "power_min_n1000": min(power[1000], default=1.0),
        "extreme_gap_max": max(gaps, default=0.0),
    }


OPTIONS = {
    "legacy": JUDGES["legacy"],
    "equal-width+eps+perm": JudgeSpec(
        "ew-perm", perm.Binning("equal-width", None, "epsilon"), True
    ),
    "quantile10+eps": JudgeSpec("q-eps", perm.Binning("quantile", 10, "epsilon"), False),
    "quantile10+laplace": JudgeSpec("q-lap", perm.Binning("quantile", 10, "laplace"), False),
    "log10+laplace": JudgeSpec("log-lap", perm.Binning("log", 10, "laplace"), False),
    "log10+laplace+perm": JudgeSpec("log-lap-perm", perm.Binning("log", 10, "laplace"), True),
    "quantile10+laplace+perm": JUDGES["calibrated"],
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=1000, help="seeded canaries per cell")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--options", action="store_true", help="the KL rule's options instead")
    parser.add_argument("--only", default="", help="run only scenarios whose name contains this")
    args = parser.parse_args()
    config = CanaryConfig()
    judges = (
        OPTIONS
        if args.options
        else {"calibrated": JUDGES["calibrated"], "legacy": JUDGES["legacy"]}
    )
    chosen = [s for s in scenarios() if args.only in s.name]
    start = time.perf_counter()
    values, labels = {}, {}
    for s in chosen:
        if s.population not in _PLANS:
            _PLANS[s.population] = plans_for(s.population)
        values[s.name] = population_values(s, _PLANS[s.population], config)
        labels[s.name] = label(values[s.name], config)
    tasks = [(s, n, args.reps, judges) for s in chosen for n in SIZES]
    with multiprocessing.get_context("fork").Pool(args.workers) as pool:
        rows = pool.map(run_cell, tasks, chunksize=1)
    elapsed = time.perf_counter() - start
    if args.options:
        print_options(rows, labels, values)
    else:
        print_table(rows, labels, values)
    print(f"{args.reps} repetitions per cell, {len(tasks)} cells, {elapsed:.0f} s")
    result: dict[str, Any] = {"bench": "judge", "reps": args.reps, "seconds": round(elapsed, 1)}
    if args.options:
        result["options"] = {name: summarise(rows, labels, name) for name in judges}
    else:
        result.update(summarise(rows, labels, "calibrated"))
        result["legacy"] = summarise(rows, labels, "legacy")
    print(json.dumps(result))


def print_table(
    rows: list[dict[str, Any]], labels: Mapping[str, str], values: Mapping[str, Mapping[str, float]]
) -> None:
    print(
        "| scenario | population KL / outliers / major | should | n "
        "| calibrated pass / fail / inconclusive | legacy pass / fail |"
    )
    print("|---|---|---|---|---|---|")
    for r in rows:
        v = values[r["scenario"]]
        c, lg = r["counts"]["calibrated"], r["counts"]["legacy"]
        reps = r["reps"]
        shares = f"{v['kl']:.3f} / {v['outlier_share']:.1%} / {v['major_share']:.1%}"
        new = f"{c['pass'] / reps:.3f} / {c['fail'] / reps:.3f} / {c['inconclusive'] / reps:.3f}"
        old = f"{lg['pass'] / reps:.3f} / {lg['fail'] / reps:.3f}"
        print(
            f"| {r['scenario']} | {shares} | {labels[r['scenario']]} | {r['n']} | {new} | {old} |"
        )


def print_options(
    rows: list[dict[str, Any]], labels: Mapping[str, str], values: Mapping[str, Mapping[str, float]]
) -> None:
    names = list(rows[0]["counts"])
    print("KL rule fail rate by option (the other rules left out)")
    print("| scenario | should | n | " + " | ".join(names) + " |")
    print("|---|---|---|" + "---|" * len(names))
    for r in rows:
        cells = " | ".join(f"{r['counts'][k]['kl_fail'] / r['reps']:.3f}" for k in names)
        print(f"| {r['scenario']} | {labels[r['scenario']]} | {r['n']} | {cells} |")


if __name__ == "__main__":
    main()
