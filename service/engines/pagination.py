"""Keyset page tokens bound to the filters they were issued for.

A token names the last row a caller received, as its ``(timestamp, id)`` sort key, plus a
fingerprint of the query's filters. Resuming with it continues strictly after that row, so a
broken stream resumes with no gap and no duplicate, and it costs the same at any depth (no
OFFSET). Reusing a token with different filters is an error rather than a silent jump.

Example:
    >>> from datetime import datetime, UTC
    >>> fp = filter_fingerprint("reports", {"status": "fail"})
    >>> token = encode_token("reports", fp, Cursor(datetime(2026, 1, 1, tzinfo=UTC), 7))
    >>> decode_token(token, "reports", fp).id
    7

"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from costsim_analytics.engines.canonical import canonical_json, sha256_hex
from costsim_analytics.engines.errors import FieldViolation, InvalidArgument

TOKEN_VERSION = 2
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 10_000
# Row ids are BIGINT (signed 64 bits); a token naming a larger one is forged.
MAX_ROW_ID = 2**63 - 1
# The instants a datetime (and so every backend here) can hold: 0001-01-01 to 9999-12-31 UTC.
MIN_EPOCH_SECONDS = int((datetime(1, 1, 1, tzinfo=UTC) - _EPOCH).total_seconds())
MAX_EPOCH_SECONDS = int((datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC) - _EPOCH).total_seconds())


@dataclass(frozen=True, slots=True)
class Cursor:
    """The sort key of the last row delivered: results continue strictly after it."""

    timestamp: datetime
    id: int


def filter_fingerprint(kind: str, filters: Mapping[str, object]) -> str:
    """A short stable digest of a query's filters (page size and token excluded)."""
    normal = {
        key: value.isoformat() if isinstance(value, datetime) else value
        for key, value in filters.items()
    }
    return sha256_hex(canonical_json({"kind": kind, "filters": normal}))[:16]


def _micros(ts: datetime) -> int:
    delta = ts - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def encode_token(kind: str, fingerprint: str, cursor: Cursor) -> str:
    """Encode an opaque, URL-safe page token.

    The body is ``version|kind|fingerprint|microseconds since the epoch|id``: plain string
    formatting, because a stream makes one token per message.
    """
    raw = f"{TOKEN_VERSION}|{kind}|{fingerprint}|{_micros(cursor.timestamp)}|{cursor.id}"
    return base64.urlsafe_b64encode(raw.encode()).rstrip(b"=").decode()


def _bad_token(description: str) -> InvalidArgument:
    return InvalidArgument(
        f"page_token: {description}",
        [FieldViolation("page_token", description)],
        reason="INVALID_PAGE_TOKEN",
    )


def decode_token(token: str, kind: str, fingerprint: str) -> Cursor:
    """Decode a token issued by :func:`encode_token` for the same query.

    Raises:
        InvalidArgument: the token is malformed, or was issued for other filters.
    """
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode()
        version, kind_, fp, micros, row_id = raw.split("|")
        if version != str(TOKEN_VERSION):
            raise ValueError("unknown token version")
        timestamp = _EPOCH + timedelta(microseconds=int(micros))
        cursor = Cursor(timestamp, int(row_id))
        if not 0 <= cursor.id <= MAX_ROW_ID:
            raise ValueError("row id out of range")
    except (ValueError, OverflowError, binascii.Error, UnicodeDecodeError) as exc:
        raise _bad_token("malformed page token") from exc
    if kind_ != kind or fp != fingerprint:
        raise _bad_token("page token was issued for a different query; resend the same filters")
    return cursor


def resolve_page_size(
    requested: int, default: int = DEFAULT_PAGE_SIZE, maximum: int = MAX_PAGE_SIZE
) -> int:
    """0 means the default; above the maximum is lowered to it; negative is an error."""
    if requested < 0:
        raise InvalidArgument.field("page_size", "must not be negative")
    if requested == 0:
        return default
    return min(requested, maximum)


def check_instant(seconds: int, nanos: int, field: str) -> None:
    """Reject a ``google.protobuf.Timestamp``-shaped instant no datetime or database can hold.

    Raises:
        InvalidArgument: naming ``field``, for seconds outside 0001-01-01..9999-12-31 UTC or
            nanos outside 0..999,999,999.

    Example:
        >>> check_instant(0, 0, "start_time")

    """
    if not MIN_EPOCH_SECONDS <= seconds <= MAX_EPOCH_SECONDS:
        raise InvalidArgument.field(field, "must lie between 0001-01-01 and 9999-12-31 UTC")
    if not 0 <= nanos <= 999_999_999:
        raise InvalidArgument.field(field, "nanos must be between 0 and 999,999,999")


def check_window(start: datetime | None, end: datetime | None) -> None:
    """Reject a time window whose start lies after its end."""
    if start is not None and end is not None and start > end:
        raise InvalidArgument(
            "start_time must not be after end_time",
            [
                FieldViolation("start_time", "must not be after end_time"),
                FieldViolation("end_time", "must not be before start_time"),
            ],
            reason="INVALID_TIME_WINDOW",
        )
