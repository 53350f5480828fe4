"""Cost models: estimate a plan's cost, duration, risk and feasibility before it runs.

Pure domain (numpy, no grpc, no SQL). Two models are built in, chosen by name with
:func:`load_cost_model`: ``v1`` (:mod:`.v1`, the static-table baseline) and ``v2`` (:mod:`.v2`,
the coefficient candidate); more come from entry points (:mod:`.registry`). Every model has
``estimate`` (one plan; the reference implementation; raises :class:`InvalidPlan`) and
``estimate_batch`` (N plans as numpy arrays; a malformed plan is marked, never raised). The
built-ins' batches are vectorised (:mod:`.batch`) and agree with ``estimate`` bit for bit.
Reading the inputs is most of a batch's cost: to estimate the same samples under several
built-in models, pass a :class:`PlanBatch` and they are read once.

Example:
    >>> plan = {"plan": [{"skill": "http_call", "params": {"url": "https://x.test"}},
    ...                  {"skill": "llm_invoke", "params": {"prompt": "hi"}}],
    ...         "budget_cents": 10.0}
    >>> [load_cost_model(m).estimate(plan).cost_cents for m in ("v1", "v2")]
    [5.0, 4.0]

Choices where docs/domain.md leaves room (the numbers themselves are docs/domain.md's):

- **Input.** Malformed (:class:`InvalidPlan`, same for both models): not a mapping; ``plan``
  missing or not a list; a step not a mapping, or its ``skill`` not a string; ``iterations``
  not a whole number in 1..2**53; ``params`` not a mapping; ``budget_cents`` missing, not a
  number, not finite or negative; ``permissions`` not a list of strings; and, for the skill
  that reads it, ``params.prompt`` / ``url`` / ``command`` not a string or ``timeout_s`` not a
  finite number >= 0. A key set to null counts as absent. Whole floats count as ints
  (protobuf Struct sends every number as a double); the budget is compared as a double.
- **Empty plan**: valid but infeasible under both models: cost 0, duration 0, risk 0,
  confidence 0.0, reason ``"empty plan"``.
- **http_call timeout**: ``params.timeout_s`` in seconds, default 30 s under both models (so
  V1 keeps its 500 ms unless a shorter timeout is given, as the predecessor's V1 did).
- **URL**: local means the URL literally starts with ``http://localhost`` or
  ``http://127.0.0.1``; a missing URL is not local (the predecessor's rule).
- **Confidence**: V1 ``1 - risk`` (step and plan); V2 the product of the step confidences,
  as the predecessor's V2 combined them; 0.0 for an empty plan under both.
- **Risk types**: V2 uses V1's names per skill (``timeout``, ``rate_limit``, ...).
- **Permissions** count under V1 only; V2 feasibility is cost and risk (docs/domain.md).
- **Reasons** in ``Estimate.infeasible_reasons``, in this order: ``"empty plan"``,
  ``"over budget"``, ``"permission: <skill>"`` per distinct skill, ``"risk 0.62 > 0.5"``.
- **Durations** are not rounded (V1 sums whole milliseconds unless a timeout is fractional).
"""

from costsim_analytics.engines.cost_models.base import (
    RISK_THRESHOLD,
    BatchEstimates,
    CostModel,
    Estimate,
    InvalidPlan,
    StepColumns,
    StepEstimate,
)
from costsim_analytics.engines.cost_models.batch import PlanBatch
from costsim_analytics.engines.cost_models.registry import (
    ENTRY_POINT_GROUP,
    available_cost_models,
    load_cost_model,
)
from costsim_analytics.engines.cost_models.v1 import V1CostModel
from costsim_analytics.engines.cost_models.v2 import V2CostModel

__all__ = [
    "ENTRY_POINT_GROUP",
    "RISK_THRESHOLD",
    "BatchEstimates",
    "CostModel",
    "Estimate",
    "InvalidPlan",
    "PlanBatch",
    "StepColumns",
    "StepEstimate",
    "V1CostModel",
    "V2CostModel",
    "available_cost_models",
    "load_cost_model",
]
