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
import re
from typing import Any

try:  # optional (the ``fast`` extra, and the server): the same bytes, several times faster
    import orjson
except ImportError:  # a client installed without the extra: the json module does it all
    orjson = None  # type: ignore[assignment]

__all__ = [
    "JsonValue",
    "canonical_json",
    "content_hash",
    "dumps",
    "dumps_by_key",
    "dumps_by_key_if_normal",
    "loads",
    "loads_plain",
    "normalize_numbers",
    "orjson",
    "sha256_hex",
    "whole_or_float",
]

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
        return whole_or_float(value)
    if isinstance(value, dict):
        return {key: normalize_numbers(item) for key, item in value.items()}
    if isinstance(value, list):
        return [normalize_numbers(item) for item in value]
    return value


def whole_or_float(number: str | float) -> int | float:
    """``number`` as a float, or as the equal int when it is whole and exact (finite only)."""
    value = float(number)
    if not math.isfinite(value):
        raise ValueError("numbers must be finite")
    if value.is_integer() and abs(value) <= _MAX_EXACT_INT:
        return int(value)
    return value


def _no_constants(name: str) -> float:
    raise ValueError(f"numbers must be finite, not {name}")


# Whole numbers become ints while the C parser reads them: no second walk over the tree.
_DECODER = json.JSONDecoder(parse_float=whole_or_float, parse_constant=_no_constants)


def loads(text: str) -> JsonValue:
    """Parse JSON text straight into normalised form (whole numbers as ints).

    Raises:
        ValueError: the text is not JSON, or holds NaN or an infinity.

    Example:
        >>> loads('{"budget_cents": 1000.0, "x": 0.5}')
        {'budget_cents': 1000, 'x': 0.5}
    """
    return _DECODER.decode(text)


_PLAIN_DECODER = json.JSONDecoder(parse_constant=_no_constants)


# Digits to "9", the rest as they are: a run of 19 nines in the result is a run of 19 digits.
_NINES = bytes.maketrans(b"012345678", b"999999999")
_LONG_RUN = b"9" * 19


def loads_plain(text: str) -> JsonValue:
    """Parse JSON text as is (floats stay floats), refusing NaN and infinities.

    orjson parses it when it can give exactly what json gives: it refuses all that json
    refuses here and more (lone surrogate escapes, numbers beyond a double), and then json
    answers, with its own error; it reads an integer beyond 64 bits as a float, so a text
    with 19 digits in a row is json's too.

    Raises:
        ValueError: the text is not JSON, or holds NaN or Infinity.
    """
    if orjson is not None and _LONG_RUN not in text.encode(errors="surrogatepass").translate(
        _NINES
    ):
        try:
            return orjson.loads(text)
        except orjson.JSONDecodeError:
            pass  # json's own answer and message, below
    return _PLAIN_DECODER.decode(text)


def dumps_by_key(obj: dict[str, JsonValue], *, plain: bool = False) -> tuple[str, dict[str, str]]:
    """Serialise an object canonically, and each of its values on its own, in one pass.

    The first result equals ``dumps(obj)``; the second maps each key to ``dumps(obj[key])``,
    so hashing a part needs no second serialisation. ``plain``: ``obj`` holds only what a
    JSON parser or the Struct converter makes (dicts, lists, str, int, float, bool, None).
    """
    fast = _fast_by_key(obj, plain=plain)
    if fast is not None:
        return fast
    parts = {key: _ENCODER.encode(value) for key, value in obj.items()}
    body = ",".join(f"{_encode_key(key)}:{parts[key]}" for key in sorted(parts))
    return "{" + body + "}", parts


# Built once: json.dumps with non-default options constructs a new encoder on every call.
_ENCODER = json.JSONEncoder(sort_keys=True, separators=(",", ":"), allow_nan=False)
_encode_key = json.encoder.encode_basestring_ascii

