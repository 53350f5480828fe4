"""Where a canary's drift comes from: every sample's cost delta split over its steps.

Pure domain (numpy; no grpc, no SQL). :func:`items_of` turns one valid comparison row (the
plan and both models' per-step breakdowns, as ``comparisons.jsonl`` keeps them) into
:class:`Item` s; :func:`flip_weights` splits a feasibility flip over them;
``canary/groups.py`` adds the items up by group, with a bootstrap interval on each share. The
rules, stated once in docs/explain.md:

- **Steps are paired by position.** Step ``i`` of the baseline's breakdown and step ``i`` of
  the candidate's are one item when both exist for the same skill; its delta is
  ``candidate - baseline``. A step that exists in one model's breakdown and not in the
  other's (a breakdown longer than the other, or another skill at that position) is an item
  of its own, priced 0 cents, 0 ms and risk 0 under the model that lacks it: all of its cost
  is delta, attributed to its own group.
- **The plan-level item** holds what no step carries: ``(total - sum of the steps)`` under
  each model (V2 rounds its total to whole cents; V1's is exactly 0). With it, a sample's
  items add up to the sample's cost delta.
- **Shares of |delta|**: a group's share is the sum of ``|delta|`` over its items divided by
  the sum over every item, so the shares add up to 1 over the groups (0 everywhere when no
  item moved). Steps of one plan that move in opposite directions both count: the total is
  at least the sum of the samples' ``|delta|``.
- **Flips**: a sample whose feasibility differs weighs 1, split evenly over the criteria that
  differ between the models (the budget, risk above 0.5); within the budget over the items
  that raised the infeasible model's cost relative to the other's, in proportion; within
  risk likewise by the change in ``log(1 - risk)`` (the steps' risks as they count toward
  the plan's); with neither (a permission rule), evenly over the steps whose skill the plan
  does not permit; with nothing to split by, to the plan level. Items that moved the other
  way pushed against the flip and get none. The flip shares add up to 1 over the groups.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from costsim_analytics.engines.cost_models.plans import KNOWN_SKILLS, LLM_INVOKE

GROUP_BYS = ("skill", "position", "iterations", "prompt_band")
PLAN_LEVEL = "(plan level)"
NOT_IN_PLAN = "(not in plan)"
NO_PROMPT = "(no prompt)"
OTHER = "(other groups)"
# At most this many groups are listed; the rest (skills named in no model's table, one per
# name) are added up into OTHER, so the rows still partition the steps.
MAX_GROUPS = 100
RISK_THRESHOLD = 0.5
_LLM = KNOWN_SKILLS[LLM_INVOKE]
RISK_CAP = 1.0 - 1e-12  # log(1 - risk) stays finite for a step that is certain to fail

# (lower bound, label): a value belongs to the last band whose lower bound it reaches.
POSITION_BANDS = (
    (1, "1"), (2, "2"), (3, "3"), (4, "4"), (5, "5"), (6, "6-10"), (11, "11-20"),
    (21, "21-50"), (51, "51-100"), (101, "101-1000"), (1001, "1001+"),
)  # fmt: skip
ITERATION_BANDS = ((1, "1"), (2, "2"), (3, "3-5"), (6, "6-10"), (11, "11-100"), (101, "101+"))
# Prompt characters, at the models' own steps (V1 per 1,000; V2's penalties at 2,000, 4,000).
PROMPT_BANDS = (
    (0, "0-999 chars"), (1000, "1000-1999 chars"), (2000, "2000-3999 chars"),
    (4000, "4000-7999 chars"), (8000, "8000-15999 chars"), (16000, "16000+ chars"),
)  # fmt: skip
_BANDED = {"position": POSITION_BANDS, "iterations": ITERATION_BANDS, "prompt_band": PROMPT_BANDS}


def band(value: float, bands: Sequence[tuple[int, str]]) -> str:
    """The label of the band ``value`` falls in.

    Example:
        >>> band(7, POSITION_BANDS), band(2500, PROMPT_BANDS)
        ('6-10', '2000-3999 chars')

    """
    label = bands[0][1]
    for low, name in bands:
        if value < low:
            break
        label = name
    return label


def group_order(group_by: str) -> dict[str, int]:
    """The natural order of a banded dimension's groups (empty for skills: by share)."""
    bands = _BANDED.get(group_by, ())
    order = {label: i for i, (_, label) in enumerate(bands)}
    order.update({NO_PROMPT: len(order), NOT_IN_PLAN: len(order) + 1})
    return order if bands else {}


