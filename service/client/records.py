"""Provenance records as the client sends them: checked by the server's rules, hashed, encoded.

:func:`prepare_record` runs the server's own validation (``engines/provenance.py``, the same
code, not a copy) on one record, so a record the server would refuse fails here, naming the
field. It computes the canonical ``input_hash`` and ``output_hash`` and the payload's canonical
JSON, and encodes the record with the payload as ``payload_json`` text and both hashes: the
server's fast path (``bench/ingest.py``: about 2.5 times the throughput of a ``Struct``).

The encoded record is what the spool keeps and what a batch is made of: a
``WriteProvenanceBatchRequest`` is the records' bytes one after the other, each as field 1,
and the request id as field 2 (:func:`encode_batch`), so a batch replayed from the spool is
byte for byte the batch first sent.

Example:
    >>> rec = prepare_record(run_id="r1", variant_slug="v2", source="sandbox",
    ...                      payload={"input": {"budget_cents": 100.0}, "output": {}})
    >>> rec.input_hash == content_hash({"budget_cents": 100})
    True

"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import grpc

from costsim.analytics.v1 import analytics_pb2 as pb
from costsim_analytics.client.errors import FieldViolation, InvalidRecordError
from costsim_analytics.engines.canonical import content_hash
from costsim_analytics.engines.errors import InvalidArgument
from costsim_analytics.engines.provenance import ProvenanceInput, prepare_batch
from costsim_analytics.engines.text import DEFAULT_MAX_JSON_DEPTH

__all__ = ["PreparedRecord", "content_hash", "encode_batch", "prepare_record"]

_PREFIX = "records[0]."
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_RECORDS_TAG = b"\x0a"  # WriteProvenanceBatchRequest.records: field 1, length-delimited
_REQUEST_ID_TAG = b"\x12"  # WriteProvenanceBatchRequest.request_id: field 2


@dataclass(frozen=True, slots=True)
class PreparedRecord:
    """A validated record, encoded as a ``ProvenanceRecord`` message (``body``)."""

    body: bytes
    run_id: str
    input_hash: str
    output_hash: str


def prepare_record(
    *,
    run_id: str,
    variant_slug: str,
    source: str,
    tenant_id: str = "",
    model_version: str = "",
    adapter_version: str = "",
    commit_sha: str = "",
    v1_cost: float | None = None,
    v2_cost: float | None = None,
    payload: Mapping[str, Any] | None = None,
    payload_json: str = "",
    runtime_ms: int = 0,
    input_hash: str = "",
    output_hash: str = "",
    max_json_depth: int = DEFAULT_MAX_JSON_DEPTH,
) -> PreparedRecord:
    """Check one record by the server's rules and encode it for the fast path.

    Args:
        run_id: the simulation run (required).
        variant_slug: ``v1``, ``v2`` or ``canary``.
        source: ``sandbox``, ``canary``, ``manual`` or ``backfill``.
        tenant_id: the tenant the record belongs to.
        model_version: version of the cost model that ran.
        adapter_version: version of the adapter that ran.
        commit_sha: the commit of the code that ran.
        v1_cost: the baseline cost in cents.
        v2_cost: the candidate cost in cents.
        payload: ``{"input": ..., "output": ..., "status": ...}``, JSON values.
        payload_json: the payload as JSON text instead of ``payload``.
        runtime_ms: how long the simulation took.
        input_hash: the SHA-256 of ``payload.input``'s canonical JSON; computed when empty.
        output_hash: the same of ``payload.output``; computed when empty.
        max_json_depth: the server's ``COSTSIM_MAX_JSON_DEPTH`` (default 32).

    Raises:
        InvalidRecordError: naming every refused field (``payload.status``, ``v1_cost``).
    """
    record = ProvenanceInput(
        run_id=run_id,
        tenant_id=tenant_id,
        variant_slug=variant_slug,
        source=source,
        model_version=model_version,
        adapter_version=adapter_version,
        commit_sha=commit_sha,
        input_hash=input_hash,
        output_hash=output_hash,
        v1_cost=None if v1_cost is None else float(v1_cost),
        v2_cost=None if v2_cost is None else float(v2_cost),
        payload=None if payload is None else dict(payload),
        payload_json=payload_json,
        runtime_ms=runtime_ms,
    )
    try:
        [row] = prepare_batch([record], max_batch=1, now=_EPOCH, max_depth=max_json_depth)
    except InvalidArgument as exc:
        violations = [
            FieldViolation(v.field.removeprefix(_PREFIX), v.description) for v in exc.violations
        ]
        raise _invalid(violations) from None
    except (TypeError, RecursionError) as exc:  # a value with no JSON form, or absurdly deep
        raise _invalid([FieldViolation("payload", f"must be JSON: {exc}")]) from None
    message = pb.ProvenanceRecord(
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
        runtime_ms=row.runtime_ms,
        payload_json=row.payload_json,
    )
    return PreparedRecord(message.SerializeToString(), row.run_id, row.input_hash, row.output_hash)


def _invalid(violations: Sequence[FieldViolation]) -> InvalidRecordError:
    first = violations[0]
    more = f" (and {len(violations) - 1} more)" if len(violations) > 1 else ""
    return InvalidRecordError(
        grpc.StatusCode.INVALID_ARGUMENT,
        f"{first.field}: {first.description}{more}",
        reason="INVALID_ARGUMENT",
        violations=violations,
    )


def _varint(value: int) -> bytes:
    if value < 0x80:  # the usual lengths, one or two bytes, without the loop
        return bytes((value,))
    if value < 0x4000:
        return bytes(((value & 0x7F) | 0x80, value >> 7))
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def encode_batch(bodies: Sequence[bytes], request_id: str) -> bytes:
    """A serialised ``WriteProvenanceBatchRequest`` of encoded records and a request id."""
    parts: list[bytes] = []
    for body in bodies:
        parts += (_RECORDS_TAG, _varint(len(body)), body)
    key = request_id.encode()
    parts += (_REQUEST_ID_TAG, _varint(len(key)), key)
    return b"".join(parts)


def batch_bytes(body: bytes) -> int:
    """What one record adds to a serialised batch (its tag, its length's varint, itself)."""
    size = len(body)
    # A varint carries 7 bits a byte: no bytes built to count them.
    return 1 + max(1, (size.bit_length() + 6) // 7) + size
