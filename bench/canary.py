"""A 10,000-sample canary end to end against a per-sample pure-Python loop over the same samples.

What is measured: the wall time of ``RunCanary`` (sample_count 10,000) through a real
``costsim-analytics serve`` subprocess on PostgreSQL: loading the samples from provenance,
both cost models, the statistics, the three artifacts and the report row. Against it, in this
process, the predecessor's approach over the same samples and producing the same numbers: a
straightforward loop calling each model's per-plan ``estimate``, drift per sample, then the
statistics with plain Python (sorted lists, a Python histogram, a Python Wilcoxon, and a
bootstrap drawing ``random.choices``), the same artifacts written line by line, and the row
inserted with psycopg. Their ratio is the result (target: at least 20x).

Honesty checks: the two must agree on every count, the median and p90 and (to 1e-9) the KL
divergence, or the bench fails. The per-stage times of the loop are printed, and so is the
ratio without the bootstrap (the part of the work the predecessor also did), so the headline
ratio is not read as "20x on everything".
"""

from __future__ import annotations

import json
import math
import os
import random
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import grpc
import psycopg
from _common import base_parser, bench_database, libpq_url, service_server

from costsim.analytics.v1 import analytics_pb2 as pb
from costsim.analytics.v1 import analytics_pb2_grpc as pb_grpc
from costsim_analytics.engines.canary.synthetic import synthetic_samples
from costsim_analytics.engines.cost_models import load_cost_model

RESAMPLES = 2000
BANDS = (0.05, 0.15, 0.30)


def make_plans(n: int, seed: int) -> list[dict[str, Any]]:
    """``n`` plan inputs: the synthetic shapes with randomised prompts, budgets and timeouts."""
    rng = random.Random(seed)
    shapes = [plan for _, plan in synthetic_samples()]
    plans = []
    for _ in range(n):
        plan = json.loads(json.dumps(rng.choice(shapes)))
        for step in plan["plan"]:
            params = step.get("params", {})
            if "prompt" in params:
                params["prompt"] = "x" * rng.randint(10, 6000)
            if "timeout_s" in params:
                params["timeout_s"] = rng.choice([0.2, 1, 5, 30])
        plan["budget_cents"] = rng.choice([5, 10, 20, 50, 100, 1000])
        plans.append(plan)
    return plans


def seed_provenance(address: str, plans: Sequence[dict[str, Any]]) -> None:
    """Write one successful provenance record per plan through WriteProvenanceBatch."""
    with grpc.insecure_channel(address) as channel:
        stub = pb_grpc.AnalyticsServiceStub(channel)
        for start in range(0, len(plans), 1000):
            request = pb.WriteProvenanceBatchRequest()
            for i, plan in enumerate(plans[start : start + 1000], start):
                payload = {"input": plan, "output": {"cost_cents": 1}, "status": "success"}
                request.records.add(
                    run_id=f"bench-{i}",
                    variant_slug="v2",
                    source="sandbox",
                    payload_json=json.dumps(payload),
                )
            stub.WriteProvenanceBatch(request, timeout=120)


# --- the predecessor's way: one sample at a time, plain Python ---------------------------------


def pct(ordered: Sequence[float], q: float) -> float:
    """Type-7 percentile of sorted values."""
    h = q / 100 * (len(ordered) - 1)
    lo = math.floor(h)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (h - lo) * (ordered[hi] - ordered[lo])


def py_divergence(a: list[float], b: list[float], eps: float = 1e-6) -> float:
    pooled = sorted(a + b)
    low, high = pooled[0], pooled[-1]
    cap = max(1, min(100, math.isqrt(min(len(a), len(b)))))
    if high == low:
        k, low, high = 1, low - 0.5, high + 0.5
    else:
        width = 2 * (pct(pooled, 75) - pct(pooled, 25)) * len(pooled) ** (-1 / 3)
        k = (
            math.ceil(min((high - low) / width, cap))
            if width > 0
            else math.ceil(math.log2(len(pooled))) + 1
        )
        k = max(1, min(k, cap))
    counts = []
    for values in (a, b):
        c = [0] * k
        for x in values:
            c[min(int((x - low) / (high - low) * k), k - 1)] += 1
        counts.append([n / len(values) for n in c])
    p, q = counts
    if p == q:
        return 0.0
    ps = [(x + eps) / (1 + k * eps) for x in p]
    qs = [(x + eps) / (1 + k * eps) for x in q]
    return sum(x * math.log(x / y) for x, y in zip(ps, qs, strict=True))