@dataclass(frozen=True, slots=True)
class Item:
    """One step of one sample as both models priced it (``None``: the model has no such step)."""

    position: int
    """0-based position in the breakdown; -1 for the plan-level item."""
    skill: str
    group: str
    v1: tuple[float, float, float] | None
    """Baseline (cost cents, latency ms, risk)."""
    v2: tuple[float, float, float] | None
    permitted: bool = True

    @property
    def cost_delta(self) -> float:
        """Candidate cost minus baseline cost (a missing step counts 0)."""
        return (self.v2[0] if self.v2 else 0.0) - (self.v1[0] if self.v1 else 0.0)

    @property
    def latency_delta(self) -> float:
        """Candidate latency minus baseline latency, in ms."""
        return (self.v2[1] if self.v2 else 0.0) - (self.v1[1] if self.v1 else 0.0)

    @property
    def risk_delta(self) -> float:
        """``log(1 - r1) - log(1 - r2)``: how much more the step adds to the candidate's risk.

        Positive when the candidate's step is riskier; the plan's cumulative risk is
        ``1 - exp(sum of log(1 - r))``, so these add up over a plan's steps.
        """
        r1 = min(self.v1[2], RISK_CAP) if self.v1 and self.position >= 0 else 0.0
        r2 = min(self.v2[2], RISK_CAP) if self.v2 and self.position >= 0 else 0.0
        return math.log1p(-r1) - math.log1p(-r2)


class Inconsistent(ValueError):
    """A comparison row whose breakdown does not fit its plan (the artifact is not ours)."""


def _step_group(group_by: str, skill: str, step: Mapping[str, Any] | None, position: int) -> str:
    if group_by == "skill":
        return skill
    if group_by == "position":
        return band(position + 1, POSITION_BANDS)
    if step is None:
        return NOT_IN_PLAN
    if group_by == "iterations":
        return band(step.get("iterations") or 1, ITERATION_BANDS)
    if skill != _LLM:
        return NO_PROMPT
    params = step.get("params") or {}
    return band(len(params.get("prompt") or ""), PROMPT_BANDS)


_POSITIONS = [band(i + 1, POSITION_BANDS) for i in range(1000)]


def step_groups(plan: Sequence[Mapping[str, Any]], group_by: str) -> list[str]:
    """The group of each step of a plan whose breakdowns are the plan's steps."""
    if group_by == "skill":
        return [step["skill"] for step in plan]
    if group_by == "position" and len(plan) <= len(_POSITIONS):
        return _POSITIONS[: len(plan)]
    return [_step_group(group_by, step["skill"], step, i) for i, step in enumerate(plan)]


def aligned(row: Mapping[str, Any]) -> bool:
    """Whether both breakdowns are the plan's steps, one for one (the built-in models)."""
    base, cand = row["baseline"], row["candidate"]
    n = len(row["plan_input"]["plan"])
    return (
        "step_skills" not in base
        and "step_skills" not in cand
        and len(base["steps"]) == n == len(cand["steps"])
    )


def _breakdown(estimates: Mapping[str, Any], plan_skills: list[str]) -> tuple[list[Any], list[str]]:
    steps = estimates["steps"]
    skills = estimates.get("step_skills")
    if skills is None:
        if len(steps) != len(plan_skills):
            raise Inconsistent(f"{len(steps)} step estimates for {len(plan_skills)} steps")
        return steps, plan_skills
    if len(skills) != len(steps):
        raise Inconsistent(f"{len(steps)} step estimates named by {len(skills)} skills")
    return steps, skills


def items_of(row: Mapping[str, Any], group_by: str) -> list[Item]:
    """The items of one valid comparison row whose models both gave a breakdown.

    Raises:
        Inconsistent: a breakdown that does not fit the plan.
    """
    plan_input = row["plan_input"]
    plan: list[Mapping[str, Any]] = plan_input["plan"]
    plan_skills = [step["skill"] for step in plan]
    permissions = plan_input.get("permissions")
    allowed = None if permissions is None else frozenset(permissions)
    base, cand = row["baseline"], row["candidate"]
    b_steps, b_skills = _breakdown(base, plan_skills)
    c_steps, c_skills = _breakdown(cand, plan_skills)
    items: list[Item] = []
    for i in range(max(len(b_steps), len(c_steps))):
        sb = b_skills[i] if i < len(b_steps) else None
        sc = c_skills[i] if i < len(c_steps) else None
        pairs = [(sb, b_steps[i] if sb is not None else None, None)]
        if sb == sc:
            pairs = [(sb, b_steps[i], c_steps[i])]
        elif sc is not None:
            pairs.append((sc, None, c_steps[i]))
        for skill, v1, v2 in pairs:
            if skill is None:
                continue
            step = plan[i] if i < len(plan) and plan_skills[i] == skill else None
            items.append(
                Item(
                    i,
                    skill,
                    _step_group(group_by, skill, step, i),
                    None if v1 is None else (float(v1[0]), float(v1[1]), float(v1[2])),
                    None if v2 is None else (float(v2[0]), float(v2[1]), float(v2[2])),
                    allowed is None or skill in allowed,
                )
            )
    residual = plan_level(base, cand, b_steps, c_steps)
    if residual is not None:
        items.append(residual)
    return items


