"""The exact null distribution of Wilcoxon's signed-rank statistic, ties included.

With tied magnitudes the ranks are averages (multiples of 1/2), and the textbook exact table
(which assumes ranks 1..n) no longer applies. Conditionally on the ranks, each sign is still
+ or - with probability 1/2 under the null, so R+ = sum of rank_i * I_i with I_i independent
fair coins. Doubled ranks are integers, and the distribution of their signed sum is the
coefficient list of the product of (1 + x^(2 rank_i)): n polynomial multiplications of degree
at most n (n + 1), exact in float64 up to 2^53 patterns (n <= 50 here). This is the
"exact conditional" (permutation) distribution of R+ given the ties (Hollander, Wolfe &
Chicken 2014, section 3.1; R's ``coin::wilcoxsign_test(distribution = "exact")``).

Example:
    >>> exact_p_value([1.0, 2.0, 3.5, 3.5], r_plus=10.0)
    0.125
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

# 2^MAX_PAIRS sign patterns must stay exact in float64 counts.
MAX_PAIRS = 52


def null_counts(ranks: npt.ArrayLike) -> npt.NDArray[np.float64]:
    """Number of sign patterns giving each value of 2 R+ (index = doubled rank sum).

    Raises:
        ValueError: a rank is not a positive multiple of 1/2, or there are too many.
    """
    doubled = np.asarray(ranks, dtype=np.float64) * 2.0
    as_int = np.rint(doubled).astype(np.int64)
    if doubled.size > MAX_PAIRS or not np.array_equal(as_int, doubled) or (as_int < 1).any():
        raise ValueError("ranks must be at most 52 positive multiples of 1/2")
    counts = np.zeros(int(as_int.sum()) + 1, dtype=np.float64)
    counts[0] = 1.0
    top = 0
    for r in as_int:  # over pairs (n <= 52), each step vectorised over the sums
        counts[r : top + r + 1] += counts[: top + 1].copy()
        top += int(r)
    return counts


def exact_p_value(ranks: npt.ArrayLike, r_plus: float) -> float:
    """Two-sided exact p-value of R+ given the (average) ranks: 2 * min(lower, upper), <= 1."""
    counts = null_counts(ranks)
    s = round(2.0 * r_plus)
    total = float(counts.sum())
    lower = float(counts[: s + 1].sum()) / total
    upper = float(counts[s:].sum()) / total
    return min(1.0, 2.0 * min(lower, upper))
