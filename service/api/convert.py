"""Proto <-> domain conversion. The servicer and the client are the only callers.

Domain types know nothing of protobuf; every translation lives here.
"""

from __future__ import annotations

import math
from dataclasses import asdict
from datetime import UTC, datetime
from typing import Any

from google.protobuf import message, struct_pb2, timestamp_pb2

from costsim.analytics.v1 import analytics_pb2 as pb
from costsim_analytics.engines.canonical import dumps
from costsim_analytics.engines.drift import DriftStats, DriftStatsQuery
from costsim_analytics.engines.findings import FailureReason, Interval
from costsim_analytics.engines.pagination import check_instant
from costsim_analytics.engines.provenance import (
    FILTER_TEXT_FIELDS,
    ProvenanceFilter,
    ProvenanceInput,
    ProvenanceQuery,
    ProvenanceRecord,
    WriteBatch,
    WriteBatchResult,
)

# Beyond 2**53 a whole double is no exact integer: the engine keeps it a float (canonical.py).
_MAX_EXACT_INT = 2**53

# --- JSON values -------------------------------------------------------------------------------


def _value(v: struct_pb2.Value) -> Any:
    kind = v.WhichOneof("kind")
    if kind == "struct_value":
        return struct_to_dict(v.struct_value)
    if kind == "list_value":
        return [_value(item) for item in v.list_value.values]
    # number_value, string_value and bool_value as they are; null_value (or unset) is None.
    return None if kind in (None, "null_value") else getattr(v, kind)


def struct_to_dict(s: struct_pb2.Struct) -> dict[str, Any]:
    """A Struct as plain Python (numbers stay floats; the engine normalises them)."""
    return {key: _value(value) for key, value in s.fields.items()}


class _NotNormal(Exception):
    """A number the fast walk leaves to the engine (NaN, an infinity, -0.0, beyond 2**53)."""


def _leaf(v: struct_pb2.Value, kind: str | None) -> Any:
    if kind == "number_value":
        x = v.number_value
        if x.is_integer():
            # -0.0 is whole too, but a fingerprint must still tell it from 0.0: the engine's walk.
            if -_MAX_EXACT_INT <= x <= _MAX_EXACT_INT and (x or math.copysign(1.0, x) > 0):
                return int(x)
            raise _NotNormal
        if x - x != 0.0:  # NaN or an infinity
            raise _NotNormal
        return x
    if kind == "string_value":
        return v.string_value
    if kind == "bool_value":
        return v.bool_value
    return None  # null_value, or no kind at all


def normalized_struct(s: struct_pb2.Struct) -> tuple[dict[str, Any], int] | None:
    """A Struct as plain Python already normalised (whole numbers as ints), and its depth.

    One walk instead of :func:`struct_to_dict` and then the engine's normalisation: the
    result equals ``normalize_numbers(struct_to_dict(s))`` and the depth counts as
    ``normalize_json`` does (``{}`` is 1). None when a number needs the engine's own walk
    (NaN, an infinity, -0.0, a whole number beyond 2**53): the caller then converts with
    :func:`struct_to_dict` and the engine decides, with its own errors.

    Example:
        >>> s = struct_pb2.Struct()
        >>> s.update({"budget_cents": 1000, "plan": [{"skill": "kv_get"}]})
        >>> normalized_struct(s)
        ({'budget_cents': 1000, 'plan': [{'skill': 'kv_get'}]}, 3)
    """
    # Recursion is bounded: protobuf decodes at most about 100 nested messages.
    try:
        return _normal_struct(s, 1)
    except _NotNormal:
        return None


# The two walks below are spelt out, one call per container and none per leaf: upb attribute
# access is the cost here. Recursion is about an eighth cheaper than an explicit stack of
# (source, destination, depth) tuples; a whole non-zero number within 2**53, or any finite
# fraction, is converted inline; zero (-0.0 is whole too), NaN, infinities and the rest in _leaf.


