"""Provenance records: the domain rules for ingest and the query types.

The engine validates a batch as a whole (every violation is reported, not just the first),
computes ``cost_delta`` and any missing hashes, and normalises the payload to canonical JSON.
It never touches storage: the handler passes the prepared rows to a driver.

Example:
    >>> rec = ProvenanceInput(run_id="r1", variant_slug="v2", source="sandbox",
    ...                       v1_cost=10.0, v2_cost=12.5,
    ...                       payload={"input": {"plan": [], "budget_cents": 100.0}, "output": {}})
    >>> from datetime import datetime, UTC
    >>> [row] = prepare_batch([rec], max_batch=10, now=datetime(2026, 1, 1, tzinfo=UTC))
    >>> row.cost_delta
    2.5

"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from datetime import datetime
from typing import Any

from costsim_analytics.engines.canonical import (
    dumps_by_key,
    dumps_by_key_if_normal,
    loads,
    loads_plain,
    sha256_hex,
)
from costsim_analytics.engines.errors import FieldViolation, InvalidArgument, WorkBoundExceeded
from costsim_analytics.engines.limits import REASONS, RECORDS
from costsim_analytics.engines.text import (
    DEFAULT_MAX_JSON_DEPTH,
    NUL,
    SURROGATE,
    check_text,
    check_texts,
    depth_problem,
    json_text_too_deep,
    normalize_json,
    text_problem,
)

VARIANT_SLUGS = frozenset({"v1", "v2", "canary"})
SOURCES = frozenset({"sandbox", "canary", "manual", "backfill"})
PAYLOAD_STATUSES = frozenset({"success", "error", "timeout", "schema_error"})
MAX_STRING_CHARS = 256
MAX_PAYLOAD_BYTES = 64 * 1024
# runtime_ms is an INTEGER column (and an int32 on the wire).
MAX_RUNTIME_MS = 2**31 - 1
# Far beyond any real cost, yet every delta of two such costs stays exact enough to compare.
MAX_COST = 1e15
DEFAULT_MAX_BATCH = 1000
# An error lists at most this many violations, so a hopeless batch cannot make a huge trailer.
MAX_REPORTED_VIOLATIONS = 100

_HASH = re.compile(r"[0-9a-f]{64}")
_CHOICES = (("variant_slug", VARIANT_SLUGS), ("source", SOURCES))  # fields with fixed values
_STRING_FIELDS = (
    "run_id",
    "tenant_id",
    "variant_slug",
    "source",
    "model_version",
    "adapter_version",
    "commit_sha",
)
_HASH_FIELDS = ("input_hash", "output_hash")
# The text fields a record carries as sent, under the same names in every representation.
TEXT_FIELDS = (*_STRING_FIELDS, *_HASH_FIELDS)
# The exact-match filters of ProvenanceFilter (an empty one matches everything).
FILTER_TEXT_FIELDS = ("tenant_id", "variant_slug", "source", "input_hash", "run_id")


@dataclass(frozen=True, slots=True)
class ProvenanceInput:
    """A provenance record as a caller sent it, before validation."""

    run_id: str = ""
    tenant_id: str = ""
    variant_slug: str = ""
    source: str = ""
    model_version: str = ""
    adapter_version: str = ""
    commit_sha: str = ""
    input_hash: str = ""
    output_hash: str = ""
    v1_cost: float | None = None
    v2_cost: float | None = None
    payload: dict[str, Any] | None = None
    payload_json: str = ""
    runtime_ms: int = 0
    # Set by a converter that normalised ``payload`` itself (whole numbers as ints, finite,
    # plain dicts and lists): how deep it nests. 0: ``payload`` is as the caller gave it.
    payload_depth: int = 0
    # Output-only fields a caller must leave unset.
    id_set: bool = False
    cost_delta_set: bool = False
    created_at_set: bool = False


@dataclass(frozen=True, slots=True)
class _Provenance:
    """The fields a validated record and a stored one share."""

    run_id: str
    tenant_id: str
    variant_slug: str
    source: str
    model_version: str
    adapter_version: str
    commit_sha: str
    input_hash: str
    output_hash: str
    v1_cost: float | None
    v2_cost: float | None
    cost_delta: float | None
    payload: dict[str, Any]
    runtime_ms: int
    created_at: datetime


@dataclass(frozen=True, slots=True)
class NewProvenance(_Provenance):
    """A validated record, ready to store; ``payload_json`` is its canonical serialisation."""

    payload_json: str


@dataclass(frozen=True, slots=True)
class ProvenanceRecord(_Provenance):
    """A stored record."""

    id: int


@dataclass(frozen=True, slots=True)
class WriteBatch:
    """The WriteProvenanceBatch command."""

    records: Sequence[ProvenanceInput]
    request_id: str = ""


@dataclass(frozen=True, slots=True)
class WriteBatchResult:
    """Ids in request order; ``replayed`` when an earlier call with the same key answered."""

    ids: tuple[int, ...]
    replayed: bool = False


@dataclass(frozen=True, slots=True)
class ProvenanceFilter:
    """Filters shared by provenance queries; empty strings and None match everything.

    ``tenant_scope`` is not the caller's: it is the tenants the caller may read (None: all),
    set by the handler from the call's principal.
    """

    tenant_id: str = ""
    variant_slug: str = ""
    source: str = ""
    input_hash: str = ""
    run_id: str = ""
    start_time: datetime | None = None
    end_time: datetime | None = None
    tenant_scope: tuple[str, ...] | None = None

    def as_dict(self) -> dict[str, object]:
        """The filters by name, for fingerprints (a page token stays bound to the scope)."""
        data = {f.name: getattr(self, f.name) for f in fields(self)}
        # Left out when unscoped, so that tokens issued before scopes existed stay valid.
        scope = data.pop("tenant_scope")
        return data if scope is None else {**data, "tenant_scope": list(scope)}


@dataclass(frozen=True, slots=True)
class ProvenanceQuery:
    """The QueryProvenance command."""

    filter: ProvenanceFilter = field(default_factory=ProvenanceFilter)
    page_size: int = 0
    page_token: str = ""


def compute_cost_delta(v1_cost: float | None, v2_cost: float | None) -> float | None:
    """``v2 - v1`` when both costs are present, else None."""
    if v1_cost is None or v2_cost is None:
        return None
    return v2_cost - v1_cost


def validate_filter(flt: ProvenanceFilter) -> None:
    """Reject filter values that can never match a valid record."""
    violations: list[FieldViolation] = []
    check_texts(flt, FILTER_TEXT_FIELDS, violations)
    for name, allowed in _CHOICES:
        if getattr(flt, name) and getattr(flt, name) not in allowed:
            violations.append(FieldViolation(name, f"must be one of {sorted(allowed)}"))
    if flt.input_hash and not _HASH.fullmatch(flt.input_hash):
        violations.append(FieldViolation("input_hash", "must be 64 lowercase hex digits"))
    for name in ("tenant_id", "run_id"):
        if len(getattr(flt, name)) > MAX_STRING_CHARS:
            violations.append(FieldViolation(name, f"must be at most {MAX_STRING_CHARS} chars"))
    if violations:
        raise InvalidArgument(_summary(violations), violations)


def _summary(violations: Sequence[FieldViolation]) -> str:
    first = violations[0]
    more = f" (and {len(violations) - 1} more)" if len(violations) > 1 else ""
    return f"{first.field}: {first.description}{more}"


def _check_cost(value: float | None, prefix: str, name: str, out: list[FieldViolation]) -> None:
    if value is None or 0 <= value <= MAX_COST:  # the usual case builds no path
        return
    path = prefix + name
    if not math.isfinite(value):
        out.append(FieldViolation(path, "must be a finite number"))
    elif value < 0:
        out.append(FieldViolation(path, "must not be negative"))
    elif value > MAX_COST:
        out.append(FieldViolation(path, f"must be at most {MAX_COST:g}"))


def _fields_fine(rec: ProvenanceInput) -> bool:
    """Whether :func:`_check_fields` would find nothing: the usual record, at a glance.

    Every condition here is one the detailed checks test (ASCII text without NUL passes the
    text rule); a record failing any of them is checked field by field for the violations.
    """
    texts = (
        rec.run_id,
        rec.tenant_id,
        rec.variant_slug,
        rec.source,
        rec.model_version,
        rec.adapter_version,
        rec.commit_sha,
    )
    joined = "".join(texts)
    v1, v2, runtime = rec.v1_cost, rec.v2_cost, rec.runtime_ms
    return (
        not (rec.id_set or rec.cost_delta_set or rec.created_at_set)
        and rec.run_id != ""
        and joined.isascii()
        and "\x00" not in joined
        and max(map(len, texts)) <= MAX_STRING_CHARS
        and rec.variant_slug in VARIANT_SLUGS
        and rec.source in SOURCES
        and (v1 is None or 0 <= v1 <= MAX_COST)
        and (v2 is None or 0 <= v2 <= MAX_COST)
        and 0 <= runtime <= MAX_RUNTIME_MS
        and _hash_fine(rec.input_hash)
        and _hash_fine(rec.output_hash)
    )


def _hash_fine(value: str) -> bool:
    """``value`` is empty or 64 lowercase hex digits (what ``_HASH`` matches)."""
    return not value or (len(value) == 64 and not value.strip("0123456789abcdef"))


def _check_fields(rec: ProvenanceInput, prefix: str, out: list[FieldViolation]) -> None:
    """Every violation of the record's fields other than its payload, each by its path."""
    if rec.id_set:
        out.append(FieldViolation(prefix + "id", "is output only; leave it unset"))
    if rec.cost_delta_set:
        out.append(FieldViolation(prefix + "cost_delta", "is output only; it is computed"))
    if rec.created_at_set:
        out.append(FieldViolation(prefix + "created_at", "is output only; the server sets it"))
    for name in _STRING_FIELDS:
        value = getattr(rec, name)
        if len(value) > MAX_STRING_CHARS:
            out.append(
                FieldViolation(prefix + name, f"must be at most {MAX_STRING_CHARS} characters")
            )
        elif "\x00" in value or not value.isascii():  # the text rule passes the rest
            check_text(value, prefix + name, out)
    if not rec.run_id:
        out.append(FieldViolation(prefix + "run_id", "must not be empty"))
    for name, allowed in _CHOICES:
        if getattr(rec, name) not in allowed:
            out.append(FieldViolation(prefix + name, f"must be one of {sorted(allowed)}"))
    _check_cost(rec.v1_cost, prefix, "v1_cost", out)
    _check_cost(rec.v2_cost, prefix, "v2_cost", out)
    if rec.runtime_ms < 0:
        out.append(FieldViolation(prefix + "runtime_ms", "must not be negative"))
    elif rec.runtime_ms > MAX_RUNTIME_MS:
        out.append(FieldViolation(prefix + "runtime_ms", f"must be at most {MAX_RUNTIME_MS}"))
    for name in _HASH_FIELDS:
        value = getattr(rec, name)
        if value and not _HASH.fullmatch(value):
            out.append(FieldViolation(prefix + name, "must be 64 lowercase hex digits"))


