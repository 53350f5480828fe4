import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from costsim_analytics.engines.drift import percentile

finite = st.floats(min_value=-1e6, max_value=1e6, allow_nan=False)


@given(st.lists(finite, min_size=1, max_size=50), st.sampled_from([0.0, 0.5, 0.9, 1.0]))
def test_percentile_matches_numpy_linear(values, p):
    values = sorted(values)
    assert percentile(values, p) == pytest.approx(np.percentile(values, p * 100), abs=1e-6)


def test_hand_checked_percentiles():
    assert percentile([1.0, 2.0, 3.0, 4.0], 0.5) == 2.5
    assert percentile([0.0, 10.0], 0.9) == 9.0
    assert percentile([5.0], 0.9) == 5.0
