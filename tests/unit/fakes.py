"""In-memory stand-ins for the storage Protocols (no inheritance needed)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from costsim_analytics.drivers.idempotency_driver import StoredRequest
from costsim_analytics.engines.provenance import ProvenanceRecord


@dataclass
class FakeProvenance:
    rows: list[ProvenanceRecord] = field(default_factory=list)
    inserted: list[Any] = field(default_factory=list)

    def insert_batch(self, rows):
        start = len(self.inserted) + 1
        self.inserted.extend(rows)
        return list(range(start, start + len(rows)))

    def stream(self, flt, after, limit, chunk_size=500):
        rows = sorted(self.rows, key=lambda r: (r.created_at, r.id), reverse=True)
        if after is not None:
            rows = [r for r in rows if (r.created_at, r.id) < (after.timestamp, after.id)]
        rows = rows[:limit]
        for i in range(0, len(rows), chunk_size):
            yield rows[i : i + chunk_size]

    def drift_stats(self, query):
        raise NotImplementedError


@dataclass
class FakeIdempotency:
    keys: dict[tuple[str, str], StoredRequest] = field(default_factory=dict)

    def claim(self, operation, request_id, request_hash, now):
        key = (operation, request_id)
        if key in self.keys:
            return self.keys[key]
        self.keys[key] = StoredRequest(request_hash, None)
        return None

    def complete(self, operation, request_id, response):
        key = (operation, request_id)
        self.keys[key] = StoredRequest(self.keys[key].request_hash, response)


class FakeUnitOfWork:
    def __init__(self, store: FakeStore, read_only: bool):
        self.store = store
        self.read_only = read_only
        self.provenance = store.provenance
        self.idempotency = store.idempotency
        self.reports = store.reports
        self.committed = False

    def __enter__(self):
        self.store.opened.append(self)
        self.store.snapshot = (list(self.provenance.inserted), dict(self.idempotency.keys))
        return self

    def commit(self):
        assert not self.read_only, "a read-only unit of work was committed"
        self.committed = True

    def __exit__(self, *exc):
        if not self.committed:  # roll back
            self.provenance.inserted[:], keys = self.store.snapshot[0], self.store.snapshot[1]
            self.idempotency.keys.clear()
            self.idempotency.keys.update(keys)
        self.store.closed.append(self)


@dataclass
class FakeReports:
    reports: dict[str, Any] = field(default_factory=dict)

    def add(self, report, now=None):
        self.reports[report.run_id] = report
        return len(self.reports)

    def get_by_run_id(self, run_id):
        return self.reports.get(run_id)

    def stream(self, flt, after, limit, chunk_size=500):
        yield from ()


@dataclass
class FakeStore:
    provenance: FakeProvenance = field(default_factory=FakeProvenance)
    idempotency: FakeIdempotency = field(default_factory=FakeIdempotency)
    reports: FakeReports = field(default_factory=FakeReports)
    opened: list[FakeUnitOfWork] = field(default_factory=list)
    closed: list[FakeUnitOfWork] = field(default_factory=list)
    snapshot: Any = None

    def __call__(self, *, read_only: bool = False) -> FakeUnitOfWork:
        return FakeUnitOfWork(self, read_only)