def _prepare_one(
    index: int, rec: ProvenanceInput, now: datetime, out: list[FieldViolation], max_depth: int
) -> NewProvenance | None:
    prefix = f"records[{index}]."
    start = len(out)
    if not _fields_fine(rec):
        _check_fields(rec, prefix, out)

    canonical = not (rec.input_hash and rec.output_hash)
    parsed = _payload(rec, prefix, out, canonical=canonical, max_depth=max_depth)
    if parsed is None:
        return None
    payload, payload_json, parts = parsed.value, parsed.stored, parsed.parts
    status = payload.get("status")
    if status is not None and status not in PAYLOAD_STATUSES:
        out.append(
            FieldViolation(prefix + "payload.status", f"must be one of {sorted(PAYLOAD_STATUSES)}")
        )
    input_hash = rec.input_hash or _hash_part(parts, "input", prefix + "input_hash", out)
    output_hash = rec.output_hash or _hash_part(parts, "output", prefix + "output_hash", out)
    if len(out) > start:
        return None
    return NewProvenance(
        run_id=rec.run_id,
        tenant_id=rec.tenant_id,
        variant_slug=rec.variant_slug,
        source=rec.source,
        model_version=rec.model_version,
        adapter_version=rec.adapter_version,
        commit_sha=rec.commit_sha,
        input_hash=input_hash,
        output_hash=output_hash,
        v1_cost=rec.v1_cost,
        v2_cost=rec.v2_cost,
        cost_delta=compute_cost_delta(rec.v1_cost, rec.v2_cost),
        payload=payload,
        payload_json=payload_json,
        runtime_ms=rec.runtime_ms,
        created_at=now,
    )


