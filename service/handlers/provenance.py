"""Provenance handlers: batch ingest (idempotent), streaming query, drift statistics."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from costsim_analytics.engines.drift import DriftStats, DriftStatsQuery, validate_drift_query
from costsim_analytics.engines.pagination import Cursor, check_window
from costsim_analytics.engines.provenance import (
    DEFAULT_MAX_BATCH,
    ProvenanceQuery,
    ProvenanceRecord,
    WriteBatch,
    WriteBatchResult,
    prepare_batch,
    validate_filter,
)
from costsim_analytics.engines.provenance_digest import command_fingerprint, command_fingerprint_v1
from costsim_analytics.engines.text import DEFAULT_MAX_JSON_DEPTH
from costsim_analytics.handlers.call import Call, Clock, utc_now
from costsim_analytics.handlers.idempotency import Replay
from costsim_analytics.handlers.ports import UnitOfWork, UnitOfWorkFactory
from costsim_analytics.handlers.streams import ResultStream, open_stream

QUERY_KIND = "provenance"


def _replayed_batch(_uow: UnitOfWork, response: Mapping[str, Any]) -> WriteBatchResult:
    return WriteBatchResult(tuple(response["ids"]), replayed=True)


BATCH_REPLAY: Replay[WriteBatch, WriteBatchResult] = Replay(
    request_id=lambda command: command.request_id,
    digest=command_fingerprint,
    replay=_replayed_batch,
    legacy_digest=command_fingerprint_v1,
)


class WriteProvenanceBatchHandler:
    """Validate and store a batch in one transaction (idempotent through :data:`BATCH_REPLAY`)."""

    def __init__(
        self,
        uow_factory: UnitOfWorkFactory,
        *,
        max_batch: int = DEFAULT_MAX_BATCH,
        max_json_depth: int = DEFAULT_MAX_JSON_DEPTH,
        clock: Clock = utc_now,
    ) -> None:
        self._uow_factory = uow_factory
        self._max_batch = max_batch
        self._max_depth = max_json_depth
        self._clock = clock

    def __call__(self, command: WriteBatch, call: Call, /) -> WriteBatchResult:
        """Store the batch (and, with a request_id, its idempotency key) in one transaction."""
        now = self._clock()
        rows = prepare_batch(
            command.records, max_batch=self._max_batch, now=now, max_depth=self._max_depth
        )
        with self._uow_factory() as uow:
            if call.claim:
                call.claim.take(uow, now)
            ids = uow.provenance.insert_batch(rows)
            if call.claim:
                call.claim.complete(uow, {"ids": ids})
            uow.commit()
        return WriteBatchResult(tuple(ids))


def _cursor(record: ProvenanceRecord) -> Cursor:
    return Cursor(record.created_at, record.id)


class QueryProvenanceHandler:
    """Open a keyset-paged stream of provenance records, newest first."""

    def __init__(self, uow_factory: UnitOfWorkFactory, *, max_page_size: int = 10_000) -> None:
        self._uow_factory = uow_factory
        self._max_page_size = max_page_size

    def __call__(self, query: ProvenanceQuery, call: Call, /) -> ResultStream[ProvenanceRecord]:
        """Validate everything, then open the stream (errors come before the first message).

        The caller sees only the tenants it may read: the scope joins the filter (and the
        fingerprint its page tokens are bound to).
        """
        validate_filter(query.filter)
        check_window(query.filter.start_time, query.filter.end_time)
        flt = replace(query.filter, tenant_scope=call.tenant_scope())
        return open_stream(
            self._uow_factory,
            kind=QUERY_KIND,
            filters=flt.as_dict(),
            page_size=query.page_size,
            page_token=query.page_token,
            max_page_size=self._max_page_size,
            query=lambda uow, after, limit: uow.provenance.stream(flt, after, limit),
            cursor_of=_cursor,
        )


class DriftStatsHandler:
    """Summarise cost_delta over stored provenance."""

    def __init__(self, uow_factory: UnitOfWorkFactory) -> None:
        self._uow_factory = uow_factory

    def __call__(self, query: DriftStatsQuery, call: Call, /) -> DriftStats:
        """Validate, then aggregate the caller's tenants in a read-only transaction."""
        validate_drift_query(query)
        with self._uow_factory(read_only=True) as uow:
            return uow.provenance.drift_stats(replace(query, tenant_scope=call.tenant_scope()))
