r"""Canonical JSON and the SHA-256 hashes of provenance inputs and outputs.

The canonical form is ``json.dumps(value, sort_keys=True, separators=(",", ":"))`` (ASCII only,
as Python escapes it) after every whole number has been written as an integer. The last rule
exists because ``google.protobuf.Struct`` carries every number as a double: ``1000`` arrives as
``1000.0`` and must still hash as ``1000``, so that a caller hashing its own dict gets the same
hash as the service.

Example:
    >>> canonical_json({"b": 1000.0, "a": [1.5, "é"]})
    '{"a":[1.5,"\\u00e9"],"b":1000}'

"""

from __future__ import annotations

import hashlib
import json
import math
from typing import Any

JsonValue = Any  # a str, number, bool, None, list of JsonValue or dict[str, JsonValue]

# Beyond 2**53 not every integer is a double, so a "whole" double there is not an exact integer
# the caller could have meant; it stays a float.
_MAX_EXACT_INT = 2**53


def normalize_numbers(value: JsonValue) -> JsonValue:
    """Return ``value`` with every whole float replaced by the equal int.

    Raises:
        ValueError: if ``value`` holds NaN or an infinity (JSON has no spelling for them).

    """
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError("numbers must be finite")
        if value.is_integer() and abs(value) <= _MAX_EXACT_INT:
            return int(value)
        return value
    if isinstance(value, dict):
        return {key: normalize_numbers(item) for key, item in value.items()}
    if isinstance(value, list):
        return [normalize_numbers(item) for item in value]
    return value


def dumps(value: JsonValue) -> str:
    """Serialise an already normalised value canonically."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), allow_nan=False)


def canonical_json(value: JsonValue) -> str:
    """Normalise numbers, then serialise canonically."""
    return dumps(normalize_numbers(value))


def sha256_hex(text: str) -> str:
    """SHA-256 of the UTF-8 text, as 64 lowercase hex digits."""
    return hashlib.sha256(text.encode()).hexdigest()


def content_hash(value: JsonValue) -> str:
    """SHA-256 hex of the canonical JSON of ``value``.

    Example:
        >>> content_hash({"budget_cents": 1000.0}) == content_hash({"budget_cents": 1000})
        True

    """
    return sha256_hex(canonical_json(value))
