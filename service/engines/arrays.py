"""Array checks shared by the statistics modules."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]


def as_vector(values: npt.ArrayLike, name: str) -> FloatArray:
    """``values`` as a 1-D float64 array, or ``ValueError`` naming ``name``."""
    array = np.asarray(values, dtype=np.float64)
    if array.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional, got shape {array.shape}")
    if not np.isfinite(array).all():
        raise ValueError(f"{name} must contain only finite numbers")
    return array


def as_flags(values: npt.ArrayLike, name: str) -> npt.NDArray[np.bool_]:
    """``values`` as a 1-D bool array."""
    array = np.asarray(values, dtype=np.bool_)
    if array.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional, got shape {array.shape}")
    return array
