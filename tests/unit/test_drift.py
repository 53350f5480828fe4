import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from costsim_analytics.engines.statistics import interpolate, percentile, percentile_rank

finite = st.floats(min_value=-1e6, max_value=1e6, allow_nan=False)


def by_rank(sorted_values, q):
    """The percentile as the SQLite driver computes it: two order statistics, interpolated."""
    lower, weight = percentile_rank(q, len(sorted_values))
    upper = min(lower + 1, len(sorted_values) - 1)
    return interpolate(sorted_values[lower], sorted_values[upper], weight)


@given(st.lists(finite, min_size=1, max_size=50), st.sampled_from([0.0, 50.0, 90.0, 100.0]))
def test_rank_and_interpolation_agree_with_the_one_percentile(values, q):
    values = sorted(values)
    expected = np.percentile(values, q)
    assert by_rank(values, q) == pytest.approx(expected, abs=1e-6)
    assert percentile(values, q) == pytest.approx(expected, abs=1e-6)


def test_hand_checked_percentiles():
    assert by_rank([1.0, 2.0, 3.0, 4.0], 50) == 2.5
    assert by_rank([0.0, 10.0], 90) == 9.0
    assert by_rank([5.0], 90) == 5.0
