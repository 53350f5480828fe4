"""Binned KL/JS divergence under a chosen binning and smoothing, and its sign-flip null.

The canary's samples are pairs: one plan input priced by both models. When the two models
agree, swapping V1 and V2 inside any pair changes nothing, so the distribution of KL over the
2^n within-pair swaps is the null distribution of KL *for exactly these samples*
(docs/statistics.md, section 6). A swap leaves the pooled sample unchanged, so the bin edges
(computed on the pooled sample) are the same for every swap, and each pair's two bin indices
are computed once: a permutation only decides which of the two goes to the baseline. Pairs
whose two values share a bin cannot change anything and are skipped.

Example:
    >>> b = Binning("quantile", 4, "laplace")
    >>> v1 = [float(x) for x in range(40)]
    >>> permutation_test(v1, v1, b, permutations=200, seed=0).p_value
    1.0
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from scipy import special

from costsim_analytics.engines import statistics as st
from costsim_analytics.engines.arrays import FloatArray
from costsim_analytics.engines.arrays import as_vector as _vector

BIN_METHODS = ("equal-width", "quantile", "log")
SMOOTHINGS = ("epsilon", "laplace")
# A permutation chunk holds at most this many (permutation, changing pair) cells.
CHUNK_CELLS = 4_000_000
# Two KL values closer than this (relative) count as equal when the p-value counts ties.
_TIE = 1e-12

IntArray = npt.NDArray[np.intp]


@dataclass(frozen=True, slots=True)
class Binning:
    """How the KL rule bins and smooths the two cost samples.

    ``method``: ``"equal-width"`` over the pooled range (the predecessor's), ``"quantile"``
    (edges at the pooled sample's quantiles, tied edges merged), or ``"log"`` (equal width on
    ``log1p(cost)``). ``bins``: the number of bins, or ``None`` for the predecessor's rule
    (``statistics.bin_count``). ``smoothing``: ``"epsilon"`` adds ``epsilon`` to each
    relative frequency; ``"laplace"`` adds ``pseudocount`` to each count.
    """

    method: str
    bins: int | None
    smoothing: str
    epsilon: float = 1e-6
    pseudocount: float = 0.5

    def __post_init__(self) -> None:
        """Reject unknown methods and non-positive numbers."""
        if self.method not in BIN_METHODS:
            raise ValueError(f"bin method must be one of {BIN_METHODS}, got {self.method!r}")
        if self.smoothing not in SMOOTHINGS:
            raise ValueError(f"smoothing must be one of {SMOOTHINGS}, got {self.smoothing!r}")
        if self.bins is not None and self.bins < 1:
            raise ValueError(f"bins must be at least 1, got {self.bins}")
        if not (self.epsilon > 0.0 and self.pseudocount > 0.0):
            raise ValueError("epsilon and pseudocount must be positive")


def edges(pooled: FloatArray, binning: Binning, smaller_sample: int) -> FloatArray:
    """Bin edges over the pooled sample (ascending, at least two, the outer ones its range)."""
    low, high = float(pooled.min()), float(pooled.max())
    k = binning.bins if binning.bins is not None else st.bin_count(pooled, smaller_sample)
    if high == low:
        return np.array([low - 0.5, high + 0.5])
    if binning.method == "quantile":
        cuts = np.quantile(pooled, np.linspace(0.0, 1.0, k + 1), method="linear")
        return np.asarray(np.unique(cuts), dtype=np.float64)
    if binning.method == "log":
        # log1p keeps 0 (a free plan) finite; costs are never negative in this domain, and
        # a negative value is shifted so the transform stays defined.
        shift = min(0.0, low)
        logs = np.linspace(math.log1p(low - shift), math.log1p(high - shift), k + 1)
        cut = np.expm1(logs) + shift
        cut[0], cut[-1] = low, high
        return np.asarray(np.unique(cut), dtype=np.float64)
    return np.linspace(low, high, k + 1)


def assign(values: FloatArray, cut: FloatArray) -> IntArray:
    """Bin of each value: ``[a, b)`` except the last bin, which is closed (numpy's histogram)."""
    index = np.searchsorted(cut, values, side="right") - 1
    return np.clip(index, 0, cut.size - 2).astype(np.intp)


def kl_rows(
    base_counts: FloatArray, cand_counts: FloatArray, n: int, binning: Binning
) -> FloatArray:
    """KL(baseline || candidate) in nats of each row of counts (the last axis is the bins)."""
    k = base_counts.shape[-1]
    if binning.smoothing == "laplace":
        a = binning.pseudocount
        p = (base_counts + a) / (n + k * a)
        q = (cand_counts + a) / (n + k * a)
    else:
        eps = binning.epsilon
        p = (base_counts / n + eps) / (1.0 + k * eps)
        q = (cand_counts / n + eps) / (1.0 + k * eps)
    kl = special.rel_entr(p, q).sum(axis=-1)
    same = np.all(base_counts == cand_counts, axis=-1)
    return np.asarray(np.where(same, 0.0, np.maximum(kl, 0.0)), dtype=np.float64)


@dataclass(frozen=True, slots=True)
class PermutationNull:
    """The sign-flip null of the KL rule for one pair of samples."""

    kl: float
    """KL of the samples themselves under the binning."""
    permutations: int
    seed: int
    p_value: float
    """``(1 + #{null KL >= observed}) / (1 + permutations)``; 1.0 when no pair can change."""
    null_mean: float
    """Mean KL over the permutations (the statistic's bias under the null)."""
    changing_pairs: int
    """Pairs whose two values fall in different bins (only they move under a swap)."""


def binned(baseline: npt.ArrayLike, candidate: npt.ArrayLike, binning: Binning) -> st.Divergence:
    """KL and JS of the two samples (equal sizes or not) under ``binning``.

    With ``Binning("equal-width", None, "epsilon")`` this is ``statistics.divergence``.
    Either sample empty gives ``nan`` and no bins.
    """
    base = _vector(baseline, "baseline")
    cand = _vector(candidate, "candidate")
    if base.size == 0 or cand.size == 0:
        return st.Divergence(math.nan, math.nan, (), (), (), binning.epsilon, 0)
    if binning.method == "equal-width" and binning.smoothing == "epsilon":
        return st.divergence(base, cand, bins=binning.bins, epsilon=binning.epsilon)
    cut = edges(np.concatenate([base, cand]), binning, min(base.size, cand.size))
    k = cut.size - 1
    bc = np.bincount(assign(base, cut), minlength=k).astype(np.float64)
    cc = np.bincount(assign(cand, cut), minlength=k).astype(np.float64)
    p, q = bc / base.size, cc / cand.size
    kl = js = 0.0
    if not np.array_equal(p, q):
        if binning.smoothing == "laplace":
            a = binning.pseudocount
            ps, qs = (bc + a) / (base.size + k * a), (cc + a) / (cand.size + k * a)
        else:
            e = binning.epsilon
            ps, qs = (p + e) / (1.0 + k * e), (q + e) / (1.0 + k * e)
        kl = max(0.0, float(special.rel_entr(ps, qs).sum()))
        m = 0.5 * (p + q)
        js_raw = 0.5 * special.rel_entr(p, m).sum() + 0.5 * special.rel_entr(q, m).sum()
        js = min(math.log(2.0), max(0.0, float(js_raw)))
    return st.Divergence(
        kl=kl,
        js=js,
        edges=tuple(float(e) for e in cut),
        baseline_counts=tuple(int(c) for c in bc),
        candidate_counts=tuple(int(c) for c in cc),
        epsilon=binning.epsilon if binning.smoothing == "epsilon" else binning.pseudocount,
        bins=k,
    )


def permutation_test(
    baseline: npt.ArrayLike,
    candidate: npt.ArrayLike,
    binning: Binning,
    *,
    permutations: int,
    seed: int,
) -> PermutationNull:
    """Seeded within-pair sign-flip test of KL(baseline || candidate) under ``binning``.

    Each permutation swaps the two values of every pair with probability 1/2 (one bit of a
    raw 64-bit word from ``numpy.random.default_rng(seed)`` per pair); the p-value counts the
    permutations whose KL is at least the observed one, plus the observed one itself. The
    baseline counts of a chunk of permutations are one matrix product (swap bits times each
    pair's bin change), in chunks of at most ``CHUNK_CELLS`` cells; only pairs whose values
    fall in different bins are drawn, so identical models cost nothing.

    Raises:
        ValueError: the samples differ in length, are empty, a value is not finite, or
            ``permutations`` < 1.
    """
    base = _vector(baseline, "baseline")
    cand = _vector(candidate, "candidate")
    if base.size != cand.size or base.size == 0:
        raise ValueError(f"paired samples need one non-zero length, got {base.size}, {cand.size}")
    if permutations < 1:
        raise ValueError(f"permutations must be at least 1, got {permutations}")
    n = base.size
    cut = edges(np.concatenate([base, cand]), binning, n)
    k = cut.size - 1
    b1, b2 = assign(base, cut), assign(cand, cut)
    pooled = (np.bincount(b1, minlength=k) + np.bincount(b2, minlength=k)).astype(np.float64)
    base_counts = np.bincount(b1, minlength=k).astype(np.float64)
    observed = float(kl_rows(base_counts, pooled - base_counts, n, binning))
    moving = np.flatnonzero(b1 != b2)
    if moving.size == 0:
        return PermutationNull(observed, permutations, seed, 1.0, observed, 0)
    # With no swap the baseline keeps V1's bins; swapping pair i moves one count from its V1
    # bin to its V2 bin: counts = unswapped + swaps @ (onehot(V2 bin) - onehot(V1 bin)), a
    # small matrix product (exact: float32 holds integers up to 2^24).
    m = moving.size
    step = np.zeros((m, k), dtype=np.float32)
    step[np.arange(m), b2[moving]] += 1.0
    step[np.arange(m), b1[moving]] -= 1.0
    words = -(-m // 64)
    rng = np.random.default_rng(seed)
    rows = max(1, CHUNK_CELLS // (words * 64))
    null = np.empty(permutations, dtype=np.float64)
    for start in range(0, permutations, rows):  # over chunks of permutations, not samples
        stop = min(start + rows, permutations)
        # One fair bit per pair: raw 64-bit words, drawn row by row (the same stream however
        # the permutations are chunked).
        bits = rng.integers(0, 2**64 - 1, size=(stop - start, words), dtype=np.uint64,
                            endpoint=True)  # fmt: skip
        swap = np.unpackbits(bits.view(np.uint8), axis=1, bitorder="little")[:, :m]
        counts = base_counts + (swap.astype(np.float32) @ step).astype(np.float64)
        null[start:stop] = kl_rows(counts, pooled - counts, n, binning)
    hits = int(np.count_nonzero(null >= observed * (1.0 - _TIE)))
    p_value = (1 + hits) / (1 + permutations)
    return PermutationNull(
        observed, permutations, seed, p_value, float(null.mean()), int(moving.size)
    )
