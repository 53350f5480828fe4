"""Reading a plan input: the one validation path shared by ``estimate`` and ``estimate_batch``.

A plan input is ``{"plan": [step, ...], "budget_cents": n, "permissions": [skill, ...]}``
(``permissions`` optional), a step ``{"skill": str, "params": {...}, "iterations": n}``.
:func:`parse_plan` checks it and reduces every step to a :data:`StepRow`: the few facts the
built-in models read, so that the models themselves never look at raw input.

Example:
    >>> parse_plan({"plan": [{"skill": "llm_invoke", "params": {"prompt": "hi"}}],
    ...             "budget_cents": 100.0}).rows
    [('llm_invoke', 1, 1, 2, True, 0, 30.0)]

"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, NamedTuple

from costsim_analytics.engines.cost_models.base import InvalidPlan
from costsim_analytics.engines.text import shown

KNOWN_SKILLS = (
    "http_call",
    "llm_invoke",
    "json_transform",
    "fs_read",
    "fs_write",
    "shell_lite",
    "kv_get",
    "kv_set",
    "webhook_send",
    "email_send",
)
SKILL_INDEX = {skill: index for index, skill in enumerate(KNOWN_SKILLS)}
HTTP_CALL, LLM_INVOKE, SHELL_LITE = 0, 1, 5
UNKNOWN_SKILL = len(KNOWN_SKILLS)  # the row every model's table keeps for unknown skills

LOCAL_URL_PREFIXES = ("http://localhost", "http://127.0.0.1")
DEFAULT_TIMEOUT_S = 30.0
# Beyond 2**53 a count is no longer exact as a double (and Struct carries doubles).
MAX_ITERATIONS = 2**53

StepRow = tuple[str, int, int, int, bool, int, float]
"""(skill, skill index, iterations, prompt chars, URL is local, command chars, timeout_s).

The last four hold their defaults (0, True, 0, 30.0) unless the skill reads them: the prompt
for ``llm_invoke``, the URL and timeout for ``http_call``, the command for ``shell_lite``.
"""


class ParsedPlan(NamedTuple):
    """A checked plan: its steps, its budget as a double and the skills it may not use."""

    rows: list[StepRow]
    budget_cents: float
    permission_gaps: tuple[str, ...]  # distinct, in plan order; empty without "permissions"


_EMPTY: Mapping[str, Any] = {}


def parse_plan(plan_input: object) -> ParsedPlan:
    """Check one plan input and reduce it to rows.

    Raises:
        InvalidPlan: if anything the models read is missing or of the wrong type.

    """
    if not isinstance(plan_input, Mapping):
        raise InvalidPlan(f"plan input must be a mapping, got {_kind(plan_input)}")
    plan = plan_input.get("plan")
    if plan is None:
        raise InvalidPlan("plan is required")
    if not isinstance(plan, list | tuple):
        raise InvalidPlan(f"plan must be a list of steps, got {_kind(plan)}")
    budget = _budget(plan_input.get("budget_cents"))
    allowed = _permissions(plan_input.get("permissions"))
    rows: list[StepRow] = []
    append = rows.append
    for i, step in enumerate(plan):
        # Exact-type checks first: they are the common case and much cheaper than isinstance
        # against an ABC, and this loop is the floor of estimate_batch's cost.
        if type(step) is not dict and not isinstance(step, Mapping):
            raise InvalidPlan(f"plan[{i}] must be a mapping, got {_kind(step)}")
        skill = step.get("skill")
        if type(skill) is not str and not isinstance(skill, str):
            raise InvalidPlan(f"plan[{i}].skill must be a string, got {_kind(skill)}")
        iterations = step.get("iterations", 1)
        if type(iterations) is not int or not 1 <= iterations <= MAX_ITERATIONS:
            iterations = _iterations(iterations, i)
        params = step.get("params")
        if params is None:
            params = _EMPTY
        elif type(params) is not dict and not isinstance(params, Mapping):
            raise InvalidPlan(f"plan[{i}].params must be a mapping, got {_kind(params)}")
        index = SKILL_INDEX.get(skill, UNKNOWN_SKILL)
        if index == LLM_INVOKE:
            prompt = _text(params, "prompt", i)
            append((skill, index, iterations, len(prompt), True, 0, DEFAULT_TIMEOUT_S))
        elif index == HTTP_CALL:
            local = _text(params, "url", i).startswith(LOCAL_URL_PREFIXES)
            append((skill, index, iterations, 0, local, 0, _timeout(params, i)))
        elif index == SHELL_LITE:
            command = _text(params, "command", i)
            append((skill, index, iterations, 0, True, len(command), DEFAULT_TIMEOUT_S))
        else:
            append((skill, index, iterations, 0, True, 0, DEFAULT_TIMEOUT_S))
    gaps: tuple[str, ...] = ()
    if allowed is not None:
        gaps = tuple(dict.fromkeys(row[0] for row in rows if row[0] not in allowed))
    return ParsedPlan(rows, budget, gaps)


def whole_number(value: object) -> int | None:
    """``value`` as an int when it is a whole number (an int, or a whole finite float), else None.

    Example:
        >>> whole_number(3.0), whole_number(3.5), whole_number(True)
        (3, None, None)

    """
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        return int(value)
    return None


def _iterations(value: object, i: int) -> int:
    if value is None:
        return 1
    count = whole_number(value)
    if count is None or not 1 <= count <= MAX_ITERATIONS:
        raise InvalidPlan(
            f"plan[{i}].iterations must be a whole number from 1 to 2**53, got {shown(value)}"
        )
    return count


def _budget(value: object) -> float:
    if value is None:
        raise InvalidPlan("budget_cents is required")
    return _non_negative(value, "budget_cents", "a finite number >= 0")


def _non_negative(value: object, path: str, expected: str) -> float:
    """``value`` as a finite float >= 0, or InvalidPlan: "<path> must be <expected>"."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidPlan(f"{path} must be a number, got {_kind(value)}")
    try:
        number = float(value)
    except OverflowError:
        number = math.inf
    if not math.isfinite(number) or number < 0:
        raise InvalidPlan(f"{path} must be {expected}, got {shown(value)}")
    return number


def _permissions(value: object) -> frozenset[str] | None:
    if value is None:
        return None
    if not isinstance(value, list | tuple) or not all(isinstance(s, str) for s in value):
        raise InvalidPlan("permissions must be a list of skill ids")
    return frozenset(value)


def _text(params: Mapping[str, Any], key: str, i: int) -> str:
    value = params.get(key)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise InvalidPlan(f"plan[{i}].params.{key} must be a string, got {_kind(value)}")
    return value


def _timeout(params: Mapping[str, Any], i: int) -> float:
    value = params.get("timeout_s")
    if value is None:
        return DEFAULT_TIMEOUT_S
    return _non_negative(value, f"plan[{i}].params.timeout_s", "finite and >= 0")


def _kind(value: object) -> str:
    return "null" if value is None else type(value).__name__
