"""V2, the candidate: a coefficient model (docs/domain.md, "The two cost models").

Per step, from the table below, then the modifiers:

- ``llm_invoke``: cost ``3.5 + chars/1000 * 0.8 + out/1000 * 1.2`` with ``out = min(2 * chars,
  4000)``, latency ``1800 + chars/1000 * 200`` (continuous: per 1,000 chars means divided by
  1,000, not floored); confidence × 0.95 above 2,000 chars and × 0.90 more above 4,000.
- ``http_call``: latency ``min(350 + 150, timeout_s * 1000)``; a URL not starting with
  ``http://localhost`` or ``http://127.0.0.1`` (a missing URL included) multiplies the risk by
  1.5 and the confidence by 0.95.
- ``shell_lite``: a command over 100 chars multiplies the risk by 1.2, the confidence by 0.95.
- an unknown skill: the table's 5 ¢ / 500 ms / risk 0.15, with confidence 0.60 (the 0.70
  ``confidence_base`` of the table is overridden for unknown skills, as in the predecessor).

Per plan: costs summed in floats in plan order, then ``round`` (half to even); latencies summed
(not rounded); cumulative risk ``1 - prod(1 - r)`` over the step risks above 0.02 only;
confidence the product of the step confidences (0.0 for an empty plan). Feasible when the plan
is not empty, cost <= budget and cumulative risk <= 0.5: V2 checks no permissions and ignores
``iterations``, as the predecessor's V2 did (the canary exists to catch such drift).

Example:
    >>> plan = {"plan": [{"skill": "llm_invoke", "params": {"prompt": "x" * 1000}}],
    ...         "budget_cents": 10}
    >>> V2CostModel().estimate(plan).cost_cents  # round(3.5 + 0.8 + 2.4) = round(6.7)
    7.0

"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from costsim_analytics.engines.cost_models.base import (
    BatchEstimates,
    Estimate,
    StepEstimate,
    infeasible_reasons,
)
from costsim_analytics.engines.cost_models.batch import plan_columns
from costsim_analytics.engines.cost_models.plans import (
    HTTP_CALL,
    KNOWN_SKILLS,
    LLM_INVOKE,
    SHELL_LITE,
    UNKNOWN_SKILL,
    parse_plan,
)

# Rows follow plans.KNOWN_SKILLS, then unknown skills: cost ¢, latency ms, confidence, risk, type.
TABLE: tuple[tuple[float, float, float, float, str], ...] = (
    (0.0, 350.0, 0.85, 0.08, "timeout"),  # http_call (+150 ms variance, see below)
    (3.5, 1800.0, 0.92, 0.03, "rate_limit"),  # llm_invoke
    (0.0, 5.0, 0.98, 0.005, "transform_error"),  # json_transform
    (0.0, 30.0, 0.95, 0.03, "not_found"),  # fs_read
    (0.0, 50.0, 0.94, 0.02, "permission"),  # fs_write
    (0.0, 150.0, 0.88, 0.07, "timeout"),  # shell_lite
    (0.0, 3.0, 0.97, 0.01, "not_found"),  # kv_get
    (0.0, 5.0, 0.97, 0.01, "quota"),  # kv_set
    (0.0, 200.0, 0.90, 0.08, "timeout"),  # webhook_send
    (0.8, 350.0, 0.93, 0.03, "delivery"),  # email_send
    (5.0, 500.0, 0.70, 0.15, "unknown"),  # any other skill
)
assert len(TABLE) == len(KNOWN_SKILLS) + 1
HTTP_LATENCY_VARIANCE_MS = 150.0
LLM_CENTS_PER_1K_PROMPT = 0.8
LLM_CENTS_PER_1K_OUTPUT = 1.2
LLM_MS_PER_1K_PROMPT = 200.0
LLM_MAX_OUTPUT_CHARS = 4000
LONG_PROMPT, VERY_LONG_PROMPT = 2000, 4000
LONG_COMMAND = 100
EXTERNAL_URL_RISK, LONG_COMMAND_RISK, PENALTY = 1.5, 1.2, 0.95
UNKNOWN_CONFIDENCE = 0.60
SIGNIFICANT_RISK = 0.02  # only step risks above this count toward cumulative risk

_COST = np.array([row[0] for row in TABLE])
_LATENCY = np.array([row[1] for row in TABLE])
_RISK = np.array([row[3] for row in TABLE])


class V2CostModel:
    """The coefficient model, ``v2``."""

    name: str = "v2"
    version: str = "2.0.0"

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
        confidence_product = 1.0
        for skill, index, _, chars, url_is_local, command_chars, timeout_s in parsed.rows:
            cost, latency, confidence, risk, risk_type = TABLE[index]
            if index == LLM_INVOKE:
                output = min(2 * chars, LLM_MAX_OUTPUT_CHARS)
                cost = (
                    cost
                    + (chars / 1000) * LLM_CENTS_PER_1K_PROMPT
                    + (output / 1000) * LLM_CENTS_PER_1K_OUTPUT
                )
                latency = latency + (chars / 1000) * LLM_MS_PER_1K_PROMPT
                if chars > LONG_PROMPT:
                    confidence *= PENALTY
                if chars > VERY_LONG_PROMPT:
                    confidence *= 0.90
            elif index == HTTP_CALL:
                latency = min(latency + HTTP_LATENCY_VARIANCE_MS, timeout_s * 1000.0)
                if not url_is_local:
                    risk *= EXTERNAL_URL_RISK
                    confidence *= PENALTY
            elif index == SHELL_LITE:
                if command_chars > LONG_COMMAND:
                    risk *= LONG_COMMAND_RISK
                    confidence *= PENALTY
            elif index == UNKNOWN_SKILL:
                confidence = UNKNOWN_CONFIDENCE
            steps.append(StepEstimate(skill, cost, latency, risk, risk_type, confidence))
            total_cost += cost
            total_latency += latency
            if risk > SIGNIFICANT_RISK:
                survival *= 1.0 - risk
            confidence_product *= confidence
        cost_cents = float(round(total_cost))
        cumulative_risk = 1.0 - survival
        reasons = infeasible_reasons(
            empty=not steps,
            cost_cents=cost_cents,
            budget_cents=parsed.budget_cents,
            cumulative_risk=cumulative_risk,
        )
        return Estimate(
            cost_cents=cost_cents,
            duration_ms=total_latency,
            feasible=not reasons,
            cumulative_risk=cumulative_risk,
            confidence=confidence_product if steps else 0.0,
            steps=tuple(steps),
            infeasible_reasons=reasons,
        )

    def estimate_batch(self, plan_inputs: Sequence[Mapping[str, Any]]) -> BatchEstimates:
        """Estimate many plans at once; agrees with :meth:`estimate` to the last bit."""
        cols = plan_columns(plan_inputs)
        skill = cols.skill
        cost, latency, risk = _COST[skill], _LATENCY[skill], _RISK[skill]
        # Same operations in the same order as estimate(), so every value is the same double.
        llm = skill == LLM_INVOKE
        chars = cols.prompt_chars[llm]
        output = np.minimum(2 * chars, LLM_MAX_OUTPUT_CHARS)
        cost[llm] = (
            cost[llm]
            + (chars / 1000) * LLM_CENTS_PER_1K_PROMPT
            + (output / 1000) * LLM_CENTS_PER_1K_OUTPUT
        )
        latency[llm] = latency[llm] + (chars / 1000) * LLM_MS_PER_1K_PROMPT
        http = skill == HTTP_CALL
        latency[http] = np.minimum(
            latency[http] + HTTP_LATENCY_VARIANCE_MS, cols.timeout_s[http] * 1000.0
        )
        external = http & ~cols.url_is_local
        risk[external] *= EXTERNAL_URL_RISK
        long_command = (skill == SHELL_LITE) & (cols.command_chars > LONG_COMMAND)
        risk[long_command] *= LONG_COMMAND_RISK
        survival = np.where(risk > SIGNIFICANT_RISK, 1.0 - risk, 1.0)
        total_cost = np.rint(cols.fold_sum(cost))  # half to even, like round()
        cumulative_risk = 1.0 - cols.fold_product(survival)
        return cols.estimates(
            total_cost,
            cols.fold_sum(latency),
            cumulative_risk,
            permissions=False,
            # The risk each step adds to the plan's: 0 for the steps that do not count.
            steps=(cost, latency, np.where(risk > SIGNIFICANT_RISK, risk, 0.0)),
        )
