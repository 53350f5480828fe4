"""Coverage of the canary's p90 bootstrap interval (docs/statistics.md, section 5).

What is measured: for continuous and heavy-tailed populations of |cost delta| and n = 50, 100,
1,000, the share of seeded samples whose 95 % percentile-bootstrap interval of the p90
(``statistics.bootstrap_ci``, 2,000 resamples, as the canary computes it) contains the
population's p90. Nominal is 0.95; the issue asks for within 0.02 of it, or the interval
documented as under-covering with its measured coverage.

    python bench/coverage.py             # 1,000 samples per cell
"""

from __future__ import annotations

import argparse
import json

import numpy as np

from costsim_analytics.engines.statistics import bootstrap_ci

POPULATIONS = {
    "exponential": lambda rng, n: rng.exponential(10.0, n),
    "lognormal": lambda rng, n: rng.lognormal(2.0, 1.0, n),
    "pareto 1.16": lambda rng, n: rng.pareto(1.16, n) + 1.0,
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=1000)
    args = parser.parse_args()
    result = {}
    print("| population | n | coverage of the 95 % p90 interval |")
    print("|---|---|---|")
    for name, draw in POPULATIONS.items():
        truth = float(np.percentile(draw(np.random.default_rng(0), 2_000_000), 90))
        for n in (50, 100, 1000):
            rng = np.random.default_rng([n, len(name)])
            hits = 0
            for rep in range(args.reps):
                ci = bootstrap_ci(draw(rng, n), "p90", seed=rep)
                hits += ci.low <= truth <= ci.high
            result[f"{name} n={n}"] = hits / args.reps
            print(f"| {name} | {n} | {hits / args.reps:.3f} |")
    print(json.dumps({"bench": "coverage", "reps": args.reps, "coverage": result}))


if __name__ == "__main__":
    main()
