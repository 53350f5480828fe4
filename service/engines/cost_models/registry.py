"""Choosing a cost model by name: the built-ins, then entry points.

A package adds a model by declaring an entry point in the group
``costsim_analytics.cost_models`` whose object is a ``CostModel`` class or a
factory taking no arguments::

    [project.entry-points."costsim_analytics.cost_models"]
    v3 = "my_package.models:V3CostModel"

Built-in names win over entry points of the same name.
"""

from __future__ import annotations

import importlib.metadata
from collections.abc import Callable

from costsim_analytics.engines.cost_models.base import CostModel
from costsim_analytics.engines.cost_models.v1 import V1CostModel
from costsim_analytics.engines.cost_models.v2 import V2CostModel
from costsim_analytics.engines.errors import FailedPrecondition, InvalidArgument
from costsim_analytics.engines.text import shown

ENTRY_POINT_GROUP = "costsim_analytics.cost_models"
BUILT_IN: dict[str, Callable[[], CostModel]] = {"v1": V1CostModel, "v2": V2CostModel}


def available_cost_models() -> list[str]:
    """The names :func:`load_cost_model` accepts, sorted.

    Example:
        >>> {"v1", "v2"} <= set(available_cost_models())
        True

    """
    return sorted(set(BUILT_IN) | {ep.name for ep in _entry_points()})


def load_cost_model(name: str, *, field: str = "model") -> CostModel:
    """A new instance of the cost model called ``name``.

    Args:
        name: ``"v1"``, ``"v2"`` or the name of an entry point in :data:`ENTRY_POINT_GROUP`.
        field: the request field that named the model, for the error.

    Raises:
        InvalidArgument: if no model has that name (the violation names ``field``).
        FailedPrecondition: if the entry point cannot be loaded or does not give a CostModel.

    Example:
        >>> load_cost_model("v2").version
        '2.0.0'

    """
    factory = BUILT_IN.get(name)
    if factory is not None:
        return factory()
    for ep in _entry_points():
        if ep.name == name:
            return _load(ep)
    known = ", ".join(available_cost_models())
    raise InvalidArgument.field(field, f"unknown cost model {shown(name)} (available: {known})")


def _entry_points() -> tuple[importlib.metadata.EntryPoint, ...]:
    # Looked up on the module at call time, so tests can monkeypatch it.
    return tuple(importlib.metadata.entry_points(group=ENTRY_POINT_GROUP))


def _load(ep: importlib.metadata.EntryPoint) -> CostModel:
    try:
        target = ep.load()
        model = target() if callable(target) else target
    except Exception as exc:
        raise FailedPrecondition(
            f"cost model {ep.name!r} ({ep.value}) failed to load: {exc}"
        ) from exc
    if not isinstance(model, CostModel):
        raise FailedPrecondition(
            f"cost model {ep.name!r} ({ep.value}) is not a CostModel: it lacks name, version, "
            "estimate or estimate_batch"
        )
    return model
