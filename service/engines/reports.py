"""Canary reports: the stored shape and the query types.

The canary engine (a later issue) produces reports; this module defines what a report is and
how queries over reports are validated.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from costsim_analytics.engines.errors import InvalidArgument

CANARY_STATUSES = ("pass", "fail", "error", "skipped")


@dataclass(frozen=True, slots=True)
class CanaryReport:
    """One canary run's verdict and metrics (table ``costsim_canary_reports``)."""

    run_id: str
    timestamp: datetime
    status: str
    total_samples: int
    matching_samples: int
    minor_drift_samples: int
    major_drift_samples: int
    median_cost_diff: float | None
    p90_cost_diff: float | None
    kl_divergence: float | None
    outlier_count: int
    passed: bool
    failure_reasons: tuple[str, ...] = ()
    artifact_paths: tuple[str, ...] = ()
    golden_comparison: dict[str, Any] | None = None
    # Set by storage.
    id: int = 0
    created_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class ReportFilter:
    """Filters of QueryCanaryReports; empty status and None match everything."""

    status: str = ""
    passed: bool | None = None
    start_time: datetime | None = None
    end_time: datetime | None = None

    def as_dict(self) -> dict[str, object]:
        """The filters by name, for fingerprints."""
        return {
            "status": self.status,
            "passed": self.passed,
            "start_time": self.start_time,
            "end_time": self.end_time,
        }


@dataclass(frozen=True, slots=True)
class ReportQuery:
    """The QueryCanaryReports command."""

    filter: ReportFilter = field(default_factory=ReportFilter)
    page_size: int = 0
    page_token: str = ""


def validate_run_id(run_id: str) -> None:
    """A report lookup needs a non-empty run id of sane length."""
    if not run_id:
        raise InvalidArgument.field("run_id", "must not be empty")
    if len(run_id) > 256:
        raise InvalidArgument.field("run_id", "must be at most 256 characters")


def validate_report_filter(flt: ReportFilter) -> None:
    """Reject a status that no report can have."""
    if flt.status and flt.status not in CANARY_STATUSES:
        raise InvalidArgument.field("status", f"must be one of {list(CANARY_STATUSES)}")
