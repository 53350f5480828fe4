"""In-memory stand-ins for the storage Protocols of ``handlers/ports.py`` (no inheritance).

``FakeStore()`` is a :class:`UnitOfWorkFactory`. Its units of work share the fake stores, snapshot
every one of them on ``__enter__`` and restore the snapshot on an exit without ``commit``, so a
test can prove that a failed handler wrote nothing. A read-only unit of work refuses ``commit``
and every write made while it is the innermost open one (:class:`ReadOnlyWrite`); writes made
outside any unit of work (a test seeding data) are allowed.

``events`` journals, in order, what reached storage (``reports.add <run>``, ``commit``,
``rollback``); pass the same list to :class:`FakeArtifactStore` to see artifact writes in the
same journal.

:func:`_conformance` at the bottom makes mypy check every fake against its Protocol.
"""

from __future__ import annotations

import errno
import hashlib
import math
import statistics
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any, Protocol, Self

from costsim_analytics.drivers.partitions import (
    MONTHS_AHEAD,
    add_months,
    month_start,
    partition_for,
)
from costsim_analytics.engines import statistics as st
from costsim_analytics.engines.canary.evaluation import REPORT_FILE
from costsim_analytics.engines.drift import DriftStats, DriftStatsQuery
from costsim_analytics.engines.errors import AlreadyExists, DatabaseUnavailable
from costsim_analytics.engines.golden.datasets import GoldenDataset, GoldenSample, NewGoldenDataset
from costsim_analytics.engines.idempotency import StoredRequest
from costsim_analytics.engines.pagination import Cursor
from costsim_analytics.engines.provenance import NewProvenance, ProvenanceFilter, ProvenanceRecord
from costsim_analytics.engines.reports import ArtifactRef, CanaryReport, ReportFilter
from costsim_analytics.engines.retention import ProvenanceRemoval
from costsim_analytics.handlers.ports import (
    ArtifactStore,
    CanaryReportStore,
    GoldenStore,
    IdempotencyStore,
    PartitionStore,
    ProvenanceStore,
    RunLock,
    UnitOfWork,
    UnitOfWorkFactory,
)


class ReadOnlyWrite(Exception):
    """A write (or commit) was attempted in a read-only unit of work."""


@dataclass
class Guard:
    """The stack of open units of work; writes are refused while the innermost is read-only."""

    open: list[FakeUnitOfWork] = field(default_factory=list)

    def write(self, what: str) -> None:
        """Raise :class:`ReadOnlyWrite` when the innermost open unit of work is read-only."""
        if self.open and self.open[-1].read_only:
            raise ReadOnlyWrite(f"{what} in a read-only unit of work")


class _Snapshotting(Protocol):
    def snapshot(self) -> object: ...

    def restore(self, state: Any) -> None: ...


def _chunks(rows: list[Any], chunk_size: int) -> Iterator[list[Any]]:
    for i in range(0, len(rows), chunk_size):
        yield rows[i : i + chunk_size]


# --- provenance --------------------------------------------------------------------------------


def _matches(flt: ProvenanceFilter, r: ProvenanceRecord) -> bool:
    for name in ("tenant_id", "variant_slug", "source", "input_hash", "run_id"):
        value = getattr(flt, name)
        if value and getattr(r, name) != value:
            return False
    if flt.start_time is not None and r.created_at < flt.start_time:
        return False
    return flt.end_time is None or r.created_at < flt.end_time


