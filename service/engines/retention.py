"""Retention: how old data may get before ``costsim-analytics retention`` removes it.

Provenance goes a whole month partition at a time on PostgreSQL (a partition is dropped once
its last day is older than the cutoff, so up to a month more than asked for is kept); on SQLite
old rows are deleted. Canary reports older than their cutoff are deleted with their artifact
folders, artifacts first: if the run stops half-way, a second run finishes the job, and a
reconcile can never bring back a report whose row was deleted.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta

from costsim_analytics.engines.errors import FieldViolation, InvalidArgument

_DAYS = ("provenance_days", "reports_days", "idempotency_days")


@dataclass(frozen=True, slots=True)
class RetentionPolicy:
    """Days to keep, per kind of data; None keeps everything of that kind."""

    provenance_days: int | None = None
    reports_days: int | None = None
    idempotency_days: int | None = None
    dry_run: bool = False

    def cutoff(self, now: datetime, days: int | None) -> datetime | None:
        """The instant before which data of a kind kept ``days`` days goes."""
        return None if days is None else now - timedelta(days=days)


@dataclass(frozen=True, slots=True)
class ProvenanceRemoval:
    """What one pass over provenance removed: whole partitions, rows, partitions deferred."""

    partitions: tuple[tuple[str, int], ...] = ()
    rows_deleted: int = 0
    deferred: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class RetentionResult:
    """What a retention pass removed (or, in a dry run, would remove)."""

    dry_run: bool
    provenance_partitions: tuple[tuple[str, int], ...] = ()
    provenance_rows_deleted: int = 0
    # Partitions left for the next pass: a reader held them past the DDL lock timeout.
    provenance_partitions_deferred: tuple[str, ...] = ()
    reports_deleted: tuple[str, ...] = ()
    artifact_dirs_removed: int = 0
    idempotency_keys_deleted: int = 0
    cutoffs: dict[str, str] = field(default_factory=dict)


def validate(policy: RetentionPolicy) -> None:
    """Every given number of days must be at least 1 (0 would delete everything)."""
    days = {name: getattr(policy, name) for name in _DAYS}
    bad = [
        FieldViolation(name, "must be at least 1 day")
        for name, value in days.items()
        if value is not None and value < 1
    ]
    if bad:
        raise InvalidArgument(f"{bad[0].field}: {bad[0].description}", bad)
    if all(value is None for value in days.values()):
        raise InvalidArgument.field(
            "provenance_days", "name at least one of provenance, reports or idempotency days"
        )