_LONE_SURROGATE = re.compile(
    r"\\ud[89ab][0-9a-f]{2}(?!\\ud[c-f])|(?<!\\ud[89ab][0-9a-f]{2})\\ud[c-f][0-9a-f]{2}",
    re.IGNORECASE,
)


@dataclass(slots=True)
class _Payload:
    value: dict[str, Any]  # parsed (normalised when ``parts`` is set)
    stored: str  # the JSON text to store
    parts: dict[str, str] | None  # canonical JSON of each top-level value, when computed


def _payload(
    rec: ProvenanceInput,
    prefix: str,
    out: list[FieldViolation],
    *,
    canonical: bool,
    max_depth: int,
) -> _Payload | None:
    """Parse and check the payload; serialise it canonically when hashes must be computed.

    A ``payload_json`` whose hashes the caller supplied is stored as sent (the database keeps
    JSONB, not text, so nothing is lost) and is not re-serialised: that is the fast path.
    Depth is checked before anything recursive runs: on the text by a bracket scan, on a
    Struct in the walk that normalises its numbers. NUL and surrogates are found in the
    serialised text (escaped there), so that no second walk is needed.
    """
    if rec.payload_json and rec.payload is not None:
        out.append(FieldViolation(prefix + "payload_json", "set payload or payload_json, not both"))
        return None
    text = rec.payload_json
    field = prefix + ("payload_json" if text else "payload")
    # Escapes may hide NUL or lone surrogates, which PostgreSQL refuses: re-serialise to see.
    canonical = canonical or "\\u" in text
    serialised: tuple[str, dict[str, str]] | None = None
    try:
        if text:
            if len(text) > 4 * MAX_PAYLOAD_BYTES:  # don't even parse a huge one
                raise ValueError(f"must serialise to at most {MAX_PAYLOAD_BYTES} bytes")
            problem = text_problem(text)  # raw: not JSON either, but say what is wrong
            if problem is not None:
                raise ValueError(problem)
            if json_text_too_deep(text, max_depth=max_depth):
                raise ValueError(depth_problem(max_depth))
            value = loads(text) if canonical else loads_plain(text)
            if not isinstance(value, dict):
                raise ValueError("must be a JSON object")
        else:
            value, serialised = _normal_payload(rec, max_depth)
    except ValueError as exc:
        out.append(FieldViolation(field, str(exc)))
        return None
    parsed = _Payload(value, text, None)
    if not text and serialised is not None:
        parsed.stored, parsed.parts = serialised
    elif canonical or not text:
        # Parsed text, or a Struct the converter normalised: plain JSON types only.
        parsed.stored, parsed.parts = dumps_by_key(value, plain=bool(text or rec.payload_depth))
    stored = parsed.stored
    size = len(stored) if stored.isascii() else len(stored.encode())
    if size > MAX_PAYLOAD_BYTES:
        out.append(FieldViolation(field, f"must serialise to at most {MAX_PAYLOAD_BYTES} bytes"))
    if "\\u0000" in stored:
        out.append(FieldViolation(field, NUL))
    if ("\\ud" in stored or "\\uD" in stored) and _LONE_SURROGATE.search(stored):
        out.append(FieldViolation(field, SURROGATE))
    return parsed