@dataclass
class FakeProvenance:
    """``rows`` is the table; ``inserted`` every NewProvenance written by ``insert_batch``."""

    rows: list[ProvenanceRecord] = field(default_factory=list)
    inserted: list[NewProvenance] = field(default_factory=list)
    guard: Guard = field(default_factory=Guard)

    def insert_batch(self, rows: Sequence[NewProvenance]) -> list[int]:
        self.guard.write("provenance.insert_batch")
        start = max((r.id for r in self.rows), default=0) + 1
        ids = list(range(start, start + len(rows)))
        self.inserted.extend(rows)
        for row_id, row in zip(ids, rows, strict=True):
            self.rows.append(
                ProvenanceRecord(
                    id=row_id,
                    run_id=row.run_id,
                    tenant_id=row.tenant_id,
                    variant_slug=row.variant_slug,
                    source=row.source,
                    model_version=row.model_version,
                    adapter_version=row.adapter_version,
                    commit_sha=row.commit_sha,
                    input_hash=row.input_hash,
                    output_hash=row.output_hash,
                    v1_cost=row.v1_cost,
                    v2_cost=row.v2_cost,
                    cost_delta=row.cost_delta,
                    payload=row.payload,
                    runtime_ms=row.runtime_ms,
                    created_at=row.created_at,
                )
            )
        return ids

    def stream(
        self, flt: ProvenanceFilter, after: Cursor | None, limit: int, chunk_size: int = 500
    ) -> Iterator[list[ProvenanceRecord]]:
        rows = sorted(
            (r for r in self.rows if _matches(flt, r)),
            key=lambda r: (r.created_at, r.id),
            reverse=True,
        )
        if after is not None:
            rows = [r for r in rows if (r.created_at, r.id) < (after.timestamp, after.id)]
        yield from _chunks(rows[:limit], chunk_size)

    def drift_stats(self, query: DriftStatsQuery) -> DriftStats:
        flt = ProvenanceFilter(
            tenant_id=query.tenant_id,
            variant_slug=query.variant_slug,
            start_time=query.start_time,
            end_time=query.end_time,
        )
        deltas = sorted(
            r.cost_delta for r in self.rows if r.cost_delta is not None and _matches(flt, r)
        )
        if not deltas:
            return DriftStats()
        return DriftStats(
            total=len(deltas),
            avg_delta=math.fsum(deltas) / len(deltas),
            min_delta=deltas[0],
            max_delta=deltas[-1],
            stddev_delta=statistics.stdev(deltas) if len(deltas) > 1 else 0.0,
            p50_delta=st.percentile(deltas, 50),
            p90_delta=st.percentile(deltas, 90),
        )

    def sample_candidates(self, since: datetime, limit: int) -> list[int]:
        newest = sorted(
            (
                r
                for r in self.rows
                if r.created_at >= since
                and r.payload.get("status") == "success"
                and r.payload.get("input") is not None
            ),
            key=lambda r: (r.created_at, r.id),
            reverse=True,
        )
        return sorted(r.id for r in newest[:limit])

    def plan_inputs(self, ids: Sequence[int], chunk_size: int = 1000) -> dict[int, Any]:
        wanted = set(ids)
        return {r.id: r.payload.get("input") for r in self.rows if r.id in wanted}

    def remove_before(self, cutoff: datetime, *, dry_run: bool = False) -> ProvenanceRemoval:
        """Delete rows (no partitions here, as on SQLite); a dry run counts."""
        old = [r for r in self.rows if r.created_at < cutoff]
        if not dry_run:
            self.guard.write("provenance.remove_before")
            self.rows = [r for r in self.rows if r.created_at >= cutoff]
        return ProvenanceRemoval(rows_deleted=len(old))

    def snapshot(self) -> object:
        return list(self.rows), list(self.inserted)

    def restore(self, state: Any) -> None:
        self.rows[:], self.inserted[:] = state


# --- canary reports ----------------------------------------------------------------------------


def _report_matches(flt: ReportFilter, r: CanaryReport) -> bool:
    if flt.status and r.status != flt.status:
        return False
    if flt.passed is not None and r.passed != flt.passed:
        return False
    if flt.start_time is not None and r.timestamp < flt.start_time:
        return False
    return flt.end_time is None or r.timestamp < flt.end_time


