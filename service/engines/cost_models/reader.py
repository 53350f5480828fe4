"""The fast reader behind ``estimate_batch``: plan inputs to plain column lists, in one pass.

The common shape of a plan (plain dicts and lists, string skills, int or whole-float numbers,
as protobuf Struct delivers them) is read inline, straight into lists of ints and floats.
Anything else (a ``Mapping`` that is not a dict, a null, a wrong type, a permission list,
...) goes to :func:`~.plans.parse_plan`, which decides: it raises the sample's ``InvalidPlan``
or returns rows for it. So validity and every value are :func:`parse_plan`'s, and the inline
path only has to accept a subset of what it accepts, and read it to the same values.

Speed matters here because this loop is most of ``estimate_batch``: it allocates no
per-step containers (tuples, dicts), which keeps the cyclic garbage collector idle, and reads
the parameters of the three skills that have any only for those steps.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from costsim_analytics.engines.cost_models.base import InvalidPlan
from costsim_analytics.engines.cost_models.plans import (
    DEFAULT_TIMEOUT_S,
    HTTP_CALL,
    LLM_INVOKE,
    LOCAL_URL_PREFIXES,
    MAX_ITERATIONS,
    SHELL_LITE,
    SKILL_INDEX,
    UNKNOWN_SKILL,
    parse_plan,
)

_MAX_WHOLE = float(MAX_ITERATIONS)
_HAS_PARAMS = frozenset({HTTP_CALL, LLM_INVOKE, SHELL_LITE})


class _Irregular(Exception):
    """The inline reader declines this plan; parse_plan reads it instead."""


@dataclass(slots=True)
class ColumnLists:
    """What :func:`read_columns` produces: per-plan lists and per-step lists.

    The steps of each valid plan are contiguous and in sample order. Prompt, URL, timeout and
    command facts are sparse: ``(step position, value)`` pairs for the steps of the skills
    that read them.
    """

    errors: list[str | None] = field(default_factory=list)
    budgets: list[float] = field(default_factory=list)
    counts: list[int] = field(default_factory=list)
    gaps: list[bool] = field(default_factory=list)
    skills: list[int] = field(default_factory=list)
    iterations: list[float] = field(default_factory=list)
    prompt_at: list[int] = field(default_factory=list)
    prompt_chars: list[int] = field(default_factory=list)
    http_at: list[int] = field(default_factory=list)
    http_local: list[bool] = field(default_factory=list)
    http_timeout: list[float] = field(default_factory=list)
    command_at: list[int] = field(default_factory=list)
    command_chars: list[int] = field(default_factory=list)


def read_columns(plan_inputs: Iterable[object]) -> ColumnLists:
    """Read every plan input; see the module docstring."""
    out = ColumnLists()
    skills, iterations = out.skills, out.iterations
    add_skill, add_iterations = skills.append, iterations.append
    prompt_at, prompt_chars = out.prompt_at.append, out.prompt_chars.append
    http_at, http_local = out.http_at.append, out.http_local.append
    http_timeout = out.http_timeout.append
    command_at, command_chars = out.command_at.append, out.command_chars.append
    skill_index = SKILL_INDEX.get
    add_error, add_budget = out.errors.append, out.budgets.append
    add_count, add_gap = out.counts.append, out.gaps.append
    for plan_input in plan_inputs:
        start = len(skills)
        try:
            if type(plan_input) is not dict:
                raise _Irregular
            plan = plan_input.get("plan")
            budget = plan_input.get("budget_cents")
            permissions = plan_input.get("permissions")
            if type(plan) is not list or permissions is not None:
                raise _Irregular
            if type(budget) is float:
                if not 0.0 <= budget < _MAX_WHOLE:
                    raise _Irregular
            elif type(budget) is not int or not 0 <= budget <= MAX_ITERATIONS:
                raise _Irregular
            for step in plan:
                if type(step) is not dict:
                    raise _Irregular
                skill = step.get("skill")
                if type(skill) is not str:
                    raise _Irregular
                count = step.get("iterations")
                if count is None:
                    count = 1
                elif type(count) is int:
                    if not 1 <= count <= MAX_ITERATIONS:
                        raise _Irregular
                elif type(count) is not float or not (
                    1.0 <= count <= _MAX_WHOLE and count.is_integer()
                ):
                    raise _Irregular
                params = step.get("params")
                if params is not None and type(params) is not dict:
                    raise _Irregular
                index = skill_index(skill, UNKNOWN_SKILL)
                if index in _HAS_PARAMS:
                    position = len(skills)
                    if params is None:
                        params = {}
                    if index == LLM_INVOKE:
                        prompt = params.get("prompt")
                        if type(prompt) is str:
                            prompt_at(position)
                            prompt_chars(len(prompt))
                        elif prompt is not None:
                            raise _Irregular
                    elif index == HTTP_CALL:
                        url = params.get("url")
                        if type(url) is str:
                            local = url.startswith(LOCAL_URL_PREFIXES)
                        elif url is None:
                            local = False
                        else:
                            raise _Irregular
                        timeout = params.get("timeout_s")
                        if timeout is None:
                            timeout = DEFAULT_TIMEOUT_S
                        elif type(timeout) is float:
                            if not 0.0 <= timeout < _MAX_WHOLE:
                                raise _Irregular
                        elif type(timeout) is not int or not 0 <= timeout <= MAX_ITERATIONS:
                            raise _Irregular
                        http_at(position)
                        http_local(local)
                        http_timeout(timeout)
                    else:
                        command = params.get("command")
                        if type(command) is str:
                            command_at(position)
                            command_chars(len(command))
                        elif command is not None:
                            raise _Irregular
                add_skill(index)
                add_iterations(count)
        except _Irregular:
            _undo(out, start)
            try:
                parsed = parse_plan(plan_input)
            except InvalidPlan as exc:
                add_error(str(exc))
                add_budget(float("nan"))
                add_count(0)
                add_gap(False)
                continue
            for _, index, count, chars, local, command_len, timeout in parsed.rows:
                position = len(skills)
                if index == LLM_INVOKE:
                    prompt_at(position)
                    prompt_chars(chars)
                elif index == HTTP_CALL:
                    http_at(position)
                    http_local(local)
                    http_timeout(timeout)
                elif index == SHELL_LITE:
                    command_at(position)
                    command_chars(command_len)
                add_skill(index)
                add_iterations(count)
            budget = parsed.budget_cents
            add_gap(bool(parsed.permission_gaps))
        else:
            add_gap(False)
        add_error(None)
        add_budget(budget)
        add_count(len(skills) - start)
    return out


def _undo(out: ColumnLists, start: int) -> None:
    """Drop what the inline reader appended for a plan it then declined."""
    del out.skills[start:], out.iterations[start:]
    for at, values in (
        (out.prompt_at, (out.prompt_chars,)),
        (out.http_at, (out.http_local, out.http_timeout)),
        (out.command_at, (out.command_chars,)),
    ):
        while at and at[-1] >= start:
            at.pop()
            for column in values:
                column.pop()