def py_wilcoxon(a: list[float], b: list[float]) -> float:
    """Two-sided p-value, normal approximation with tie correction."""
    d = [y - x for x, y in zip(a, b, strict=True) if y != x]
    n = len(d)
    if n == 0:
        return 1.0
    order = sorted(range(n), key=lambda i: abs(d[i]))
    ranks = [0.0] * n
    i, tie_term = 0, 0.0
    while i < n:
        j = i
        while j + 1 < n and abs(d[order[j + 1]]) == abs(d[order[i]]):
            j += 1
        for k in range(i, j + 1):
            ranks[order[k]] = (i + j) / 2 + 1
        tie_term += (j - i + 1) ** 3 - (j - i + 1)
        i = j + 1
    w_plus = sum(r for r, x in zip(ranks, d, strict=True) if x > 0)
    mean = n * (n + 1) / 4
    sd = math.sqrt(n * (n + 1) * (2 * n + 1) / 24 - tie_term / 48)
    z = (abs(w_plus - mean) - 0.5) / sd if sd else 0.0
    return math.erfc(z / math.sqrt(2))


def py_bootstrap(
    values: list[float], stat: Callable[[list[float]], float], seed: int
) -> tuple[float, float]:
    rng = random.Random(seed)
    reps = sorted(stat(sorted(rng.choices(values, k=len(values)))) for _ in range(RESAMPLES))
    return pct(reps, 2.5), pct(reps, 97.5)