@dataclass
class FakeReports:
    """Reports by run id; ``unavailable`` makes ``add`` raise DatabaseUnavailable."""

    reports: dict[str, CanaryReport] = field(default_factory=dict)
    unavailable: bool = False
    events: list[str] = field(default_factory=list)
    guard: Guard = field(default_factory=Guard)
    _next_id: int = 1

    def add(self, report: CanaryReport, now: datetime | None = None) -> int:
        self.guard.write("reports.add")
        if self.unavailable:
            raise DatabaseUnavailable("database unavailable: fake")
        if report.run_id in self.reports:
            raise AlreadyExists(f"canary report {report.run_id!r} exists")
        row_id, self._next_id = self._next_id, self._next_id + 1
        created_at = now if now is not None else datetime.now(UTC)
        self.reports[report.run_id] = replace(report, id=row_id, created_at=created_at)
        self.events.append(f"reports.add {report.run_id}")
        return row_id

    def get_by_run_id(self, run_id: str) -> CanaryReport | None:
        return self.reports.get(run_id)

    get = get_by_run_id

    def run_ids_before(self, cutoff: datetime, limit: int = 1000) -> list[str]:
        old = sorted(
            (r for r in self.reports.values() if r.timestamp < cutoff),
            key=lambda r: (r.timestamp, r.id),
        )
        return [r.run_id for r in old[:limit]]

    def delete_runs(self, run_ids: Sequence[str]) -> int:
        self.guard.write("reports.delete_runs")
        return sum(self.reports.pop(run_id, None) is not None for run_id in set(run_ids))

    def stream(
        self, flt: ReportFilter, after: Cursor | None, limit: int, chunk_size: int = 500
    ) -> Iterator[list[CanaryReport]]:
        rows = sorted(
            (r for r in self.reports.values() if _report_matches(flt, r)),
            key=lambda r: (r.timestamp, r.id),
            reverse=True,
        )
        if after is not None:
            rows = [r for r in rows if (r.timestamp, r.id) < (after.timestamp, after.id)]
        yield from _chunks(rows[:limit], chunk_size)

    def snapshot(self) -> object:
        return dict(self.reports)

    def restore(self, state: Any) -> None:
        self.reports.clear()
        self.reports.update(state)


# --- idempotency keys --------------------------------------------------------------------------


@dataclass
class FakeIdempotency:
    keys: dict[tuple[str, str], StoredRequest] = field(default_factory=dict)
    created: dict[tuple[str, str], datetime] = field(default_factory=dict)
    guard: Guard = field(default_factory=Guard)

    def claim(
        self, operation: str, request_id: str, request_hash: str, now: datetime
    ) -> StoredRequest | None:
        key = (operation, request_id)
        if key in self.keys:
            return self.keys[key]
        self.guard.write("idempotency.claim")
        self.keys[key] = StoredRequest(request_hash, None)
        self.created[key] = now
        return None

    def get(self, operation: str, request_id: str) -> StoredRequest | None:
        return self.keys.get((operation, request_id))

    def complete(self, operation: str, request_id: str, response: dict[str, Any]) -> None:
        self.guard.write("idempotency.complete")
        key = (operation, request_id)
        if key in self.keys:  # the SQL driver's UPDATE matches no row otherwise
            self.keys[key] = StoredRequest(self.keys[key].request_hash, dict(response))

    def delete_before(self, cutoff: datetime, *, dry_run: bool = False) -> int:
        old = [key for key, at in self.created.items() if at < cutoff]
        if not dry_run:
            self.guard.write("idempotency.delete_before")
            for key in old:
                del self.keys[key], self.created[key]
        return len(old)

    def snapshot(self) -> object:
        return dict(self.keys), dict(self.created)

    def restore(self, state: Any) -> None:
        keys, created = state
        self.keys.clear()
        self.keys.update(keys)
        self.created.clear()
        self.created.update(created)


# --- golden datasets ---------------------------------------------------------------------------


