"""The types every cost model shares: its results, its error and the ``CostModel`` protocol."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt

RISK_THRESHOLD = 0.5  # both models: feasible only when cumulative risk <= this


class InvalidPlan(ValueError):
    """A malformed plan input; the message names the offending field (``plan[2].skill ...``)."""


@dataclass(frozen=True, slots=True)
class StepEstimate:
    """One step of a plan as a model sees it.

    ``cost_cents`` and ``latency_ms`` cover all the step's iterations under V1 (V2 ignores
    iterations); ``risk`` is the step's failure probability and ``confidence`` the model's
    confidence in the step's estimate.
    """

    skill: str
    cost_cents: float
    latency_ms: float
    risk: float
    risk_type: str
    confidence: float


@dataclass(frozen=True, slots=True)
class Estimate:
    """One plan under one model.

    ``cost_cents`` is a whole number of cents: V1 sums whole cents, V2 sums floats and rounds
    the total with Python's ``round`` (half to even). ``infeasible_reasons`` is empty exactly
    when ``feasible`` is true; its sentences are ``"empty plan"``, ``"over budget"``,
    ``"permission: <skill>"`` (V1 only) and ``"risk 0.62 > 0.5"``, in that order.
    """

    cost_cents: float
    duration_ms: float
    feasible: bool
    cumulative_risk: float
    confidence: float
    steps: tuple[StepEstimate, ...]
    infeasible_reasons: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class StepColumns:
    """The per-step estimates of a batch: the steps of every plan end to end, in plan order.

    ``n_steps[i]`` is how many entries sample ``i`` has (0 for a malformed sample); its steps
    are the entries from ``sum(n_steps[:i])`` on. ``cost_cents``, ``latency_ms`` and ``risk``
    are a :class:`StepEstimate`'s fields, one entry per step, but ``risk`` is the risk the step
    adds to the plan's (V2 counts only the step risks above 0.02, so its others are 0 here):
    ``1 - prod(1 - risk)`` over a plan's steps is its cumulative risk. ``skills`` is ``None``
    when the breakdown has exactly one entry per plan step, for that step's skill (the
    built-in models); a model whose breakdown differs from the plan's steps names each
    entry's skill there.
    The canary keeps these in its comparisons so that a run can be explained
    (``engines/canary/explain.py``).
    """

    n_steps: npt.NDArray[np.int64]
    cost_cents: npt.NDArray[np.float64]
    latency_ms: npt.NDArray[np.float64]
    risk: npt.NDArray[np.float64]
    skills: tuple[str, ...] | None = None


@dataclass(frozen=True, slots=True)
class BatchEstimates:
    """N plans under one model; index ``i`` of every array is sample ``i``.

    A malformed sample has ``valid[i]`` false, NaN in the float arrays, ``feasible[i]`` false
    and its ``InvalidPlan`` message in ``errors[i]`` (``None`` for valid samples). ``steps``
    is the per-step breakdown, or ``None`` for a model that gives none (its runs can then
    not be explained step by step).
    """

    cost_cents: npt.NDArray[np.float64]
    duration_ms: npt.NDArray[np.float64]
    feasible: npt.NDArray[np.bool_]
    cumulative_risk: npt.NDArray[np.float64]
    valid: npt.NDArray[np.bool_]
    errors: tuple[str | None, ...]
    steps: StepColumns | None = None

    def __len__(self) -> int:
        return len(self.errors)


def risk_reason(risk: float) -> str:
    """``"risk 0.62 > 0.5"``, with as many digits as it takes to show the risk is above 0.5.

    Example:
        >>> risk_reason(0.6234), risk_reason(0.5000001)
        ('risk 0.62 > 0.5', 'risk 0.5000001 > 0.5')

    """
    for digits in range(2, 18):
        text = f"{risk:.{digits}f}"
        if float(text) > RISK_THRESHOLD:
            return f"risk {text} > {RISK_THRESHOLD}"
    return f"risk {risk!r} > {RISK_THRESHOLD}"


def infeasible_reasons(
    *,
    empty: bool,
    cost_cents: float,
    budget_cents: float,
    cumulative_risk: float,
    permission_gaps: Sequence[str] = (),
) -> tuple[str, ...]:
    """Why a plan is infeasible, in the documented order (empty: no reason, feasible).

    Example:
        >>> infeasible_reasons(empty=False, cost_cents=12, budget_cents=10, cumulative_risk=0.1)
        ('over budget',)

    """
    reasons: list[str] = []
    if empty:
        reasons.append("empty plan")
    if cost_cents > budget_cents:
        reasons.append("over budget")
    reasons += [f"permission: {skill}" for skill in permission_gaps]
    if cumulative_risk > RISK_THRESHOLD:
        reasons.append(risk_reason(cumulative_risk))
    return tuple(reasons)


@runtime_checkable
class CostModel(Protocol):
    """A cost model: estimates plans one at a time or in bulk.

    Example:
        >>> from costsim_analytics.engines.cost_models import load_cost_model
        >>> model = load_cost_model("v1")
        >>> model.estimate({"plan": [{"skill": "llm_invoke"}], "budget_cents": 10}).cost_cents
        5.0

    """

    name: str
    version: str

    def estimate(self, plan_input: Mapping[str, Any]) -> Estimate:
        """Estimate one plan.

        Raises:
            InvalidPlan: if the plan input is malformed.

        """
        ...

    def estimate_batch(self, plan_inputs: Sequence[Mapping[str, Any]]) -> BatchEstimates:
        """Estimate many plans; a malformed plan is marked invalid, never raised."""
        ...
