"""Drift statistics over stored provenance: definitions shared by every storage backend.

``cost_delta`` is ``v2_cost - v1_cost``. Statistics cover the matching records that have one:

- ``stddev_delta`` is the sample standard deviation (divisor n - 1); 0 for fewer than 2 records.
- ``p50_delta`` and ``p90_delta`` interpolate linearly between closest ranks: for sorted values
  x[0..n-1], position h = p * (n - 1), value x[floor(h)] + (h - floor(h)) * (x[floor(h)+1] -
  x[floor(h)]). This is PostgreSQL's ``percentile_cont`` and numpy's default ``linear`` method
  (Hyndman & Fan 1996, definition 7).
- With no matching records every statistic is 0 and ``total`` is 0.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from costsim_analytics.engines.errors import InvalidArgument
from costsim_analytics.engines.pagination import check_window
from costsim_analytics.engines.provenance import MAX_STRING_CHARS, VARIANT_SLUGS
from costsim_analytics.engines.text import text_problem


@dataclass(frozen=True, slots=True)
class DriftStatsQuery:
    """The GetDriftStats command."""

    tenant_id: str = ""
    variant_slug: str = ""
    start_time: datetime | None = None
    end_time: datetime | None = None
    # The tenants the caller may read (None: all), set by the handler from the principal.
    tenant_scope: tuple[str, ...] | None = None


@dataclass(frozen=True, slots=True)
class DriftStats:
    """Summary of ``cost_delta`` over the matching records."""

    total: int = 0
    avg_delta: float = 0.0
    min_delta: float = 0.0
    max_delta: float = 0.0
    stddev_delta: float = 0.0
    p50_delta: float = 0.0
    p90_delta: float = 0.0


def validate_drift_query(query: DriftStatsQuery) -> None:
    """Reject an unknown variant, a tenant that no record can have and an inverted window."""
    if len(query.tenant_id) > MAX_STRING_CHARS:
        raise InvalidArgument.field("tenant_id", f"must be at most {MAX_STRING_CHARS} chars")
    problem = text_problem(query.tenant_id)
    if problem is not None:
        raise InvalidArgument.field("tenant_id", problem)
    if query.variant_slug and query.variant_slug not in VARIANT_SLUGS:
        raise InvalidArgument.field("variant_slug", f"must be one of {sorted(VARIANT_SLUGS)}")
    check_window(query.start_time, query.end_time)
