"""The RunCanary command, its validation, and the thresholds it resolves to."""

from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace

from costsim_analytics.engines.canary.evaluation import CanaryConfig, Sample
from costsim_analytics.engines.canary.judge import JUDGES
from costsim_analytics.engines.canonical import content_hash
from costsim_analytics.engines.errors import FieldViolation, InvalidArgument
from costsim_analytics.engines.golden.datasets import name_violations
from costsim_analytics.engines.limits import (
    MAX_SAMPLES,
    PlanBounds,
    WorkLimits,
    check_artifact_bytes,
    check_samples,
)
from costsim_analytics.engines.reports import CanaryReport
from costsim_analytics.engines.text import (
    DEFAULT_MAX_JSON_DEPTH,
    check_text,
    check_texts,
    normalize_json,
)

DEFAULT_LIMITS = WorkLimits()
DEFAULT_SAMPLE_COUNT = 100
DEFAULT_LOOKBACK_DAYS = 7


@dataclass(frozen=True, slots=True)
class RunCanary:
    """What a caller asks of one canary run; None means "the configured default"."""

    sample_count: int = 0
    lookback_days: int = 0
    drift_threshold: float | None = None
    outlier_threshold: float | None = None
    outlier_max_pct: float | None = None
    major_drift_max_pct: float | None = None
    min_samples: int | None = None
    median_delta_tolerance: float | None = None
    baseline_model: str = ""
    candidate_model: str = ""
    samples: tuple[Sample, ...] = ()
    seed: int = 0
    request_id: str = ""
    golden_dataset: str = ""
    judge: str = ""
    """``"calibrated"`` or ``"legacy"``; empty: the configured judge."""


@dataclass(frozen=True, slots=True)
class RunCanaryResult:
    """The report, and whether it replays an earlier call with the same request_id."""

    report: CanaryReport
    replayed: bool = False


def validate(
    cmd: RunCanary,
    *,
    max_depth: int = DEFAULT_MAX_JSON_DEPTH,
    limits: WorkLimits = DEFAULT_LIMITS,
) -> None:
    """Reject out-of-range numbers, oversized sample lists, bad text and long request ids.

    ``max_depth`` bounds each sample's plan input (``COSTSIM_MAX_JSON_DEPTH``); ``limits`` the
    work of the run (``engines/limits.py``): the samples it carries or asks for, each plan's
    size, and the artifact bytes its plans alone would take. A bound is refused before the
    other rules are reported, and before any sample is looked at when it is the sample count.

    Raises:
        WorkBoundExceeded: over a bound (reason ``TOO_MANY_SAMPLES``, ``PLAN_TOO_LARGE`` or
            ``ARTIFACTS_TOO_LARGE``).
        InvalidArgument: naming every other bad field (up to 100).
    """
    check_samples(len(cmd.samples), limits)
    check_samples(cmd.sample_count, limits, field="sample_count")
    bad: list[FieldViolation] = []
    check_texts(cmd, ("baseline_model", "candidate_model", "request_id"), bad)
    if cmd.sample_count < 0:
        bad.append(FieldViolation("sample_count", f"must be between 0 and {limits.max_samples}"))
    if cmd.lookback_days < 0 or cmd.lookback_days > 3650:
        bad.append(FieldViolation("lookback_days", "must be between 0 and 3650"))
    for name in ("drift_threshold", "outlier_threshold", "median_delta_tolerance"):
        value = getattr(cmd, name)
        if value is not None and (not math.isfinite(value) or value < 0):
            bad.append(FieldViolation(name, "must be a finite number >= 0"))
    for name in ("outlier_max_pct", "major_drift_max_pct"):
        value = getattr(cmd, name)
        if value is not None and not (math.isfinite(value) and 0 <= value <= 1):
            bad.append(FieldViolation(name, "must be a share between 0 and 1"))
    if cmd.min_samples is not None and not 1 <= cmd.min_samples <= MAX_SAMPLES:
        bad.append(FieldViolation("min_samples", f"must be between 1 and {MAX_SAMPLES}"))
    plans = PlanBounds(limits)
    for i, sample in enumerate(cmd.samples):
        if not sample.id or len(sample.id) > 256:
            bad.append(FieldViolation(f"samples[{i}].id", "must be 1 to 256 characters"))
        else:
            check_text(sample.id, f"samples[{i}].id", bad)
        path = f"samples[{i}].plan_input"
        try:
            normalize_json(sample.plan_input, max_depth=max_depth)
        except ValueError as exc:
            bad.append(FieldViolation(path, str(exc)))
        else:  # nested within bounds, so the encoder that measures it cannot recurse too deep
            plans.check(sample.plan_input, path)
        if len(bad) + len(plans.violations) >= 100:
            break
    plans.refuse_if_over()
    # The plans alone are a lower bound of comparisons.jsonl: refused before the models run.
    check_artifact_bytes(plans.total_bytes, limits, "samples", at_least=True)
    if len(cmd.request_id) > 128:
        bad.append(FieldViolation("request_id", "must be at most 128 characters"))
    if cmd.golden_dataset:
        bad.extend(name_violations(cmd.golden_dataset, "golden_dataset"))
    if cmd.judge and cmd.judge not in JUDGES:
        bad.append(FieldViolation("judge", f"must be one of {sorted(JUDGES)}"))
    if bad:
        first = bad[0]
        raise InvalidArgument(f"{first.field}: {first.description}", bad)


# The thresholds a request may override: the CanaryConfig fields it names alike (but the
# judge, which it names by its key in JUDGES).
_CONFIG_FIELDS = {f.name for f in fields(CanaryConfig)} - {"judge"}
_OVERRIDABLE = tuple(f.name for f in fields(RunCanary) if f.name in _CONFIG_FIELDS)


def resolve_config(cmd: RunCanary, defaults: CanaryConfig) -> CanaryConfig:
    """The configured thresholds with the request's overrides applied."""
    requested = {name: getattr(cmd, name) for name in _OVERRIDABLE}
    overrides = {name: value for name, value in requested.items() if value is not None}
    if cmd.judge:
        overrides["judge"] = JUDGES[cmd.judge]
    return replace(defaults, **overrides)


def fingerprint(cmd: RunCanary) -> str:
    """Digest of everything in the request except its request_id."""
    data = {f.name: getattr(cmd, f.name) for f in fields(cmd) if f.name != "request_id"}
    data["samples"] = [[s.id, s.plan_input] for s in cmd.samples]
    # Left out when unset, so that the digests of requests from before these fields existed
    # did not change (a field added later needs the same).
    for name in ("golden_dataset", "judge"):
        if not data[name]:
            del data[name]
    return content_hash(data)
