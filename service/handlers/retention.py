"""The data's lifecycle: partitions made ahead of time; retention drops old data."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime

from costsim_analytics.engines.maintenance import UpkeepResult
from costsim_analytics.engines.retention import (
    ProvenanceRemoval,
    RetentionPolicy,
    RetentionResult,
    validate,
)
from costsim_analytics.handlers.call import Call, Clock, utc_now
from costsim_analytics.handlers.ports import ArtifactStore, UnitOfWorkFactory

log = logging.getLogger(__name__)
REPORT_CHUNK = 1000


@dataclass
class PartitionUpkeepHandler:
    """Create this month's and the coming months' provenance partitions (PostgreSQL).

    Run by ``migrate`` and by the server once an hour; inserts never depend on it, since the
    default partition takes any row.
    """

    uow_factory: UnitOfWorkFactory
    clock: Clock = utc_now

    def __call__(self, _command: None, _call: Call, /) -> UpkeepResult:
        """The partitions created (none when they all exist, or on SQLite)."""
        with self.uow_factory() as uow:
            created = uow.partitions.ensure(self.clock())
            uow.commit()
        if created:
            log.info("created provenance partitions: %s", ", ".join(created))
        return UpkeepResult(tuple(created))


@dataclass
class RetentionHandler:
    """One retention pass; each kind of data in its own transaction(s)."""

    uow_factory: UnitOfWorkFactory
    artifacts: ArtifactStore
    clock: Clock = utc_now

    def __call__(self, policy: RetentionPolicy, _call: Call, /) -> RetentionResult:
        """Remove (or, with ``dry_run``, count) what the policy says is too old."""
        validate(policy)
        now = self.clock()
        dry = policy.dry_run
        cutoffs: dict[str, str] = {}
        provenance = ProvenanceRemoval()
        keys = removed_dirs = 0
        reports: list[str] = []

        if (cutoff := policy.cutoff(now, policy.provenance_days)) is not None:
            cutoffs["provenance"] = cutoff.isoformat()
            with self.uow_factory(read_only=dry) as uow:
                provenance = uow.provenance.remove_before(cutoff, dry_run=dry)
                uow.commit()
        if (cutoff := policy.cutoff(now, policy.reports_days)) is not None:
            cutoffs["reports"] = cutoff.isoformat()
            reports, removed_dirs = self._reports(cutoff, dry)
        if (cutoff := policy.cutoff(now, policy.idempotency_days)) is not None:
            cutoffs["idempotency"] = cutoff.isoformat()
            with self.uow_factory(read_only=dry) as uow:
                keys = uow.idempotency.delete_before(cutoff, dry_run=dry)
                uow.commit()
        result = RetentionResult(
            dry_run=dry,
            provenance_partitions=provenance.partitions,
            provenance_rows_deleted=provenance.rows_deleted,
            provenance_partitions_deferred=provenance.deferred,
            reports_deleted=tuple(reports),
            artifact_dirs_removed=removed_dirs,
            idempotency_keys_deleted=keys,
            cutoffs=cutoffs,
        )
        log.info("retention%s: %s", " (dry run)" if dry else "", result)
        return result

    def _reports(self, cutoff: datetime, dry: bool) -> tuple[list[str], int]:
        """Artifacts first, then rows, a chunk at a time (see engines/retention.py)."""
        if dry:
            with self.uow_factory(read_only=True) as uow:
                return uow.reports.run_ids_before(cutoff, limit=2**31 - 1), 0
        deleted: list[str] = []
        removed = 0
        while True:
            with self.uow_factory(read_only=True) as uow:
                chunk = uow.reports.run_ids_before(cutoff, REPORT_CHUNK)
            if not chunk:
                return deleted, removed
            removed += sum(self.artifacts.remove(run_id) for run_id in chunk)
            with self.uow_factory() as uow:
                uow.reports.delete_runs(chunk)
                uow.commit()
            deleted += chunk