def plan_level(
    base: Mapping[str, Any],
    cand: Mapping[str, Any],
    b_steps: Sequence[Sequence[float]],
    c_steps: Sequence[Sequence[float]],
) -> Item | None:
    """What the totals hold beyond their steps (None when both models' steps add up)."""
    # Summed left to right from 0, as the models fold their steps: V1's residual is exactly 0.
    r1 = float(base["cost_cents"]) - sum(float(s[0]) for s in b_steps)
    r2 = float(cand["cost_cents"]) - sum(float(s[0]) for s in c_steps)
    l1 = float(base["duration_ms"]) - sum(float(s[1]) for s in b_steps)
    l2 = float(cand["duration_ms"]) - sum(float(s[1]) for s in c_steps)
    if r1 == r2 == l1 == l2 == 0.0:
        return None
    return Item(-1, PLAN_LEVEL, PLAN_LEVEL, (r1, l1, 0.0), (r2, l2, 0.0))


def whole_sample(row: Mapping[str, Any]) -> list[Item]:
    """A sample whose models did not both give a breakdown: its whole delta is plan level."""
    base, cand = row["baseline"], row["candidate"]
    v1 = (float(base["cost_cents"]), float(base["duration_ms"]), 0.0)
    v2 = (float(cand["cost_cents"]), float(cand["duration_ms"]), 0.0)
    return [Item(-1, PLAN_LEVEL, PLAN_LEVEL, v1, v2)]


def flip_causes(row: Mapping[str, Any], items: Sequence[Item]) -> tuple[str, ...]:
    """Why the two models disagree on feasibility: ``budget``, ``risk``, ``permission``, ``other``.

    Empty when they agree. ``budget`` and ``risk``: the criterion that one model meets and the
    other does not (the infeasible one fails it); ``permission``: neither, and the plan has
    steps its permissions leave out (a rule one model applies); ``other``: nothing in the plan
    says why.
    """
    base, cand = row["baseline"], row["candidate"]
    if bool(base["feasible"]) == bool(cand["feasible"]):
        return ()
    budget = float(row["plan_input"]["budget_cents"])
    causes = []
    if (float(base["cost_cents"]) <= budget) != (float(cand["cost_cents"]) <= budget):
        causes.append("budget")
    r1, r2 = base.get("cumulative_risk"), cand.get("cumulative_risk")
    if r1 is not None and r2 is not None and (r1 <= RISK_THRESHOLD) != (r2 <= RISK_THRESHOLD):
        causes.append("risk")
    if not causes:
        causes.append("permission" if any(not i.permitted for i in items) else "other")
    return tuple(causes)


def flip_weights(
    causes: Sequence[str], items: Sequence[Item], *, candidate_infeasible: bool = True
) -> list[float]:
    """How one flip (weight 1) is split over ``items`` (all 0 when there is no flip).

    Each cause takes an equal part. Within ``budget`` (``risk``) the part goes to the items
    that moved the infeasible model's cost (risk) up relative to the other model's, in
    proportion to how far: items that moved the other way pushed against the flip and get
    none. ``permission``: evenly to the steps the plan does not permit. With nothing to
    split by, to the plan level (beyond ``items`` when the sample has no plan-level item).
    """
    weights = [0.0] * len(items)
    if not causes:
        return weights
    share = 1.0 / len(causes)
    # Seen from the infeasible model: +1 when it is the candidate.
    sign = 1.0 if candidate_infeasible else -1.0
    for cause in causes:
        if cause == "budget":
            basis = [max(0.0, sign * i.cost_delta) for i in items]
        elif cause == "risk":
            basis = [max(0.0, sign * i.risk_delta) for i in items]
        elif cause == "permission":
            basis = [0.0 if i.permitted or i.position < 0 else 1.0 for i in items]
        else:
            basis = [0.0] * len(items)
        total = sum(basis)
        if total > 0.0:
            for k, b in enumerate(basis):
                weights[k] += share * b / total
            continue
        at = next((k for k, i in enumerate(items) if i.position < 0), None)
        if at is None:
            weights.append(share)
        else:
            weights[at] += share
    return weights
