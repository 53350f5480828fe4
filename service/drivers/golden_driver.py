"""Golden dataset storage: versions and their samples. All SQL, no commit.

Versions are written once and never updated, except for the ``active`` flag. Writers of one
name are serialised: on PostgreSQL by a transaction-level advisory lock on the name (so two
concurrent imports cannot both take version n + 1, and two activations cannot leave two
versions active), on SQLite by ``BEGIN IMMEDIATE``, which every writing unit of work uses.
The unique indexes (name, version), (name, sha256) and the partial one on name where active
back this up in the database itself.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Row, func, insert, select, update
from sqlalchemy import exc as sa_exc

from costsim_analytics.drivers.errors import translated
from costsim_analytics.drivers.models import golden_datasets_table as d
from costsim_analytics.drivers.models import golden_samples_table as s
from costsim_analytics.engines.errors import AlreadyExists
from costsim_analytics.engines.golden.datasets import GoldenDataset, GoldenSample, NewGoldenDataset

# "gold" in ASCII: the first key of the two-key advisory lock space (which does not overlap
# the one-key space of the canary run lock).
ADVISORY_CLASS = 0x676F6C64
_HEADER = tuple(d.c)  # every column of a version, as GoldenDataset names them
# A sample's columns in GoldenSample's field order (sample_id is its id).
_SAMPLE = tuple(c for c in s.c if c is not s.c.dataset_id)
INSERT_CHUNK = 1000


def _dataset(row: Row[*tuple[Any, ...]]) -> GoldenDataset:
    return GoldenDataset(**row._mapping)


class SqlGoldenDriver:
    """Golden dataset rows over one connection inside the caller's transaction."""

    def __init__(self, conn: Connection) -> None:
        self._conn = conn

    def _lock(self, name: str) -> None:
        if self._conn.dialect.name == "postgresql":
            self._conn.execute(
                select(func.pg_advisory_xact_lock(ADVISORY_CLASS, func.hashtext(name)))
            )

    def create(self, new: NewGoldenDataset, now: datetime) -> GoldenDataset:
        """Store ``new`` as the next version of its name; active if no version of it is.

        Raises:
            AlreadyExists: a version of this name holds the same content (same sha256).
        """
        with translated():
            self._lock(new.name)
            same = self._conn.execute(
                select(d.c.version).where(d.c.name == new.name, d.c.sha256 == new.sha256)
            ).first()
            if same is not None:
                raise AlreadyExists(
                    f"golden dataset {new.name!r} version {same[0]} already holds this content "
                    f"(sha256 {new.sha256})"
                )
            latest, active = self._conn.execute(
                select(func.max(d.c.version), func.count().filter(d.c.active)).where(
                    d.c.name == new.name
                )
            ).one()
            values = {
                "name": new.name,
                "version": (latest or 0) + 1,
                "sha256": new.sha256,
                "description": new.description,
                "source": new.source,
                "sample_count": len(new.samples),
                "active": not active,
                "created_at": now,
            }
            try:
                row = self._conn.execute(insert(d).returning(*_HEADER), values).one()
            except sa_exc.IntegrityError as exc:  # only without the lock: a concurrent writer
                raise AlreadyExists(
                    f"golden dataset {new.name!r} changed concurrently; retry"
                ) from exc
            # The sample columns after sample_id are named as GoldenSample's fields.
            rows = [
                {"dataset_id": row.id, "sample_id": sample.id}
                | {c.name: getattr(sample, c.name) for c in _SAMPLE[1:]}
                for sample in new.samples
            ]
            for start in range(0, len(rows), INSERT_CHUNK):
                self._conn.execute(insert(s), rows[start : start + INSERT_CHUNK])
        return _dataset(row)

    def get(self, name: str, version: int | None = None) -> GoldenDataset | None:
        """One version (the active one when ``version`` is None), without samples, or None."""
        stmt = select(*_HEADER).where(d.c.name == name)
        stmt = stmt.where(d.c.active) if version is None else stmt.where(d.c.version == version)
        with translated():
            row = self._conn.execute(stmt).first()
        return None if row is None else _dataset(row)

    def samples(self, dataset_id: int) -> tuple[GoldenSample, ...]:
        """The samples of one version, sorted by id (code points, as the export is)."""
        stmt = select(*_SAMPLE).where(s.c.dataset_id == dataset_id)
        with translated():
            rows = self._conn.execute(stmt).all()
        samples = [GoldenSample(*row) for row in rows]
        # Sorted here, not by the database: PostgreSQL's collation need not be code-point order.
        return tuple(sorted(samples, key=lambda sample: sample.id))

    def list_versions(self, name: str = "") -> list[GoldenDataset]:
        """Every version (of ``name``, if given), by name then version."""
        stmt = select(*_HEADER).order_by(d.c.name, d.c.version)
        if name:
            stmt = stmt.where(d.c.name == name)
        with translated():
            return [_dataset(row) for row in self._conn.execute(stmt)]

    def activate(self, name: str, version: int) -> GoldenDataset | None:
        """Make ``version`` the active version of ``name``; None if there is no such version."""
        with translated():
            self._lock(name)
            if self.get(name, version) is None:
                return None
            # Deactivate first: the partial unique index allows one active row per name.
            self._conn.execute(
                update(d)
                .where(d.c.name == name, d.c.active, d.c.version != version)
                .values(active=False)
            )
            self._conn.execute(
                update(d).where(d.c.name == name, d.c.version == version).values(active=True)
            )
        return self.get(name, version)
