"""Idempotency keys: claim a request_id, or find the answer already given for it. No commit.

A claim is an ``INSERT ... ON CONFLICT DO NOTHING``. On PostgreSQL a second transaction
claiming the same key waits on the unique index until the first commits (then sees its row)
or rolls back (then claims it). On SQLite writers are serialised by ``BEGIN IMMEDIATE``.
Either way concurrent retries of one request do the work once.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Select, delete, func, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from costsim_analytics.drivers.errors import translated
from costsim_analytics.drivers.models import idempotency_table as t
from costsim_analytics.engines.idempotency import StoredRequest


def _stored(operation: str, request_id: str) -> Select[tuple[str, dict[str, Any] | None]]:
    return select(t.c.request_hash, t.c.response_json).where(
        t.c.operation == operation, t.c.request_id == request_id
    )


class SqlIdempotencyDriver:
    """Idempotency keys over one connection inside the caller's transaction."""

    def __init__(self, conn: Connection) -> None:
        self._conn = conn

    def claim(
        self, operation: str, request_id: str, request_hash: str, now: datetime
    ) -> StoredRequest | None:
        """Claim the key; return None if claimed now, else the earlier request."""
        dialect_insert = pg_insert if self._conn.dialect.name == "postgresql" else sqlite_insert
        stmt = (
            dialect_insert(t)
            .values(
                operation=operation,
                request_id=request_id,
                request_hash=request_hash,
                response_json=None,
                created_at=now,
            )
            .on_conflict_do_nothing(index_elements=["operation", "request_id"])
            .returning(t.c.request_id)
        )
        with translated():
            if self._conn.execute(stmt).first() is not None:
                return None
            row = self._conn.execute(_stored(operation, request_id)).one()
        return StoredRequest(row.request_hash, row.response_json)

    def get(self, operation: str, request_id: str) -> StoredRequest | None:
        """The stored request for a key, or None."""
        with translated():
            row = self._conn.execute(_stored(operation, request_id)).first()
        return None if row is None else StoredRequest(row.request_hash, row.response_json)

    def complete(self, operation: str, request_id: str, response: dict[str, Any]) -> None:
        """Record the answer of a claimed key (in the same transaction as the work)."""
        with translated():
            self._conn.execute(
                update(t)
                .where(t.c.operation == operation, t.c.request_id == request_id)
                .values(response_json=response)
            )

    def delete_before(self, cutoff: datetime, *, dry_run: bool = False) -> int:
        """Forget keys stored before ``cutoff`` (a retry after that writes again)."""
        old = t.c.created_at < cutoff
        with translated():
            if dry_run:
                return int(
                    self._conn.execute(select(func.count()).select_from(t).where(old)).scalar_one()
                )
            return int(self._conn.execute(delete(t).where(old)).rowcount)
