"""What handlers need from storage, as Protocols: SQL drivers and test fakes both fit."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from datetime import datetime
from types import TracebackType
from typing import Any, Protocol, Self

from costsim_analytics.engines.drift import DriftStats, DriftStatsQuery
from costsim_analytics.engines.golden.datasets import GoldenDataset, GoldenSample, NewGoldenDataset
from costsim_analytics.engines.idempotency import StoredRequest
from costsim_analytics.engines.pagination import Cursor
from costsim_analytics.engines.provenance import NewProvenance, ProvenanceFilter, ProvenanceRecord
from costsim_analytics.engines.reports import ArtifactRef, CanaryReport, ReportFilter
from costsim_analytics.engines.retention import ProvenanceRemoval


class ProvenanceStore(Protocol):
    """Provenance rows."""

    def insert_batch(self, rows: Sequence[NewProvenance]) -> list[int]:
        """Insert rows, return ids in order."""

    def stream(
        self, flt: ProvenanceFilter, after: Cursor | None, limit: int, chunk_size: int = ...
    ) -> Iterator[list[ProvenanceRecord]]:
        """Yield matching records newest first, in chunks."""

    def drift_stats(self, query: DriftStatsQuery) -> DriftStats:
        """Aggregate cost_delta."""

    def sample_candidates(self, since: datetime, limit: int) -> list[int]:
        """Ids of the newest ``limit`` successful records with a plan input since ``since``."""

    def plan_inputs(self, ids: Sequence[int], chunk_size: int = ...) -> dict[int, Any]:
        """Plan inputs by record id."""

    def remove_before(self, cutoff: datetime, *, dry_run: bool = ...) -> ProvenanceRemoval:
        """Drop/delete provenance older than the cutoff."""


class CanaryReportStore(Protocol):
    """Canary report rows."""

    def add(self, report: CanaryReport, now: datetime | None = None) -> int:
        """Insert one report."""

    def get_by_run_id(self, run_id: str) -> CanaryReport | None:
        """One report or None."""

    def run_ids_before(self, cutoff: datetime, limit: int = ...) -> list[str]:
        """Run ids of reports older than the cutoff."""

    def delete_runs(self, run_ids: Sequence[str]) -> int:
        """Delete these reports."""

    def stream(
        self, flt: ReportFilter, after: Cursor | None, limit: int, chunk_size: int = ...
    ) -> Iterator[list[CanaryReport]]:
        """Yield matching reports newest first, in chunks."""


class IdempotencyStore(Protocol):
    """Idempotency keys."""

    def claim(
        self, operation: str, request_id: str, request_hash: str, now: datetime
    ) -> StoredRequest | None:
        """Claim a key or return the earlier request."""

    def get(self, operation: str, request_id: str) -> StoredRequest | None:
        """The stored request for a key, or None."""

    def delete_before(self, cutoff: datetime, *, dry_run: bool = ...) -> int:
        """Forget keys stored before the cutoff."""

    def complete(self, operation: str, request_id: str, response: dict[str, Any]) -> None:
        """Store the answer of a claimed key."""


class GoldenStore(Protocol):
    """Golden dataset versions and their samples."""

    def create(self, new: NewGoldenDataset, now: datetime) -> GoldenDataset:
        """Store the next version of a name; AlreadyExists for the same content."""

    def get(self, name: str, version: int | None = None) -> GoldenDataset | None:
        """One version (None: the active one), without samples."""

    def samples(self, dataset_id: int) -> tuple[GoldenSample, ...]:
        """The samples of one version, sorted by id."""

    def list_versions(self, name: str = "") -> list[GoldenDataset]:
        """Every version, by name then version."""

    def activate(self, name: str, version: int) -> GoldenDataset | None:
        """Make one version the active one of its name."""


class PartitionStore(Protocol):
    """Monthly provenance partitions (a no-op where the table is not partitioned)."""

    def ensure(self, now: datetime) -> list[str]:
        """Create this month's and the coming months' partitions; return the new ones."""


class UnitOfWork(Protocol):
    """One transaction. Leaving the ``with`` block without :meth:`commit` rolls back."""

    @property
    def provenance(self) -> ProvenanceStore:
        """Provenance rows in this transaction."""

    @property
    def reports(self) -> CanaryReportStore:
        """Canary reports in this transaction."""

    @property
    def idempotency(self) -> IdempotencyStore:
        """Idempotency keys in this transaction."""

    @property
    def golden(self) -> GoldenStore:
        """Golden datasets in this transaction."""

    @property
    def partitions(self) -> PartitionStore:
        """Provenance partitions in this transaction."""

    def __enter__(self) -> Self:
        """Begin."""

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Roll back unless committed, release the connection."""

    def commit(self) -> None:
        """Commit."""


class UnitOfWorkFactory(Protocol):
    """Makes a unit of work; ``read_only`` ones refuse every write."""

    def __call__(self, *, read_only: bool = False) -> UnitOfWork:
        """A new, not yet entered, unit of work."""


class ArtifactStore(Protocol):
    """Where canary runs keep their artifacts, one folder (key prefix) per run id.

    Implementations: ``drivers/artifacts`` (a local directory, an S3-compatible object store).
    Every method raises ``ArtifactStoreUnavailable`` (``engines/errors.py``) when the store does
    not answer, and ``OSError`` when it refuses (``FileNotFoundError``: no such artifact).
    """

    @property
    def location(self) -> str:
        """Where the artifacts are, for logs (a directory, ``s3://bucket/prefix``)."""

    def save(self, run_id: str, files: Mapping[str, bytes]) -> tuple[ArtifactRef, ...]:
        """Write files atomically, in order, verified; return their references."""

    def runs(self) -> Iterator[str]:
        """Run ids that have a report artifact."""

    def read(self, run_id: str, name: str) -> bytes:
        """One artifact's bytes (OSError when missing)."""

    def remove(self, run_id: str) -> bool:
        """Delete a run's folder; False when there was none."""

    def ref(self, run_id: str, name: str) -> ArtifactRef:
        """The reference (path, checksum, size) of a stored artifact."""

    def verify(self, ref: ArtifactRef) -> bool:
        """Whether the artifact still matches its checksum."""


class RunLock(Protocol):
    """The one-canary-at-a-time lock (across processes and replicas)."""

    def acquire(self, timeout_s: float) -> bool:
        """Take the lock within ``timeout_s``; False when another holder keeps it."""

    def release(self) -> None:
        """Give the lock back."""
