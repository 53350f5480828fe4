r"""The one rule for text and JSON a caller sends: what every string and JSON value must be.

Every string field of every request, and every key and string inside a JSON value (a payload,
a plan input), must be storable as sent: no NUL character (PostgreSQL's ``text`` and ``jsonb``
refuse ``\u0000``) and no unpaired UTF-16 surrogate (no UTF-8 spelling exists for one). JSON
values nest at most ``max_depth`` levels (``COSTSIM_MAX_JSON_DEPTH``, at most 32), so that a
stored value always converts back to a ``google.protobuf.Struct`` that protobuf's decoder
accepts (upb's Python decoder stops at 33 JSON levels inside a QueryProvenanceResponse).
Depth is measured without recursion (an explicit stack, or a scan of the text), before any
recursive parser or encoder sees the value.

Example:
    >>> text_problem("run-1") is None
    True
    >>> text_problem("a\x00b")
    'must not contain NUL characters'
    >>> normalize_json({"a": [1.0, {"b": 2.5}]}, max_depth=3)
    {'a': [1, {'b': 2.5}]}
    >>> json_text_too_deep('{"a": "[[[[", "b": [[1]]}', max_depth=3)
    False

"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

from costsim_analytics.engines.canonical import JsonValue, whole_or_float
from costsim_analytics.engines.errors import FieldViolation

DEFAULT_MAX_JSON_DEPTH = 32
NUL = "must not contain NUL characters"
SURROGATE = "must not contain unpaired UTF-16 surrogates"

# In a Python str a surrogate code point is never part of a pair: JSON's escaped pairs and
# UTF-8 both decode to the one code point they spell.
_SURROGATE = re.compile("[\ud800-\udfff]")
# A JSON string (escapes included), or a bracket outside strings.
_STRING_OR_BRACKET = re.compile(r'"(?:[^"\\]|\\.)*"|[\[\]{}]', re.DOTALL)


def text_problem(value: str) -> str | None:
    """Why ``value`` cannot be stored as sent, or None when it can."""
    if "\x00" in value:
        return NUL
    if not value.isascii() and _SURROGATE.search(value):
        return SURROGATE
    return None


def check_text(value: str, path: str, out: list[FieldViolation]) -> None:
    """Append a violation naming ``path`` when ``value`` breaks the text rule."""
    problem = text_problem(value)
    if problem is not None:
        out.append(FieldViolation(path, problem))


def check_texts(
    obj: object, names: Iterable[str], out: list[FieldViolation], prefix: str = ""
) -> None:
    """:func:`check_text` on each attribute ``names`` of ``obj``, as ``prefix + name``."""
    for name in names:
        check_text(getattr(obj, name), prefix + name, out)


def shown(value: object, limit: int = 64) -> str:
    """``repr(value)`` for an error message, cut to ``limit`` characters with an ellipsis.

    Messages go back in trailers, which gRPC bounds (8-16 KiB): a caller's 10,000-character
    name must not be echoed whole.

    Example:
        >>> shown("x" * 100, limit=8)
        "'xxxxxx…"

    """
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def depth_problem(max_depth: int) -> str:
    """The description of a JSON value nested too deep."""
    return f"must nest at most {max_depth} levels deep"


def normalize_json(value: JsonValue, *, max_depth: int, texts: bool = True) -> JsonValue:
    """A copy of ``value`` with whole floats as ints, checked in the same walk (no recursion).

    Args:
        value: a JSON value as Python (dicts, lists, str, numbers, bool, None).
        max_depth: the deepest nesting allowed (``{}`` is 1, ``{"a": []}`` is 2).
        texts: also apply the text rule to every key and string (False when the caller checks
            the serialised text instead).

    Raises:
        ValueError: the value nests too deep, breaks the text rule, or holds a non-finite number.

    """
    if not isinstance(value, dict | list):
        return _leaf(value, texts)
    root: dict[str, Any] | list[Any] = {} if isinstance(value, dict) else []
    stack: list[tuple[Any, Any, int]] = [(value, root, 1)]
    while stack:
        src, dst, depth = stack.pop()
        if depth > max_depth:
            raise ValueError(depth_problem(max_depth))
        is_dict = isinstance(src, dict)
        for key, item in src.items() if is_dict else enumerate(src):
            if is_dict and texts and isinstance(key, str):
                _leaf(key, texts)
            new: Any
            if isinstance(item, dict):
                new = {}
                stack.append((item, new, depth + 1))
            elif isinstance(item, list):
                new = []
                stack.append((item, new, depth + 1))
            else:
                new = _leaf(item, texts)
            if is_dict:
                dst[key] = new
            else:
                dst.append(new)
    return root


def _leaf(item: JsonValue, texts: bool) -> JsonValue:
    if isinstance(item, float):
        return whole_or_float(item)
    if texts and isinstance(item, str):
        problem = text_problem(item)
        if problem is not None:
            raise ValueError(problem)
    return item


def json_text_too_deep(text: str, *, max_depth: int) -> bool:
    """Whether JSON ``text`` opens more than ``max_depth`` brackets at once (outside strings).

    A scan, not a parse, so it is safe on any text; it runs before ``json.loads`` does.
    """
    if text.count("{") + text.count("[") <= max_depth:  # cannot be deeper: the usual case
        return False
    depth = 0
    for match in _STRING_OR_BRACKET.finditer(text):
        char = match.group()
        if char in ("{", "["):
            depth += 1
            if depth > max_depth:
                return True
        elif char in ("}", "]"):
            depth -= 1
    return False
