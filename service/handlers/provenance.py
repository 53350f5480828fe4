"""Provenance handlers: batch ingest (idempotent), streaming query, drift statistics."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

from costsim_analytics.engines.drift import DriftStats, DriftStatsQuery, validate_drift_query
from costsim_analytics.engines.errors import RequestIdReused
from costsim_analytics.engines.pagination import Cursor, check_window
from costsim_analytics.engines.provenance import (
    DEFAULT_MAX_BATCH,
    ProvenanceQuery,
    ProvenanceRecord,
    WriteBatch,
    WriteBatchResult,
    batch_fingerprint,
    prepare_batch,
    validate_filter,
    validate_request_id,
)
from costsim_analytics.handlers.ports import UnitOfWorkFactory
from costsim_analytics.handlers.registry import OP_PROVENANCE_BATCH
from costsim_analytics.handlers.streams import ResultStream, open_stream

Clock = Callable[[], datetime]
QUERY_KIND = "provenance"


def utc_now() -> datetime:
    """The server clock."""
    return datetime.now(UTC)


class WriteProvenanceBatchHandler:
    """Validate and store a batch in one transaction; replay answers for a known request_id."""

    def __init__(
        self,
        uow_factory: UnitOfWorkFactory,
        *,
        max_batch: int = DEFAULT_MAX_BATCH,
        clock: Clock = utc_now,
    ) -> None:
        self._uow_factory = uow_factory
        self._max_batch = max_batch
        self._clock = clock

    def __call__(self, command: WriteBatch) -> WriteBatchResult:
        """Store the batch, or replay the earlier answer to the same request."""
        validate_request_id(command.request_id)
        now = self._clock()
        rows = prepare_batch(command.records, max_batch=self._max_batch, now=now)
        with self._uow_factory() as uow:
            if command.request_id:
                digest = batch_fingerprint(rows)
                earlier = uow.idempotency.claim(
                    OP_PROVENANCE_BATCH, command.request_id, digest, now
                )
                if earlier is not None:
                    if earlier.request_hash != digest or earlier.response is None:
                        raise RequestIdReused(
                            f"request_id {command.request_id!r} was used for a different batch"
                        )
                    return WriteBatchResult(tuple(earlier.response["ids"]), replayed=True)
            ids = uow.provenance.insert_batch(rows)
            if command.request_id:
                uow.idempotency.complete(OP_PROVENANCE_BATCH, command.request_id, {"ids": ids})
            uow.commit()
        return WriteBatchResult(tuple(ids))


def _cursor(record: ProvenanceRecord) -> Cursor:
    return Cursor(record.created_at, record.id)


class QueryProvenanceHandler:
    """Open a keyset-paged stream of provenance records, newest first."""

    def __init__(self, uow_factory: UnitOfWorkFactory, *, max_page_size: int = 10_000) -> None:
        self._uow_factory = uow_factory
        self._max_page_size = max_page_size

    def __call__(self, query: ProvenanceQuery) -> ResultStream[ProvenanceRecord]:
        """Validate everything, then open the stream (errors come before the first message)."""
        validate_filter(query.filter)
        check_window(query.filter.start_time, query.filter.end_time)
        return open_stream(
            self._uow_factory,
            kind=QUERY_KIND,
            filters=query.filter.as_dict(),
            page_size=query.page_size,
            page_token=query.page_token,
            max_page_size=self._max_page_size,
            query=lambda uow, after, limit: uow.provenance.stream(query.filter, after, limit),
            cursor_of=_cursor,
        )


class DriftStatsHandler:
    """Summarise cost_delta over stored provenance."""

    def __init__(self, uow_factory: UnitOfWorkFactory) -> None:
        self._uow_factory = uow_factory

    def __call__(self, query: DriftStatsQuery) -> DriftStats:
        """Validate, then aggregate in a read-only transaction."""
        validate_drift_query(query)
        with self._uow_factory(read_only=True) as uow:
            return uow.provenance.drift_stats(query)
