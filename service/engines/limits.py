"""Bounds on the work one call may ask for: samples, plan size, artifact bytes.

A canary run or a golden dataset costs memory and artifact bytes in proportion to its samples
and their plans (docs: README, "Configuration"), so each call is checked against
:class:`WorkLimits` before any work is done. Over a bound the call is refused with
:class:`~costsim_analytics.engines.errors.WorkBoundExceeded`: ``INVALID_ARGUMENT``, a field
violation naming the field (``samples``, ``samples[3].plan_input``) and a reason of its own,
and nothing is written. The limits come from the settings (``bootstrap.py``); the checks live
here and are called by the engines' validation, once for every way in (RPC, CLI, dashboard).

A plan's size is the length of its compact JSON as the artifacts write it (ASCII, non-ASCII
characters escaped), so the plans of a run add up to a lower bound of its
``comparisons.jsonl``, and a request whose plans alone exceed the artifact bound is refused
before the models run.

Example:
    >>> limits = WorkLimits(max_samples=2)
    >>> check_samples(3, limits)
    Traceback (most recent call last):
    ...
    costsim_analytics.engines.errors.WorkBoundExceeded: samples: must hold at most 2 samples
    >>> plan_bytes({"plan": [], "budget_cents": 5})
    28

"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from costsim_analytics.engines.errors import FieldViolation, WorkBoundExceeded

MIB = 1024 * 1024
# The bounds, as the refusal metric labels them (costsim_work_refusals_total{bound}).
SAMPLES = "samples"
PLAN_BYTES = "plan_bytes"
PLAN_STEPS = "plan_steps"
ARTIFACT_BYTES = "artifact_bytes"
RECORDS = "records"
BOUNDS = (RECORDS, SAMPLES, PLAN_BYTES, PLAN_STEPS, ARTIFACT_BYTES)
# The ErrorInfo reason of each bound.
REASONS = {
    RECORDS: "BATCH_TOO_LARGE",
    SAMPLES: "TOO_MANY_SAMPLES",
    PLAN_BYTES: "PLAN_TOO_LARGE",
    PLAN_STEPS: "PLAN_TOO_LARGE",
    ARTIFACT_BYTES: "ARTIFACTS_TOO_LARGE",
}
# The most samples any setting allows (the contract's own ceiling).
MAX_SAMPLES = 100_000

_COMPACT = json.JSONEncoder(separators=(",", ":")).encode


@dataclass(frozen=True, slots=True)
class WorkLimits:
    """The per-call bounds; the defaults are the settings' defaults.

    From ``COSTSIM_MAX_SAMPLES``, ``COSTSIM_MAX_PLAN_BYTES``, ``COSTSIM_MAX_PLAN_STEPS`` and
    ``COSTSIM_CANARY_MAX_ARTIFACT_MB`` (``bootstrap.work_limits``).
    """

    max_samples: int = 20_000
    max_plan_bytes: int = 64 * 1024
    max_plan_steps: int = 1000
    max_artifact_bytes: int = 64 * MIB


def refuse(bound: str, violations: Sequence[FieldViolation], message: str = "") -> None:
    """Raise the refusal of ``bound`` naming ``violations`` (its message: the first one's)."""
    first = violations[0]
    raise WorkBoundExceeded(
        message or f"{first.field}: {first.description}",
        violations,
        bound=bound,
        reason=REASONS[bound],
    )


def check_samples(count: int, limits: WorkLimits, field: str = "samples") -> None:
    """Refuse more than ``limits.max_samples`` samples, naming ``field``."""
    if count > limits.max_samples:
        refuse(SAMPLES, [FieldViolation(field, f"must hold at most {limits.max_samples} samples")])


def plan_bytes(plan_input: Any) -> int:
    """The bytes of a plan input's compact JSON, as the artifacts write it.

    The encoder recurses: ``plan_input`` must be checked for depth first
    (``text.normalize_json``), or be stored JSON (read back by a decoder that recursed too).
    """
    return len(_COMPACT(plan_input))


@dataclass
class PlanBounds:
    """Checks plan after plan against the limits; then :meth:`refuse_if_over` raises.

    Example:
        >>> plans = PlanBounds(WorkLimits(max_plan_steps=1))
        >>> plans.check({"plan": [{}, {}]}, "samples[0].plan_input")
        >>> plans.violations[0].description, plans.total_bytes
        ('must have at most 1 steps', 16)

    """

    limits: WorkLimits
    violations: list[FieldViolation] = field(default_factory=list)
    bounds: set[str] = field(default_factory=set)
    total_bytes: int = 0
    """The plans' bytes added up (a lower bound of the artifact they are written to)."""

    def check(self, plan_input: Any, path: str) -> None:
        """Note a violation of ``path`` when the plan is over a bound, and add up its bytes.

        Steps are the length of its ``plan`` list (anything else is the cost models' business).
        """
        size = plan_bytes(plan_input)
        self.total_bytes += size
        if size > self.limits.max_plan_bytes:
            limit = self.limits.max_plan_bytes
            self._note(PLAN_BYTES, path, f"must encode to at most {limit} bytes of JSON")
            return
        steps = plan_input.get("plan") if isinstance(plan_input, dict) else None
        if isinstance(steps, list) and len(steps) > self.limits.max_plan_steps:
            self._note(PLAN_STEPS, path, f"must have at most {self.limits.max_plan_steps} steps")

    def _note(self, bound: str, path: str, description: str) -> None:
        self.bounds.add(bound)
        self.violations.append(FieldViolation(path, description))

    def refuse_if_over(self) -> None:
        """Raise the refusal naming every plan over a bound (labelled by bytes first)."""
        if self.violations:
            refuse(PLAN_BYTES if PLAN_BYTES in self.bounds else PLAN_STEPS, self.violations)


def check_artifact_bytes(
    size: int, limits: WorkLimits, field: str, *, at_least: bool = False
) -> None:
    """Refuse a run whose artifacts take ``size`` bytes (``at_least``: or more), over the bound."""
    if size > limits.max_artifact_bytes:
        mib = limits.max_artifact_bytes / MIB
        description = (
            f"the run's artifacts would take {'at least ' if at_least else ''}{size} bytes, "
            f"more than the {mib:g} MiB one run may write: send fewer or smaller samples"
        )
        refuse(ARTIFACT_BYTES, [FieldViolation(field, description)])
