"""Idempotency keys: the one rule for a ``request_id`` and what is stored under it.

A caller that sets ``request_id`` on a write may retry it: the first request does the work, a
retry with the same content gets the first answer again (``replayed``), and a different request
under a used key is refused (:class:`~costsim_analytics.engines.errors.RequestIdReused`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from costsim_analytics.engines.errors import InvalidArgument
from costsim_analytics.engines.text import text_problem

MAX_REQUEST_ID_CHARS = 128


@dataclass(frozen=True, slots=True)
class StoredRequest:
    """An earlier request with the same key: its digest and its answer (None: not yet)."""

    request_hash: str
    response: dict[str, Any] | None


def validate_request_id(request_id: str) -> None:
    """Reject an idempotency key longer than 128 characters.

    Example:
        >>> validate_request_id("batch-0001")

    """
    if len(request_id) > MAX_REQUEST_ID_CHARS:
        raise InvalidArgument.field(
            "request_id", f"must be at most {MAX_REQUEST_ID_CHARS} characters"
        )
    problem = text_problem(request_id)
    if problem is not None:
        raise InvalidArgument.field("request_id", problem)