@dataclass
class FakeGolden:
    """Versions (without samples) and samples by dataset id, as ``golden_driver.py`` keeps them."""

    versions: list[GoldenDataset] = field(default_factory=list)
    stored_samples: dict[int, tuple[GoldenSample, ...]] = field(default_factory=dict)
    guard: Guard = field(default_factory=Guard)
    _next_id: int = 1

    def create(self, new: NewGoldenDataset, now: datetime) -> GoldenDataset:
        self.guard.write("golden.create")
        mine = [d for d in self.versions if d.name == new.name]
        same = next((d for d in mine if d.sha256 == new.sha256), None)
        if same is not None:
            raise AlreadyExists(
                f"golden dataset {new.name!r} version {same.version} already holds this content "
                f"(sha256 {new.sha256})"
            )
        dataset = GoldenDataset(
            name=new.name,
            version=max((d.version for d in mine), default=0) + 1,
            sha256=new.sha256,
            description=new.description,
            source=new.source,
            sample_count=len(new.samples),
            active=not any(d.active for d in mine),
            created_at=now,
            id=self._next_id,
        )
        self._next_id += 1
        self.versions.append(dataset)
        self.stored_samples[dataset.id] = tuple(new.samples)
        return dataset

    def get(self, name: str, version: int | None = None) -> GoldenDataset | None:
        return next(
            (
                d
                for d in self.versions
                if d.name == name and (d.active if version is None else d.version == version)
            ),
            None,
        )

    def samples(self, dataset_id: int) -> tuple[GoldenSample, ...]:
        return tuple(sorted(self.stored_samples.get(dataset_id, ()), key=lambda s: s.id))

    def list_versions(self, name: str = "") -> list[GoldenDataset]:
        found = [d for d in self.versions if not name or d.name == name]
        return sorted(found, key=lambda d: (d.name, d.version))

    def activate(self, name: str, version: int) -> GoldenDataset | None:
        self.guard.write("golden.activate")
        if self.get(name, version) is None:
            return None
        self.versions = [
            replace(d, active=d.version == version) if d.name == name else d for d in self.versions
        ]
        return self.get(name, version)

    def snapshot(self) -> object:
        return list(self.versions), dict(self.stored_samples)

    def restore(self, state: Any) -> None:
        versions, samples = state
        self.versions[:] = versions
        self.stored_samples.clear()
        self.stored_samples.update(samples)


# --- partitions --------------------------------------------------------------------------------


@dataclass
class FakePartitions:
    """Monthly partition names; ``partitioned=False`` behaves as SQLite (a no-op)."""

    names: list[str] = field(default_factory=list)
    partitioned: bool = True
    guard: Guard = field(default_factory=Guard)

    def ensure(self, now: datetime) -> list[str]:
        if not self.partitioned:
            return []
        created = []
        for offset in range(MONTHS_AHEAD + 1):
            name = partition_for(add_months(month_start(now), offset)).name
            if name not in self.names:
                self.guard.write("partitions.ensure")
                self.names.append(name)
                created.append(name)
        return created

    def snapshot(self) -> object:
        return list(self.names)

    def restore(self, state: Any) -> None:
        self.names[:] = state


# --- the unit of work and its factory ----------------------------------------------------------


class FakeUnitOfWork:
    """One fake transaction over the shared fake stores of a :class:`FakeStore`."""

    def __init__(self, store: FakeStore, read_only: bool) -> None:
        self.store = store
        self.read_only = read_only
        self.provenance = store.provenance
        self.reports = store.reports
        self.idempotency = store.idempotency
        self.golden = store.golden
        self.partitions = store.partitions
        self.committed = False
        self._saved: list[tuple[_Snapshotting, object]] = []

    def _stores(self) -> list[_Snapshotting]:
        return [self.provenance, self.reports, self.idempotency, self.golden, self.partitions]

    def __enter__(self) -> Self:
        self.store.opened.append(self)
        self.store.guard.open.append(self)
        self._saved = [(s, s.snapshot()) for s in self._stores()]
        return self

    def commit(self) -> None:
        if self.read_only:
            raise ReadOnlyWrite("commit of a read-only unit of work")
        self.committed = True
        self.store.events.append("commit")

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if not self.committed:
            for s, state in self._saved:
                s.restore(state)
            if not self.read_only:
                self.store.events.append("rollback")
        self.store.guard.open.remove(self)
        self.store.closed.append(self)