def _normal_struct(src: struct_pb2.Struct, depth: int) -> tuple[dict[str, Any], int]:
    dst: dict[str, Any] = {}
    deepest = depth
    fields = src.fields
    for key in fields:
        v = fields[key]
        kind = v.WhichOneof("kind")
        if kind == "string_value":
            dst[key] = v.string_value
        elif kind == "number_value":
            x = v.number_value
            if x.is_integer() and -_MAX_EXACT_INT <= x <= _MAX_EXACT_INT and x:
                x = int(x)
            elif x - x != 0.0 or x.is_integer():
                x = _leaf(v, kind)
            dst[key] = x
        elif kind == "struct_value":
            dst[key], inner = _normal_struct(v.struct_value, depth + 1)
            if inner > deepest:
                deepest = inner
        elif kind == "list_value":
            dst[key], inner = _normal_list(v.list_value, depth + 1)
            if inner > deepest:
                deepest = inner
        else:
            dst[key] = _leaf(v, kind)
    return dst, deepest


def _normal_list(src: struct_pb2.ListValue, depth: int) -> tuple[list[Any], int]:
    dst: list[Any] = []
    append = dst.append
    deepest = depth
    item: Any
    for v in src.values:
        kind = v.WhichOneof("kind")
        if kind == "string_value":
            append(v.string_value)
        elif kind == "number_value":
            x = v.number_value
            if x.is_integer() and -_MAX_EXACT_INT <= x <= _MAX_EXACT_INT and x:
                x = int(x)
            elif x - x != 0.0 or x.is_integer():
                x = _leaf(v, kind)
            append(x)
        elif kind == "struct_value":
            item, inner = _normal_struct(v.struct_value, depth + 1)
            append(item)
            if inner > deepest:
                deepest = inner
        elif kind == "list_value":
            item, inner = _normal_list(v.list_value, depth + 1)
            append(item)
            if inner > deepest:
                deepest = inner
        else:
            append(_leaf(v, kind))
    return dst, deepest


def _payload(rec: pb.ProvenanceRecord) -> tuple[dict[str, Any] | None, int]:
    """The record's Struct payload (None: unset), normalised with its depth when it can be."""
    if not rec.HasField("payload"):
        return None, 0
    fast = normalized_struct(rec.payload)
    return fast if fast is not None else (struct_to_dict(rec.payload), 0)


def timestamp(ts: timestamp_pb2.Timestamp) -> datetime:
    """A Timestamp as an aware UTC datetime (microsecond precision)."""
    return ts.ToDatetime(tzinfo=UTC)


def optional_timestamp(msg: Any, field: str) -> datetime | None:
    """The timestamp field ``field`` of ``msg``, or None when unset.

    Raises:
        InvalidArgument: naming ``field``, when no datetime can hold the instant.
    """
    if not msg.HasField(field):
        return None
    ts = getattr(msg, field)
    check_instant(ts.seconds, ts.nanos, field)
    return timestamp(ts)


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def to_timestamp(dt: datetime) -> timestamp_pb2.Timestamp:
    """An aware datetime as a Timestamp (plain arithmetic: ``FromDatetime`` is slower)."""
    delta = dt - _EPOCH
    return timestamp_pb2.Timestamp(
        seconds=delta.days * 86_400 + delta.seconds, nanos=delta.microseconds * 1000
    )


# --- provenance ---------------------------------------------------------------------------------


def provenance_input(rec: pb.ProvenanceRecord) -> ProvenanceInput:
    """A request record as the engine's input (unvalidated)."""
    payload, depth = _payload(rec)
    # Spelt out (TEXT_FIELDS, in order): a thousand records a batch, each field read once.
    return ProvenanceInput(
        run_id=rec.run_id,
        tenant_id=rec.tenant_id,
        variant_slug=rec.variant_slug,
        source=rec.source,
        model_version=rec.model_version,
        adapter_version=rec.adapter_version,
        commit_sha=rec.commit_sha,
        input_hash=rec.input_hash,
        output_hash=rec.output_hash,
        v1_cost=rec.v1_cost if rec.HasField("v1_cost") else None,
        v2_cost=rec.v2_cost if rec.HasField("v2_cost") else None,
        payload=payload,
        payload_json=rec.payload_json,
        runtime_ms=rec.runtime_ms,
        payload_depth=depth,
        id_set=rec.id != 0,
        cost_delta_set=rec.HasField("cost_delta"),
        created_at_set=rec.HasField("created_at"),
    )