def python_canary(url: str, artifacts: Path) -> tuple[dict[str, Any], dict[str, float]]:
    """The whole canary, one sample at a time; returns its metrics and per-stage seconds."""
    stages: dict[str, float] = {}
    clock = time.perf_counter()

    def lap(name: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        stages[name] = now - clock
        clock = now

    with psycopg.connect(libpq_url(url)) as conn:
        rows = conn.execute(
            "SELECT id, payload->'input' FROM costsim_provenance"
            " WHERE payload->>'status' = 'success' ORDER BY id"
        ).fetchall()
        lap("load")
        v1, v2 = load_cost_model("v1"), load_cost_model("v2")
        comparisons = []
        for row_id, plan in rows:
            a, b = v1.estimate(plan), v2.estimate(plan)
            delta = b.cost_cents - a.cost_cents
            pct_delta = abs(delta) / max(a.cost_cents, 1) if a.cost_cents else 0.0
            score = 0.6 * min(pct_delta, 1) + 0.4 * (a.feasible != b.feasible)
            verdict = sum(score > edge for edge in BANDS)
            comparisons.append((row_id, a, b, delta, pct_delta, score, verdict, plan))
        lap("models and drift")
        base = [c[1].cost_cents for c in comparisons]
        cand = [c[2].cost_cents for c in comparisons]
        abs_delta = sorted(abs(c[3]) for c in comparisons)
        metrics = {
            "counts": [sum(c[6] == v for c in comparisons) for v in range(4)],
            "median": pct(abs_delta, 50),
            "p90": pct(abs_delta, 90),
            "kl": py_divergence(base, cand),
            "outliers": sum(c[5] > 0.5 for c in comparisons),
            "p_value": py_wilcoxon(base, cand),
        }
        lap("statistics")
        relative = [c[3] / max(c[1].cost_cents, 1) for c in comparisons]
        metrics["median_ci"] = py_bootstrap(abs_delta, lambda s: pct(s, 50), 1)
        metrics["p90_ci"] = py_bootstrap(abs_delta, lambda s: pct(s, 90), 2)
        metrics["relative_ci"] = py_bootstrap(relative, lambda s: pct(s, 50), 3)
        lap("bootstrap")
        run_dir = artifacts / "python-loop"
        run_dir.mkdir(parents=True, exist_ok=True)
        with (
            (run_dir / "comparisons.jsonl").open("w") as out,
            (run_dir / "diffs.jsonl").open("w") as diffs,
        ):
            for index, (row_id, a, b, delta, pct_delta, score, verdict, plan) in enumerate(
                comparisons
            ):
                line = json.dumps(
                    {
                        "id": row_id,
                        "baseline": a.cost_cents,
                        "candidate": b.cost_cents,
                        "cost_delta_pct": pct_delta,
                        "cost_delta": delta,
                        "drift_score": score,
                        "verdict": verdict,
                        # the service's comparisons carry the plan too (golden promotion reads it)
                        "plan_input": plan,
                    }
                )
                out.write(line + "\n")
                if verdict:  # like the service: a drifting sample's diff points at its line
                    diff = {
                        "index": index,
                        "id": row_id,
                        "cost_delta": delta,
                        "cost_delta_pct": pct_delta,
                        "drift_score": score,
                        "verdict": verdict,
                    }
                    diffs.write(json.dumps(diff) + "\n")
        (run_dir / "report.json").write_text(json.dumps(metrics))
        conn.execute(
            "INSERT INTO costsim_canary_reports (run_id, timestamp, status, total_samples,"
            " matching_samples, minor_drift_samples, major_drift_samples, median_cost_diff,"
            " p90_cost_diff, kl_divergence, outlier_count, passed, failure_reasons_json,"
            " artifact_paths_json, created_at) VALUES ('python-loop', now(), 'fail', %s, %s,"
            " %s, %s, %s, %s, %s, %s, false, '[]', '[]', now())",
            (
                len(comparisons),
                *metrics["counts"][:2],
                sum(metrics["counts"][2:]),
                metrics["median"],
                metrics["p90"],
                metrics["kl"],
                metrics["outliers"],
            ),
        )
        conn.commit()
        lap("artifacts and row")
    return metrics, stages


def main() -> None:
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=10_000)
    parser.add_argument("--repeats", type=int, default=3, help="service runs (median counts)")
    args = parser.parse_args()
    plans = make_plans(args.samples, seed=5)
    with (
        tempfile.TemporaryDirectory() as scratch,
        bench_database(args.database_url, "costsim_bench_canary") as url,
    ):
        os.environ["COSTSIM_ARTIFACTS_DIR"] = str(Path(scratch) / "service")
        with service_server(url) as server:
            seed_provenance(server.address, plans)
            times, report = [], None
            with grpc.insecure_channel(server.address) as channel:
                stub = pb_grpc.AnalyticsServiceStub(channel)
                for _ in range(args.repeats):
                    start = time.perf_counter()
                    report = stub.RunCanary(
                        pb.RunCanaryRequest(sample_count=args.samples), timeout=600
                    ).report
                    times.append(time.perf_counter() - start)
        assert report is not None
        assert report.total_samples + report.invalid_samples == args.samples
        service_s = statistics.median(times)
        start = time.perf_counter()
        metrics, stages = python_canary(url, Path(scratch))
        loop_s = time.perf_counter() - start

    counts = [report.matching_samples, report.minor_drift_samples]
    assert counts == metrics["counts"][:2], (counts, metrics["counts"])
    assert report.major_drift_samples == sum(metrics["counts"][2:])
    assert math.isclose(report.median_cost_diff, metrics["median"], rel_tol=1e-12, abs_tol=1e-12)
    assert math.isclose(report.p90_cost_diff, metrics["p90"], rel_tol=1e-12, abs_tol=1e-12)
    assert math.isclose(report.kl_divergence, metrics["kl"], rel_tol=1e-9, abs_tol=1e-12)
    assert report.outlier_count == metrics["outliers"]

    ratio = loop_s / service_s
    without_bootstrap = (loop_s - stages["bootstrap"]) / service_s
    print(f"{args.samples} samples; report agrees with the loop on counts, median, p90, KL")
    runs = ", ".join(f"{t:.2f}" for t in times)
    print(f"service RunCanary end to end: {service_s:.2f} s (median of {runs})")
    print(
        f"pure-Python loop:             {loop_s:.2f} s = "
        + ", ".join(f"{k} {v:.2f}" for k, v in stages.items())
    )
    print(f"ratio loop/service: {ratio:.1f}x (target 20x)")
    print(f"without the bootstrap (the predecessor's own work): {without_bootstrap:.1f}x")
    print(
        json.dumps(
            {
                "bench": "canary",
                "ratio": round(ratio, 1),
                "target": 20,
                "service_s": round(service_s, 3),
                "loop_s": round(loop_s, 3),
                "loop_stages_s": {k: round(v, 3) for k, v in stages.items()},
                "ratio_without_bootstrap": round(without_bootstrap, 1),
                "samples": args.samples,
            }
        )
    )


if __name__ == "__main__":
    main()