@dataclass
class FakeStore:
    """A :class:`UnitOfWorkFactory` whose units of work share these fake stores."""

    provenance: FakeProvenance = field(default_factory=FakeProvenance)
    idempotency: FakeIdempotency = field(default_factory=FakeIdempotency)
    reports: FakeReports = field(default_factory=FakeReports)
    golden: FakeGolden = field(default_factory=FakeGolden)
    partitions: FakePartitions = field(default_factory=FakePartitions)
    events: list[str] = field(default_factory=list)
    opened: list[FakeUnitOfWork] = field(default_factory=list)
    closed: list[FakeUnitOfWork] = field(default_factory=list)
    guard: Guard = field(default_factory=Guard)

    def __post_init__(self) -> None:
        for fake in (self.provenance, self.idempotency, self.reports, self.golden, self.partitions):
            fake.guard = self.guard
        self.reports.events = self.events

    def __call__(self, *, read_only: bool = False) -> FakeUnitOfWork:
        return FakeUnitOfWork(self, read_only)


# --- artifacts and the run lock ----------------------------------------------------------------


@dataclass
class FakeArtifactStore:
    """Files by run id and name; ``unwritable`` fails every save, ``fail_on`` one file's save."""

    root: Path = field(default_factory=lambda: Path("/fake-artifacts"))
    files: dict[str, dict[str, bytes]] = field(default_factory=dict)
    unwritable: bool = False
    fail_on: str = ""
    events: list[str] = field(default_factory=list)

    @property
    def location(self) -> str:
        return str(self.root)

    def run_dir(self, run_id: str) -> Path:
        if not run_id or "/" in run_id or run_id.startswith("."):
            raise ValueError(f"not a run id: {run_id!r}")
        return self.root / run_id

    def save(self, run_id: str, files: Mapping[str, bytes]) -> tuple[ArtifactRef, ...]:
        directory = self.run_dir(run_id)
        refs = []
        for name, data in files.items():
            if self.unwritable or name == self.fail_on:
                raise OSError(errno.EROFS, "Read-only file system", str(directory / name))
            self.files.setdefault(run_id, {})[name] = bytes(data)
            refs.append(self.ref(run_id, name))
        self.events.append(f"artifacts.save {run_id} {','.join(files)}")
        return tuple(refs)

    def runs(self) -> Iterator[str]:
        for run_id in sorted(self.files):
            if REPORT_FILE in self.files[run_id]:
                yield run_id

    def read(self, run_id: str, name: str) -> bytes:
        try:
            return self.files[run_id][name]
        except KeyError:
            path = str(self.run_dir(run_id) / name)
            raise FileNotFoundError(errno.ENOENT, "No such file or directory", path) from None

    def remove(self, run_id: str) -> bool:
        return self.files.pop(run_id, None) is not None

    def ref(self, run_id: str, name: str) -> ArtifactRef:
        data = self.read(run_id, name)
        return ArtifactRef(f"{run_id}/{name}", hashlib.sha256(data).hexdigest(), len(data))

    def verify(self, ref: ArtifactRef) -> bool:
        path = Path(ref.path)  # relative to the root; absolute in reports stored before
        if path.is_absolute() and path.parent.parent != self.root:
            return False
        data = self.files.get(path.parent.name, {}).get(path.name)
        return (
            data is not None
            and len(data) == ref.size_bytes
            and hashlib.sha256(data).hexdigest() == ref.sha256
        )


@dataclass
class FakeLock:
    """``acquire`` answers ``free``; the timeouts asked and the releases are recorded."""

    free: bool = True
    acquired: list[float] = field(default_factory=list)
    released: int = 0

    def acquire(self, timeout_s: float) -> bool:
        self.acquired.append(timeout_s)
        return self.free

    def release(self) -> None:
        self.released += 1


def _conformance(store: FakeStore, artifacts: FakeArtifactStore, lock: FakeLock) -> None:
    """Never called: mypy checks each fake against its Protocol here."""
    factory: UnitOfWorkFactory = store
    uow: UnitOfWork = factory()
    provenance: ProvenanceStore = store.provenance
    reports: CanaryReportStore = store.reports
    keys: IdempotencyStore = store.idempotency
    golden: GoldenStore = store.golden
    partitions: PartitionStore = store.partitions
    artifact_store: ArtifactStore = artifacts
    run_lock: RunLock = lock
    del uow, provenance, reports, keys, golden, partitions, artifact_store, run_lock