def write_batch(request: pb.WriteProvenanceBatchRequest) -> WriteBatch:
    """WriteProvenanceBatchRequest -> command."""
    return WriteBatch([provenance_input(rec) for rec in request.records], request.request_id)


def write_batch_response(result: WriteBatchResult) -> pb.WriteProvenanceBatchResponse:
    """Command result -> WriteProvenanceBatchResponse."""
    return pb.WriteProvenanceBatchResponse(ids=result.ids, replayed=result.replayed)


def provenance_record(r: ProvenanceRecord, *, payload_as_text: bool = False) -> pb.ProvenanceRecord:
    """A stored record as a message; its payload as JSON text in ``payload_json`` if asked."""
    msg = pb.ProvenanceRecord(
        id=r.id,
        run_id=r.run_id,
        tenant_id=r.tenant_id,
        variant_slug=r.variant_slug,
        source=r.source,
        model_version=r.model_version,
        adapter_version=r.adapter_version,
        commit_sha=r.commit_sha,
        input_hash=r.input_hash,
        output_hash=r.output_hash,
        v1_cost=r.v1_cost,
        v2_cost=r.v2_cost,
        cost_delta=r.cost_delta,
        runtime_ms=r.runtime_ms,
        created_at=to_timestamp(r.created_at),
    )
    if payload_as_text:
        msg.payload_json = dumps(r.payload)
    else:
        msg.payload.update(r.payload)
    return msg


def provenance_response(r: ProvenanceRecord, page_token: str) -> pb.QueryProvenanceResponse:
    """One QueryProvenance message; a payload too deep for a Struct comes as ``payload_json``.

    Rows stored before ingest limited the depth may nest deeper than protobuf decodes (about
    33 JSON levels inside this message): building the message decodes the record once, so that
    is where it shows, as the decoder's own error. The usual row pays nothing for the check.
    """
    try:
        return pb.QueryProvenanceResponse(record=provenance_record(r), page_token=page_token)
    except message.DecodeError:
        record = provenance_record(r, payload_as_text=True)
        return pb.QueryProvenanceResponse(record=record, page_token=page_token)


def provenance_query(request: pb.QueryProvenanceRequest) -> ProvenanceQuery:
    """QueryProvenanceRequest -> query."""
    return ProvenanceQuery(
        filter=ProvenanceFilter(
            **{name: getattr(request, name) for name in FILTER_TEXT_FIELDS},
            start_time=optional_timestamp(request, "start_time"),
            end_time=optional_timestamp(request, "end_time"),
        ),
        page_size=request.page_size,
        page_token=request.page_token,
    )


def drift_query(request: pb.GetDriftStatsRequest) -> DriftStatsQuery:
    """GetDriftStatsRequest -> query."""
    start, end = (optional_timestamp(request, name) for name in ("start_time", "end_time"))
    return DriftStatsQuery(request.tenant_id, request.variant_slug, start, end)


def drift_stats(stats: DriftStats) -> pb.GetDriftStatsResponse:
    """Statistics -> GetDriftStatsResponse (the same fields by the same names)."""
    return pb.GetDriftStatsResponse(**asdict(stats))


# --- shared by the canary and golden messages ---------------------------------------------------


def optional(msg: Any, name: str) -> Any:
    """Field ``name`` of ``msg``, or None when it is unset (proto3 ``optional``)."""
    return getattr(msg, name) if msg.HasField(name) else None


def interval(i: Interval | None) -> pb.ConfidenceInterval | None:
    """A confidence interval as a message (None stays unset)."""
    return None if i is None else pb.ConfidenceInterval(**asdict(i))


def failure_reason(r: FailureReason) -> pb.FailureReason:
    """A failure reason as a message."""
    return pb.FailureReason(**{**asdict(r), "interval": interval(r.interval)})
