"""The digest of a provenance batch's content, by which a retried request is recognised.

Two formulas: ``v2`` (tagged) is what new keys store; keys stored before it hold the first
formula's 64 hex digits and are still compared with that one (``handlers/provenance.py``).
"""

from __future__ import annotations

import hashlib
from typing import Any

from costsim_analytics.engines.canonical import dumps, sha256_hex
from costsim_analytics.engines.provenance import TEXT_FIELDS, ProvenanceInput, WriteBatch

# What the digests take before the payload, in this order (digests are stored: never reorder).
_FINGERPRINT_FIELDS = (*TEXT_FIELDS, "v1_cost", "v2_cost", "runtime_ms")


# The current digest formula's tag: stored digests without it are of the first formula.
FINGERPRINT_VERSION = "v2"


def command_fingerprint(batch: WriteBatch) -> str:
    """Digest of a batch's content (not its request id), to recognise a retried request.

    Over the records as sent, so that it can be taken before the batch is prepared; a Struct
    payload counts by its JSON as sent (a Struct payload and that text are the same content).
    ``v2`` and 62 hex digits of a SHA-256 (the column holds 64 characters) over the fields
    of :func:`command_fingerprint_v1`, each text with its length before it and each number
    ended by a comma, so that the records' concatenation reads back one way only: no JSON
    encoding of the payload text, which was most of the first formula's cost.

    Raises:
        ValueError: a payload that has no JSON form (the batch's validation refuses it too).

    """
    lines = []
    for r in batch.records:
        a, b, c, d = r.run_id, r.tenant_id, r.variant_slug, r.source
        e, f, g, h, i = (
            r.model_version,
            r.adapter_version,
            r.commit_sha,
            r.input_hash,
            r.output_hash,
        )
        p = r.payload_json if r.payload is None else dumps(_as_sent(r))
        # Spelt out (the order of _FINGERPRINT_FIELDS, then the payload): one string a record.
        lines.append(
            f"{len(a)}:{a}{len(b)}:{b}{len(c)}:{c}{len(d)}:{d}{len(e)}:{e}{len(f)}:{f}"
            f"{len(g)}:{g}{len(h)}:{h}{len(i)}:{i}{len(p)}:{p}"
            f"{r.v1_cost!r},{r.v2_cost!r},{r.runtime_ms},"
            f"{r.id_set:d}{r.cost_delta_set:d}{r.created_at_set:d}"
        )
    digest = hashlib.sha256("".join(lines).encode("utf-8", "surrogatepass")).hexdigest()
    return FINGERPRINT_VERSION + digest[: 64 - len(FINGERPRINT_VERSION)]


def command_fingerprint_v1(batch: WriteBatch) -> str:
    """The first digest formula (64 hex digits): what keys stored before ``v2`` hold."""
    lines = [
        dumps(
            [
                *(getattr(r, name) for name in _FINGERPRINT_FIELDS),
                r.payload_json if r.payload is None else dumps(_as_sent(r)),
                [r.id_set, r.cost_delta_set, r.created_at_set],
            ]
        )
        for r in batch.records
    ]
    return sha256_hex("\n".join(lines))


def _as_sent(rec: ProvenanceInput) -> Any:
    """The payload as the caller's Struct spelt it (digests stored before must still match).

    A converter that normalised a Struct (``payload_depth``) turned whole doubles into ints;
    a Struct has no ints, so every int (not bool) goes back to the double it was, exactly
    (the converter only does this within 2**53, and never for -0.0).
    """
    return _as_floats(rec.payload) if rec.payload_depth else rec.payload


def _as_floats(value: Any) -> Any:
    if isinstance(value, dict):
        return {key: _as_floats(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_as_floats(item) for item in value]
    if isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    return value
