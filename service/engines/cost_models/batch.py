"""Many plans as numpy columns, and per-plan reductions that match a Python loop bit for bit.

:func:`plan_columns` reads every plan once (:mod:`.reader`; a sample is invalid in a batch
exactly when ``estimate`` raises for it) and lays the steps of the valid plans end to end in
columns. :class:`PlanBatch` keeps those columns with its inputs, so that several built-in
models estimating the same samples read them only once.

Per-plan sums and products are folds in plan order, the order of a Python loop: numpy's
``add.reduce`` and ``add.reduceat`` sum pairwise, whose last bit can differ, and V2's
``round`` of the total then disagrees with ``estimate`` at x.5 (the unit tests pin such a
plan). :class:`Fold` takes one vectorised step per step *position*: with plans sorted by
length, position ``k`` touches the prefix of plans that have more than ``k`` steps. Once fewer
than :data:`TAIL_PLANS` plans remain, each finishes with ``ufunc.accumulate`` over its own
steps (sequential too), so one very long plan costs a C loop, not a Python one per step.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, overload

import numpy as np
import numpy.typing as npt

from costsim_analytics.engines.cost_models.base import RISK_THRESHOLD, BatchEstimates, StepColumns
from costsim_analytics.engines.cost_models.plans import DEFAULT_TIMEOUT_S
from costsim_analytics.engines.cost_models.reader import read_columns

Floats = npt.NDArray[np.float64]
Ints = npt.NDArray[np.int64]
Bools = npt.NDArray[np.bool_]


@dataclass(frozen=True, slots=True)
class PlanColumns:
    """The steps of the valid plans of a batch, end to end, plus per-plan facts.

    Per plan (one entry per sample): ``valid``, ``errors``, ``budget_cents`` (NaN when invalid),
    ``n_steps`` (0 when invalid), ``permission_gap``. Per step of a valid plan, in plan order:
    skill index, iterations and the facts of :data:`~.plans.StepRow` as arrays, with their
    defaults where a skill does not read them.
    """

    valid: Bools
    errors: tuple[str | None, ...]
    budget_cents: Floats
    n_steps: Ints
    permission_gap: Bools
    skill: npt.NDArray[np.intp]
    iterations: Floats
    prompt_chars: Ints
    url_is_local: Bools
    command_chars: Ints
    timeout_s: Floats
    fold: Fold

    def fold_sum(self, values: Floats) -> Floats:
        """Per-plan ``0.0 + v0 + v1 + ...`` in plan order (0.0 for empty or invalid plans)."""
        return self.fold.apply(np.add, values, 0.0)

    def fold_product(self, values: Floats) -> Floats:
        """Per-plan ``1.0 * v0 * v1 * ...`` in plan order (1.0 for empty or invalid plans)."""
        return self.fold.apply(np.multiply, values, 1.0)

    def estimates(
        self,
        cost_cents: Floats,
        duration_ms: Floats,
        cumulative_risk: Floats,
        *,
        permissions: bool,
        steps: tuple[Floats, Floats, Floats] | None = None,
    ) -> BatchEstimates:
        """Per-plan totals as estimates: feasibility as both models define it, NaN if invalid.

        Feasible: valid, not empty, within budget and risk, and (``permissions``, V1 only) no
        skill outside the plan's permissions. The float columns are changed in place.
        ``steps`` are the per-step cost, latency and risk, one entry per step of the columns.
        """
        feasible = (
            self.valid
            & (self.n_steps > 0)
            & (cost_cents <= self.budget_cents)
            & (cumulative_risk <= RISK_THRESHOLD)
        )
        if permissions:
            feasible &= ~self.permission_gap
        for column in (cost_cents, duration_ms, cumulative_risk):
            column[~self.valid] = np.nan
        breakdown = None if steps is None else StepColumns(self.n_steps, *steps)
        return BatchEstimates(
            cost_cents, duration_ms, feasible, cumulative_risk, self.valid, self.errors, breakdown
        )


TAIL_PLANS = 8


class Fold:
    """A schedule for folding per-step values into per-plan results in plan order."""

    __slots__ = ("_order", "_positions", "_tail")

    def __init__(self, n_steps: Ints) -> None:
        starts = np.cumsum(n_steps) - n_steps
        self._order = np.argsort(-n_steps, kind="stable")
        descending = n_steps[self._order]
        sorted_starts = starts[self._order]
        longest = int(descending[0]) if len(descending) else 0
        # active[k]: how many plans have more than k steps, a prefix of the sorted plans.
        active = np.searchsorted(-descending, -np.arange(longest), side="left")
        short = int(np.searchsorted(-active, -TAIL_PLANS, side="right"))  # active >= TAIL
        self._positions = [
            (slice(0, int(count)), sorted_starts[:count] + k)
            for k, count in enumerate(active[:short].tolist())
        ]
        # The few plans longer than `short` steps finish one by one: (slot, first, end).
        self._tail = [
            (slot, int(sorted_starts[slot]) + short, int(sorted_starts[slot] + descending[slot]))
            for slot in range(int(active[short]) if short < longest else 0)
        ]

    def apply(self, op: np.ufunc, values: Floats, start: float) -> Floats:
        """``start op v0 op v1 ...`` per plan, left to right."""
        acc = np.full(len(self._order), start)
        for plans, steps in self._positions:
            op(acc[plans], values[steps], out=acc[plans])
        for slot, first, end in self._tail:
            acc[slot] = op.accumulate(np.concatenate(([acc[slot]], values[first:end])))[-1]
        out = np.empty_like(acc)
        out[self._order] = acc
        return out


def plan_columns(plan_inputs: Sequence[Mapping[str, Any]]) -> PlanColumns:
    """Read every plan once into columns (a :class:`PlanBatch` keeps its own)."""
    if isinstance(plan_inputs, PlanBatch):
        return plan_inputs.columns
    lists = read_columns(plan_inputs)
    n_steps = np.array(lists.counts, dtype=np.int64)
    skill = np.array(lists.skills, dtype=np.intp)
    prompt_chars = np.zeros(len(skill), dtype=np.int64)
    prompt_chars[lists.prompt_at] = lists.prompt_chars
    url_is_local = np.ones(len(skill), dtype=np.bool_)
    url_is_local[lists.http_at] = lists.http_local
    timeout_s = np.full(len(skill), DEFAULT_TIMEOUT_S)
    timeout_s[lists.http_at] = lists.http_timeout
    command_chars = np.zeros(len(skill), dtype=np.int64)
    command_chars[lists.command_at] = lists.command_chars
    return PlanColumns(
        valid=np.array([e is None for e in lists.errors], dtype=np.bool_),
        errors=tuple(lists.errors),
        budget_cents=np.array(lists.budgets, dtype=np.float64),
        n_steps=n_steps,
        permission_gap=np.array(lists.gaps, dtype=np.bool_),
        skill=skill,
        iterations=np.array(lists.iterations, dtype=np.float64),
        prompt_chars=prompt_chars,
        url_is_local=url_is_local,
        command_chars=command_chars,
        timeout_s=timeout_s,
        fold=Fold(n_steps),
    )


class PlanBatch(Sequence[Mapping[str, Any]]):
    """Plan inputs whose columns are read once and shared by every built-in model.

    It is a plain sequence of the inputs to any other model. The columns are read on first
    use and kept: do not change the inputs afterwards.

    Example:
        >>> from costsim_analytics.engines.cost_models import load_cost_model
        >>> batch = PlanBatch([{"plan": [{"skill": "kv_get"}], "budget_cents": 0}])
        >>> [load_cost_model(m).estimate_batch(batch).feasible[0] for m in ("v1", "v2")]
        [np.True_, np.True_]

    """

    __slots__ = ("_columns", "_inputs")

    def __init__(self, plan_inputs: Sequence[Mapping[str, Any]]) -> None:
        self._inputs = tuple(plan_inputs)
        self._columns: PlanColumns | None = None

    @property
    def columns(self) -> PlanColumns:
        """The columns of these inputs, read on first use."""
        if self._columns is None:
            self._columns = plan_columns(self._inputs)
        return self._columns

    def __len__(self) -> int:
        return len(self._inputs)

    @overload
    def __getitem__(self, index: int) -> Mapping[str, Any]: ...
    @overload
    def __getitem__(self, index: slice) -> Sequence[Mapping[str, Any]]: ...
    def __getitem__(self, index: int | slice) -> Mapping[str, Any] | Sequence[Mapping[str, Any]]:
        return self._inputs[index]

    def __iter__(self) -> Iterator[Mapping[str, Any]]:
        return iter(self._inputs)