def _normal_payload(
    rec: ProvenanceInput, max_depth: int
) -> tuple[dict[str, Any], tuple[str, dict[str, str]] | None]:
    """A payload given as a value, normalised, with its canonical serialisation when known.

    A value its converter normalised (``payload_depth``) needs only its depth checked. A
    value that needs no normalising (no whole float, a depth the text shows to be fine) is
    serialised as it is, with no walk; any other goes through :func:`normalize_json`, whose
    errors are the ones a caller sees.

    Raises:
        ValueError: the value nests too deep, or holds a non-finite number.
    """
    value = rec.payload or {}
    if rec.payload_depth:
        if rec.payload_depth > max_depth:
            raise ValueError(depth_problem(max_depth))
        return value, None
    serialised = dumps_by_key_if_normal(value)
    if serialised is not None and not json_text_too_deep(serialised[0], max_depth=max_depth):
        return value, serialised
    return normalize_json(value, max_depth=max_depth, texts=False), None


def _hash_part(parts: dict[str, str] | None, key: str, path: str, out: list[FieldViolation]) -> str:
    if parts is None:  # only when both hashes were given, so never asked for
        raise AssertionError("canonical parts were not computed")
    if key not in parts:
        out.append(FieldViolation(path, f"required when payload.{key} is absent"))
        return ""
    return sha256_hex(parts[key])


def prepare_batch(
    records: Sequence[ProvenanceInput],
    *,
    max_batch: int,
    now: datetime,
    max_depth: int = DEFAULT_MAX_JSON_DEPTH,
) -> list[NewProvenance]:
    """Validate a batch and prepare every record for storage.

    ``max_depth`` bounds the nesting of each payload (``COSTSIM_MAX_JSON_DEPTH``).

    Raises:
        InvalidArgument: listing every violation (up to 100), or naming the batch size.

    """
    if not records:
        raise InvalidArgument(
            "records: a batch needs at least one record",
            [FieldViolation("records", "must hold at least one record")],
            reason="EMPTY_BATCH",
        )
    if len(records) > max_batch:
        raise WorkBoundExceeded(
            f"records: {len(records)} records exceed the batch limit of {max_batch}",
            [FieldViolation("records", f"must hold at most {max_batch} records")],
            bound=RECORDS,
            reason=REASONS[RECORDS],
        )
    violations: list[FieldViolation] = []
    rows = [
        _prepare_one(index, rec, now, violations, max_depth) for index, rec in enumerate(records)
    ]
    if violations:
        raise InvalidArgument(_summary(violations), violations[:MAX_REPORTED_VIOLATIONS])
    return [row for row in rows if row is not None]
