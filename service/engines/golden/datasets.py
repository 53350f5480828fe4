"""Golden dataset versions: what one is, its canonical JSONL form and hash, how one is made.

Pure domain (no grpc, no SQL); the design is docs/golden.md. A version is identified by name +
version + the SHA-256 of its canonical JSONL export (:func:`export_jsonl`: one canonical JSON
object per sample, sorted by id), so the same samples always hash alike, however they were
formatted or ordered on the way in. Only two acts make a version: importing samples
(:func:`prepare_dataset`) and promoting a canary run (:func:`promoted_samples`).

Example:
    >>> sample = GoldenSample("s1", {"plan": [{"skill": "kv_get"}], "budget_cents": 10.0}, 0.0,
    ...                       True)
    >>> export_jsonl([sample]).decode()[:60]
    '{"expected_cost_cents":0,"expected_feasible":true,"id":"s1",'

"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, fields, replace
from datetime import datetime
from typing import Any

from costsim_analytics.engines.canonical import canonical_json, loads
from costsim_analytics.engines.cost_models.plans import parse_plan
from costsim_analytics.engines.errors import FailedPrecondition, FieldViolation, InvalidArgument
from costsim_analytics.engines.limits import PlanBounds, WorkLimits, check_samples
from costsim_analytics.engines.text import (
    DEFAULT_MAX_JSON_DEPTH,
    check_text,
    normalize_json,
    shown,
)

MAX_DESCRIPTION = 1024
MAX_SAMPLE_ID = 256
MAX_VERSION = 2**31 - 1  # an INTEGER column
MAX_NUMBER = 1e15  # expected costs and durations: far beyond any real one
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
NAME_RULE = "must be 1 to 128 letters, digits, '.', '_' or '-', starting with a letter or digit"
SOURCE_IMPORT = "import"
PROMOTE_PREFIX = "promote:"


class RunNotPromotable(FailedPrecondition):
    """A canary run whose artifacts cannot become a golden version."""

    reason = "RUN_NOT_PROMOTABLE"


@dataclass(frozen=True, slots=True)
class GoldenSample:
    """One reference sample: a plan input and what it should cost."""

    id: str
    plan_input: Any
    expected_cost_cents: float
    expected_feasible: bool
    expected_duration_ms: float | None = None


@dataclass(frozen=True, slots=True)
class GoldenDataset:
    """One stored version; ``samples`` (sorted by id) only where a caller asked for them."""

    name: str
    version: int
    sha256: str
    description: str
    source: str
    sample_count: int
    active: bool
    created_at: datetime
    id: int = 0
    samples: tuple[GoldenSample, ...] = ()


@dataclass(frozen=True, slots=True)
class NewGoldenDataset:
    """A validated version to store: canonical samples in export order and their hash."""

    name: str
    description: str
    source: str
    samples: tuple[GoldenSample, ...]
    sha256: str


# --- validation --------------------------------------------------------------------------------


def name_violations(name: str, field: str = "name") -> list[FieldViolation]:
    """What is wrong with a dataset name (nothing: an empty list)."""
    return [] if NAME_PATTERN.fullmatch(name) else [FieldViolation(field, NAME_RULE)]


def raise_if(bad: Sequence[FieldViolation]) -> None:
    """Raise one InvalidArgument naming every violation, if there are any."""
    if bad:
        raise InvalidArgument(f"{bad[0].field}: {bad[0].description}", bad)


def validate_lookup(name: str, version: int | None) -> None:
    """A dataset reference: a valid name and, if given, a version from 1."""
    bad = name_violations(name)
    if version is not None and not 1 <= version <= MAX_VERSION:
        bad.append(FieldViolation("version", f"must be from 1 to {MAX_VERSION}"))
    raise_if(bad)


def _sample_violations(
    s: GoldenSample, path: str, max_depth: int, plans: PlanBounds | None
) -> tuple[GoldenSample, list[FieldViolation]]:
    bad: list[FieldViolation] = []
    if not s.id or len(s.id) > MAX_SAMPLE_ID:
        bad.append(FieldViolation(f"{path}.id", f"must be 1 to {MAX_SAMPLE_ID} characters"))
    else:
        check_text(s.id, f"{path}.id", bad)
    plan = s.plan_input
    try:
        plan = normalize_json(plan, max_depth=max_depth)  # depth and text rule, no recursion
    except ValueError as exc:
        bad.append(FieldViolation(f"{path}.plan_input", str(exc)))
    else:
        before = len(plans.violations) if plans else 0
        if plans:  # before the plan is parsed: parsing is work in proportion to its steps
            plans.check(plan, f"{path}.plan_input")
        if not plans or len(plans.violations) == before:
            try:
                parse_plan(plan)
            except ValueError as exc:  # InvalidPlan
                bad.append(FieldViolation(f"{path}.plan_input", str(exc)))
    for name in ("expected_cost_cents", "expected_duration_ms"):
        value = getattr(s, name)
        if value is not None and not (
            isinstance(value, int | float) and math.isfinite(value) and 0 <= value <= MAX_NUMBER
        ):
            bad.append(
                FieldViolation(f"{path}.{name}", f"must be a number from 0 to {MAX_NUMBER:g}")
            )
    return replace(s, plan_input=plan), bad


def prepare_dataset(
    name: str,
    description: str,
    source: str,
    samples: Sequence[GoldenSample],
    *,
    max_depth: int = DEFAULT_MAX_JSON_DEPTH,
    limits: WorkLimits | None = None,
) -> NewGoldenDataset:
    """Validate a new version, put its samples in canonical form and order, and hash them.

    ``max_depth`` bounds each plan input's nesting (``COSTSIM_MAX_JSON_DEPTH``); ``limits``,
    when given, the samples and each plan's size (``engines/limits.py``), checked first.

    Raises:
        WorkBoundExceeded: over a bound (reason ``TOO_MANY_SAMPLES`` or ``PLAN_TOO_LARGE``).
        InvalidArgument: naming every bad field (up to 100), as ``samples[3].expected_cost_cents``.
    """
    if limits:
        check_samples(len(samples), limits)
    plans = PlanBounds(limits) if limits else None
    bad = name_violations(name)
    if len(description) > MAX_DESCRIPTION:
        bad.append(FieldViolation("description", f"must be at most {MAX_DESCRIPTION} characters"))
    else:
        check_text(description, "description", bad)
    if not samples:
        bad.append(FieldViolation("samples", "must hold at least one sample"))
    seen: dict[str, int] = {}
    clean = []
    for i, sample in enumerate(samples):
        fixed, problems = _sample_violations(sample, f"samples[{i}]", max_depth, plans)
        if sample.id in seen:
            problems.append(
                FieldViolation(f"samples[{i}].id", f"duplicate of samples[{seen[sample.id]}].id")
            )
        seen.setdefault(sample.id, i)
        bad.extend(problems)
        clean.append(fixed)
        if len(bad) + (len(plans.violations) if plans else 0) >= 100:
            break
    if plans:
        plans.refuse_if_over()
    raise_if(bad[:100])
    ordered = tuple(sorted(clean, key=lambda s: s.id))
    return NewGoldenDataset(name, description, source, ordered, dataset_sha256(ordered))


# --- canonical JSONL ---------------------------------------------------------------------------


def sample_to_json(s: GoldenSample) -> dict[str, Any]:
    """A sample as its export object (``expected_duration_ms`` only when known)."""
    row = {f.name: getattr(s, f.name) for f in fields(s)}
    if s.expected_duration_ms is None:
        del row["expected_duration_ms"]
    return row


def export_jsonl(samples: Sequence[GoldenSample]) -> bytes:
    """The canonical export: one canonical JSON object per line, sorted by id (code points)."""
    ordered = sorted(samples, key=lambda s: s.id)
    return "".join(canonical_json(sample_to_json(s)) + "\n" for s in ordered).encode("ascii")


def dataset_sha256(samples: Sequence[GoldenSample]) -> str:
    """SHA-256 hex of :func:`export_jsonl`: a version's content identity."""
    return hashlib.sha256(export_jsonl(samples)).hexdigest()


