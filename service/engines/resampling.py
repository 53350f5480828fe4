"""Bootstrap confidence intervals for the canary statistics (see docs/statistics.md, section 5).

Example:
    >>> ci = bootstrap_ci([1.0, 2.0, 3.0, 4.0, 5.0], "median", resamples=500, seed=1)
    >>> ci.low <= ci.estimate <= ci.high
    True
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from costsim_analytics.engines.arrays import FloatArray
from costsim_analytics.engines.arrays import as_vector as _vector

# Bootstrap of the mean: resample indices at most this many at a time (int64 indices plus
# gathered float64 values plus the row means' working copy: about 48 MB). The median and p90
# draw no resamples (``order_statistic_replicates``).
CHUNK_ELEMENTS = 2_000_000
# Statistic name -> percentile q, or None for the mean.
BOOTSTRAP_STATISTICS = {"median": 50.0, "p90": 90.0, "mean": None}
# ``ConfidenceInterval.method`` for percentiles (order statistics drawn directly) and the mean.
ORDER_STATISTICS_METHOD = "percentile bootstrap (order statistics)"
RESAMPLING_METHOD = "percentile bootstrap"


# --- Bootstrap confidence intervals ------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ConfidenceInterval:
    """A seeded percentile-bootstrap confidence interval."""

    estimate: float
    """The statistic on the sample itself."""
    low: float
    high: float
    level: float
    resamples: int
    seed: int
    method: str
    statistic: str = ""


def _statistic_rows(matrix: FloatArray, statistic: str) -> FloatArray:
    """The statistic of each row of ``matrix``."""
    q = BOOTSTRAP_STATISTICS[statistic]
    rows = matrix.mean(axis=1) if q is None else np.percentile(matrix, q, axis=1, method="linear")
    return np.asarray(rows, dtype=np.float64)


def _rank(u: FloatArray, n: int) -> npt.NDArray[np.intp]:
    """``floor(n * u)`` as an index into ``n`` values, clamped to ``n - 1`` against rounding."""
    return np.minimum(np.floor(n * u), n - 1).astype(np.intp)


def order_statistic_replicates(
    sorted_values: FloatArray, q: float, resamples: int, rng: np.random.Generator
) -> FloatArray:
    """The ``q``-th percentile (type 7) of ``resamples`` bootstrap resamples, in O(resamples).

    ``sorted_values`` must be sorted ascending. A resample's percentile needs only its order
    statistics k and k + 1, and because the values are sorted those are the values at the
    order statistics of the n drawn indices. Those are drawn directly: the (k+1)-th smallest
    of n uniforms is Beta(k + 1, n - k), and the next one above it is
    ``u + (1 - u) * Beta(1, n - k - 1)``; ``floor(n * u)`` turns them into indices (see
    ``docs/statistics.md`` §5). The replicates have exactly the distribution of the
    percentile of resamples drawn index by index, without drawing them: two ``rng.beta``
    calls of ``resamples`` draws each (one when the percentile lands on a rank).

    Raises:
        ValueError: ``sorted_values`` is empty or ``q`` is outside [0, 100].
    """
    n = sorted_values.size
    if n == 0:
        raise ValueError("sorted_values must not be empty")
    if not 0.0 <= q <= 100.0:
        raise ValueError(f"q must be in [0, 100], got {q}")
    h = (n - 1) * (q / 100.0)  # numpy's virtual index for method="linear"
    k = math.floor(h)
    w = h - k
    u = rng.beta(k + 1, n - k, size=resamples)
    lower = sorted_values[_rank(u, n)]
    if w == 0.0 or k >= n - 1:
        return lower
    u_next = u + (1.0 - u) * rng.beta(1, n - k - 1, size=resamples)
    upper = sorted_values[_rank(u_next, n)]
    # numpy's own interpolation (its _lerp), so a resample whose two order statistics are the
    # sample's gives the estimate bit for bit.
    diff = upper - lower
    if w >= 0.5:
        return upper - diff * (1.0 - w)
    return lower + diff * w


def bootstrap_replicates(
    values: FloatArray,
    statistic: str,
    resamples: int,
    rng: np.random.Generator,
    *,
    chunk_elements: int = CHUNK_ELEMENTS,
) -> FloatArray:
    """The statistic on ``resamples`` bootstrap resamples of ``values`` (with replacement).

    ``"median"`` and ``"p90"``: ``order_statistic_replicates`` on the sorted values, exact in
    distribution and O(resamples) after the sort; ``chunk_elements`` is not used. ``"mean"``:
    resamples drawn index by index, at most ``chunk_elements`` indices at a time; the
    generator draws them in row order whatever the chunk size, so the result depends on the
    seed alone, not on ``chunk_elements``.
    """
    q = BOOTSTRAP_STATISTICS[statistic]
    if q is not None:
        return order_statistic_replicates(np.sort(values), q, resamples, rng)
    n = values.size
    rows = max(1, chunk_elements // n)
    replicates = np.empty(resamples, dtype=np.float64)
    for start in range(0, resamples, rows):  # over chunks of resamples, not over samples
        stop = min(start + rows, resamples)
        indices = rng.integers(0, n, size=(stop - start, n))
        replicates[start:stop] = _statistic_rows(values[indices], statistic)
    return replicates


def bootstrap_ci(
    values: npt.ArrayLike,
    statistic: str,
    *,
    level: float = 0.95,
    resamples: int = 2000,
    seed: int = 0,
) -> ConfidenceInterval:
    """Percentile-bootstrap interval of ``statistic`` ("median", "p90" or "mean").

    ``low`` and ``high`` are the ``(1 - level) / 2`` and ``(1 + level) / 2`` quantiles (linear,
    as ``percentile``) of ``bootstrap_replicates``: the statistic over ``resamples`` bootstrap
    resamples, drawn by ``numpy.random.default_rng(seed)``; the same inputs and seed give the
    same interval. For the median and p90 the resample percentiles are drawn directly from
    their exact distribution (``order_statistic_replicates``, method
    ``ORDER_STATISTICS_METHOD``), in O(resamples) after a sort; the mean resamples
    (``RESAMPLING_METHOD``). An empty sample gives a ``nan`` interval.

    Example:
        >>> ci = bootstrap_ci([1.0, 2.0, 3.0, 4.0, 5.0], "median", resamples=500, seed=7)
        >>> ci.low <= ci.estimate == 3.0 <= ci.high
        True

    Raises:
        ValueError: an unknown statistic, ``level`` outside (0, 1), ``resamples`` < 1,
            ``seed`` < 0, or a value that is not finite.
    """
    if statistic not in BOOTSTRAP_STATISTICS:
        raise ValueError(f"statistic must be one of {sorted(BOOTSTRAP_STATISTICS)}")
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level}")
    if resamples < 1:
        raise ValueError(f"resamples must be at least 1, got {resamples}")
    if seed < 0:
        raise ValueError(f"seed must be non-negative, got {seed}")
    array = _vector(values, "values")
    method = (
        RESAMPLING_METHOD if BOOTSTRAP_STATISTICS[statistic] is None else ORDER_STATISTICS_METHOD
    )
    if array.size == 0:
        nan = math.nan
        return ConfidenceInterval(nan, nan, nan, level, resamples, seed, method, statistic)
    estimate = float(_statistic_rows(array[np.newaxis, :], statistic)[0])
    replicates = bootstrap_replicates(array, statistic, resamples, np.random.default_rng(seed))
    tail = 100.0 * (1.0 - level) / 2.0
    low, high = np.percentile(replicates, [tail, 100.0 - tail], method="linear")
    return ConfidenceInterval(
        estimate=estimate,
        low=float(low),
        high=float(high),
        level=level,
        resamples=resamples,
        seed=seed,
        method=method,
        statistic=statistic,
    )


# --- Bootstrap of sums over rows (shares) ------------------------------------------------------


def bootstrap_column_sums(
    matrix: FloatArray,
    resamples: int,
    rng: np.random.Generator,
    *,
    chunk_elements: int = CHUNK_ELEMENTS,
) -> FloatArray:
    """The column sums of ``resamples`` bootstrap resamples of the rows of ``matrix``.

    The unit resampled is a row (one canary sample): each resample draws ``n`` rows with
    replacement, index by index, from the generator's stream in row order exactly as
    :func:`bootstrap_replicates` draws them for the mean, at most ``chunk_elements`` indices at
    a time; a resample's column sums are its row counts times the matrix (one matrix product
    per chunk, not a loop over samples). So ratios of those sums (a group's share of a total)
    keep the dependence between the columns of one row. Returns a ``(resamples, columns)``
    array. The same matrix and seed draw the same resamples whatever ``chunk_elements`` is
    (their sums then agree to the last few bits: the matrix product's order of summation
    follows the chunk's shape), and the same sums for the same ``chunk_elements``.

    Example:
        >>> m = np.array([[1.0, 0.0], [0.0, 3.0]])
        >>> sums = bootstrap_column_sums(m, 4, np.random.default_rng(0))
        >>> sums.shape, bool(np.all(sums.sum(axis=1) % 1.0 == 0.0))
        ((4, 2), True)

    Raises:
        ValueError: ``matrix`` is not two-dimensional or has no rows, or ``resamples`` < 1.
    """
    if matrix.ndim != 2 or matrix.shape[0] == 0:
        raise ValueError(f"matrix must be two-dimensional with rows, got shape {matrix.shape}")
    if resamples < 1:
        raise ValueError(f"resamples must be at least 1, got {resamples}")
    n = matrix.shape[0]
    rows = max(1, chunk_elements // n)
    sums = np.empty((resamples, matrix.shape[1]), dtype=np.float64)
    for start in range(0, resamples, rows):  # over chunks of resamples, not over samples
        stop = min(start + rows, resamples)
        indices = rng.integers(0, n, size=(stop - start, n))
        counts = np.empty((stop - start, n), dtype=np.float64)
        # One resample's counts at a time: n bins stay in cache, where one bincount over the
        # whole chunk (offset by row) scatters over all of it and is several times slower.
        for row, drawn in enumerate(indices):
            counts[row] = np.bincount(drawn, minlength=n)
        sums[start:stop] = counts @ matrix
    return sums


def percentile_interval(replicates: FloatArray, level: float) -> tuple[FloatArray, FloatArray]:
    """The ``(1 - level) / 2`` and ``(1 + level) / 2`` quantiles (linear) of each column.

    The percentile interval of :func:`bootstrap_ci`, for replicates in the rows of a matrix.
    """
    tail = 100.0 * (1.0 - level) / 2.0
    low, high = np.percentile(replicates, [tail, 100.0 - tail], axis=0, method="linear")
    return np.asarray(low, dtype=np.float64), np.asarray(high, dtype=np.float64)
