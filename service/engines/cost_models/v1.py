"""V1, the baseline: a static table per skill (docs/domain.md, "The two cost models").

Per step: the table's cost and latency times ``iterations`` (``llm_invoke`` costs
``max(5, prompt chars // 1000)``, ``http_call`` takes ``min(500, timeout_s * 1000)`` ms), risk
``1 - (1 - p) ** iterations`` (exactly ``p`` for one iteration). Per plan: costs and latencies
summed, cumulative risk ``1 - prod(1 - step risk)``; feasible when the plan is not empty, cost
<= budget, every skill is in ``permissions`` (when given) and cumulative risk <= 0.5.
Confidence is ``1 - risk``, per step and per plan (0.0 for an empty plan).

Example:
    >>> plan = {"plan": [{"skill": "email_send", "iterations": 3}], "budget_cents": 2}
    >>> V1CostModel().estimate(plan).infeasible_reasons
    ('over budget',)

"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from costsim_analytics.engines.cost_models.base import (
    BatchEstimates,
    Estimate,
    StepEstimate,
    infeasible_reasons,
)
from costsim_analytics.engines.cost_models.batch import Floats, plan_columns
from costsim_analytics.engines.cost_models.plans import (
    HTTP_CALL,
    KNOWN_SKILLS,
    LLM_INVOKE,
    parse_plan,
)

# Rows follow plans.KNOWN_SKILLS, then the row for unknown skills: cost ¢, latency ms, p, type.
TABLE: tuple[tuple[float, float, float, str], ...] = (
    (0.0, 500.0, 0.10, "timeout"),  # http_call
    (5.0, 2000.0, 0.05, "rate_limit"),  # llm_invoke
    (0.0, 10.0, 0.01, "transform_error"),  # json_transform
    (0.0, 50.0, 0.05, "not_found"),  # fs_read
    (0.0, 100.0, 0.05, "permission"),  # fs_write
    (0.0, 200.0, 0.10, "timeout"),  # shell_lite
    (0.0, 5.0, 0.02, "not_found"),  # kv_get
    (0.0, 10.0, 0.02, "quota"),  # kv_set
    (0.0, 300.0, 0.10, "timeout"),  # webhook_send
    (1.0, 500.0, 0.05, "delivery"),  # email_send
    (10.0, 1000.0, 0.20, "unknown"),  # any other skill
)
assert len(TABLE) == len(KNOWN_SKILLS) + 1

_COST = np.array([row[0] for row in TABLE])
_LATENCY = np.array([row[1] for row in TABLE])
_RISK = np.array([row[2] for row in TABLE])
_SURVIVAL = [1.0 - row[2] for row in TABLE]


class V1CostModel:
    """The static-table model, ``v1``."""

    name: str = "v1"
    version: str = "1.0.0"

    def estimate(self, plan_input: Mapping[str, Any]) -> Estimate:
        """Estimate one plan (the reference implementation: plain Python, in plan order).

        Raises:
            InvalidPlan: if the plan input is malformed.

        """
        parsed = parse_plan(plan_input)
        steps: list[StepEstimate] = []
        total_cost = 0.0
        total_latency = 0.0
        survival = 1.0
        for skill, index, iterations, prompt_chars, _, _, timeout_s in parsed.rows:
            cost, latency, p, risk_type = TABLE[index]
            if index == LLM_INVOKE:
                cost = max(cost, float(prompt_chars // 1000))
            elif index == HTTP_CALL:
                latency = min(latency, timeout_s * 1000.0)
            cost *= iterations
            latency *= iterations
            risk = p if iterations == 1 else 1.0 - (1.0 - p) ** iterations
            steps.append(StepEstimate(skill, cost, latency, risk, risk_type, 1.0 - risk))
            total_cost += cost
            total_latency += latency
            survival *= 1.0 - risk
        cumulative_risk = 1.0 - survival
        reasons = infeasible_reasons(
            empty=not steps,
            cost_cents=total_cost,
            budget_cents=parsed.budget_cents,
            cumulative_risk=cumulative_risk,
            permission_gaps=parsed.permission_gaps,
        )
        return Estimate(
            cost_cents=total_cost,
            duration_ms=total_latency,
            feasible=not reasons,
            cumulative_risk=cumulative_risk,
            confidence=1.0 - cumulative_risk if steps else 0.0,
            steps=tuple(steps),
            infeasible_reasons=reasons,
        )

    def estimate_batch(self, plan_inputs: Sequence[Mapping[str, Any]]) -> BatchEstimates:
        """Estimate many plans at once; agrees with :meth:`estimate` to the last bit."""
        cols = plan_columns(plan_inputs)
        skill, iterations = cols.skill, cols.iterations
        cost = _COST[skill]
        llm = skill == LLM_INVOKE
        cost[llm] = np.maximum(cost[llm], cols.prompt_chars[llm] // 1000)
        latency = _LATENCY[skill]
        http = skill == HTTP_CALL
        latency[http] = np.minimum(latency[http], cols.timeout_s[http] * 1000.0)
        step_risk = np.where(iterations == 1, _RISK[skill], 1.0 - _survival(skill, iterations))
        step_cost, step_latency = cost * iterations, latency * iterations
        total_cost = cols.fold_sum(step_cost)
        cumulative_risk = 1.0 - cols.fold_product(1.0 - step_risk)
        duration = cols.fold_sum(step_latency)
        return cols.estimates(
            total_cost,
            duration,
            cumulative_risk,
            permissions=True,
            steps=(step_cost, step_latency, step_risk),
        )


def _survival(skill: npt.NDArray[np.intp], iterations: Floats) -> Floats:
    # (1 - p) ** n through Python's pow, once per distinct n: numpy's power may use other
    # (SIMD) code and differ in the last bit, which could move a plan across risk 0.5.
    distinct, which = np.unique(iterations, return_inverse=True)
    table = np.array([[s**n for s in _SURVIVAL] for n in distinct.tolist()], dtype=np.float64)
    survival: Floats = table.reshape(-1, len(_SURVIVAL))[which, skill]
    return survival