# orjson, where it writes exactly what the encoder above writes. Every type it serialises that
# json refuses either goes to the fallback (subclasses, datetimes, dataclasses: passed through
# to no ``default``, so TypeError) or is caught by the round trip (UUID, Enum: they come back
# as something unequal). Its output differs from ``json`` in three ways only: non-ASCII is
# written raw (json escapes it), DEL (0x7f) raw (json escapes it), and floats of decimal
# exponent -5 to -9 ("0.0000650..." and "6.3e-8" where json writes "6.5e-05" and "6.3e-08");
# NaN and infinities become ``null`` (json raises), which the round trip catches. Any output
# showing one of these goes to the fallback (a string that merely looks like one, "claude-5",
# costs only the time). tests/unit/test_canonical.py checks the equality with hypothesis.
_ORJSON_OPTIONS = (
    0
    if orjson is None
    else orjson.OPT_SORT_KEYS
    | orjson.OPT_PASSTHROUGH_SUBCLASS
    | orjson.OPT_PASSTHROUGH_DATETIME
    | orjson.OPT_PASSTHROUGH_DATACLASS
)
_NEGATIVE_EXPONENTS = ("e-5", "e-6", "e-7", "e-8", "e-9")


def _same_as_json(text: str) -> bool:
    """Whether orjson's ``text`` shows none of the ways it differs from the json module."""
    if not text.isascii() or "\x7f" in text or "0.0000" in text:
        return False
    return "e-" not in text or not any(e in text for e in _NEGATIVE_EXPONENTS)


def _fast(value: JsonValue, *, plain: bool) -> str | None:
    """``_ENCODER.encode(value)`` through orjson, or None when the fallback must decide.

    ``plain``: ``value`` is known to hold only dicts with str keys, lists, str, int, float,
    bool and None (a parser's or a converter's output), so no round trip is needed.
    """
    if orjson is None:
        return None
    try:
        text = orjson.dumps(value, option=_ORJSON_OPTIONS).decode()
    except (TypeError, ValueError):  # orjson.JSONEncodeError is a TypeError
        return None
    if not _same_as_json(text) or not _round_trips(text, value, plain=plain):
        return None
    return text


def _round_trips(text: str, value: JsonValue, *, plain: bool) -> bool:
    # NaN and infinities come out as null: a plain value holding a null is checked too.
    if not plain or "null" in text:
        return bool(orjson.loads(text) == value)
    return True


def _fast_by_key(obj: dict[str, JsonValue], *, plain: bool) -> tuple[str, dict[str, str]] | None:
    """:func:`dumps_by_key` through orjson (each part dumped, the whole checked once), or None."""
    if orjson is None or not all(type(key) is str for key in obj):
        return None
    try:
        parts = {
            key: orjson.dumps(value, option=_ORJSON_OPTIONS).decode() for key, value in obj.items()
        }
    except (TypeError, ValueError):
        return None
    body = "{" + ",".join(f"{_encode_key(key)}:{parts[key]}" for key in sorted(parts)) + "}"
    if not _same_as_json(body) or not _round_trips(body, obj, plain=plain):
        return None
    return body, parts


def _encode(value: JsonValue) -> str:
    """The canonical encoder's text of any value (what it refuses raises as it does)."""
    fast = _fast(value, plain=False)
    return fast if fast is not None else _ENCODER.encode(value)


# Within 2**53, ``repr`` spells every whole float as digits then ".0" (it turns exponential only
# from 1e16): a text without ".0" ending a number holds no float that normalising would change.
_WHOLE_FLOAT = re.compile(r"\.0(?![0-9])")


def dumps_by_key_if_normal(obj: dict[str, JsonValue]) -> tuple[str, dict[str, str]] | None:
    """``dumps_by_key(normalize_numbers(obj))`` without the walk, or None when it is needed.

    None also when ``obj`` cannot be serialised as it is (a non-string key at the top, NaN, a
    value with no JSON form, a cycle, nesting the encoder refuses), so that the caller's own
    path says what is wrong. A text that merely looks like it holds a whole float (``"v1.0"``
    in a string) gives None too: the walk then decides, and nothing differs but the time.

    Example:
        >>> dumps_by_key_if_normal({"b": [0.5, "x"], "a": 1})[0]
        '{"a":1,"b":[0.5,"x"]}'
        >>> dumps_by_key_if_normal({"a": 1.0}) is None
        True
    """
    fast = _fast_by_key(obj, plain=False)
    if fast is not None:
        body, parts = fast
    else:
        try:
            parts = {key: _ENCODER.encode(value) for key, value in obj.items()}
            body = "{" + ",".join(f"{_encode_key(key)}:{parts[key]}" for key in sorted(parts)) + "}"
        except (TypeError, ValueError, RecursionError):
            return None
    if _WHOLE_FLOAT.search(body):
        return None
    return body, parts


def dumps(value: JsonValue) -> str:
    """Serialise an already normalised value canonically."""
    return _encode(value)


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