def parse_jsonl(text: str) -> list[GoldenSample]:
    """Samples from JSONL (the export format; blank lines are skipped, key order is free).

    Raises:
        InvalidArgument: a line that is not a JSON object with the sample's fields; the
            violation's field is ``line N``.
    """
    samples = []
    known = {f.name for f in fields(GoldenSample)}
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = loads(line)
        except ValueError as exc:
            raise InvalidArgument.field(f"line {number}", f"not JSON ({exc})") from None
        if not isinstance(row, dict) or not {"id", "expected_cost_cents"} <= set(row):
            raise InvalidArgument.field(
                f"line {number}", "must be an object with id, plan_input, expected_cost_cents"
            )
        if extra := sorted(set(row) - known):
            raise InvalidArgument.field(f"line {number}", f"unknown fields {extra}")
        samples.append(
            GoldenSample(
                id=str(row["id"]),
                plan_input=row.get("plan_input"),
                expected_cost_cents=row["expected_cost_cents"],
                expected_feasible=bool(row.get("expected_feasible", False)),
                expected_duration_ms=row.get("expected_duration_ms"),
            )
        )
    return samples


def promoted_samples(run_id: str, comparisons: bytes) -> list[GoldenSample]:
    """A canary run's samples with its baseline model's outputs as the expectations.

    ``comparisons`` is the run's ``comparisons.jsonl``; samples the baseline could not
    estimate are left out.

    Raises:
        RunNotPromotable: the artifact has no plan inputs (a run from before they were
            recorded), repeats a sample id, no sample was estimated, or an estimate is beyond
            what a golden sample may expect (a cost or duration above 1e15).
    """
    samples: dict[str, GoldenSample] = {}
    for line in comparisons.decode("utf-8").splitlines():
        row = json.loads(line)
        if "plan_input" not in row:
            raise RunNotPromotable(
                f"canary run {run_id!r} did not record its plan inputs (comparisons.jsonl "
                "predates them); it cannot be promoted"
            )
        base = row["baseline"]
        if not base["valid"]:
            continue
        sample_id = str(row["id"])
        if sample_id in samples:
            raise RunNotPromotable(
                f"canary run {run_id!r} has two samples with id {sample_id!r}; it cannot be "
                "promoted"
            )
        sample = GoldenSample(
            sample_id, row["plan_input"], base["cost_cents"], base["feasible"], base["duration_ms"]
        )
        # Checked here, not left to prepare_dataset: its violations would name fields
        # (samples[3].expected_cost_cents) of a request this caller did not send.
        for name in ("expected_cost_cents", "expected_duration_ms"):
            value = getattr(sample, name)
            if value is not None and not (math.isfinite(value) and 0 <= value <= MAX_NUMBER):
                raise RunNotPromotable(
                    f"canary run {run_id!r}: the baseline estimate of sample {shown(sample_id)} "
                    f"({name.removeprefix('expected_')} {value:g}) is beyond what a golden "
                    f"sample may expect (0 to {MAX_NUMBER:g}); it cannot be promoted"
                )
        samples[sample_id] = sample
    if not samples:
        raise RunNotPromotable(f"canary run {run_id!r} has no estimated sample to promote")
    return list(samples.values())
