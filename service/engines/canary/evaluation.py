"""The canary: replay samples through two cost models, measure the drift, judge it.

Pure domain: it takes samples and models and returns an :class:`Evaluation` (the report and
everything behind it) and the artifact bytes. Loading samples, the run lock, writing artifacts
and the report row are the handler's business (``handlers/canary.py``).

Verdict (docs/domain.md defaults, each overridable): the rules are KL(baseline ‖ candidate) above
0.2, more than 5 % of samples outliers (drift_score > 0.5), more than 10 % major drift
(MAJOR_DRIFT + MISMATCH), and optionally (off by default) the median relative delta beyond
±tolerance. The configured judge (``canary/judge.py``, applied by ``canary/verdict.py``)
decides them: ``calibrated`` (the default) tests each rule, shares one false-alarm budget
among them (Holm) and answers ``inconclusive`` when the evidence cannot decide; ``legacy``
is the predecessor's point-estimate rule. Fail closed: no samples, mostly malformed samples,
or fewer valid samples than ``min_samples`` give status ``error``, never ``pass``. A golden
comparison (``engines/golden/comparison.py: judge_report``, applied by the handler)
adds its ``GOLDEN_COMPARISON_FAILED`` reasons and fails a report that would pass or is inconclusive.
"""

from __future__ import annotations

import io
import json
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields, replace
from datetime import datetime
from typing import Any

import numpy as np
import numpy.typing as npt

from costsim_analytics.engines import statistics as st
from costsim_analytics.engines.canary.judge import DEFAULT_JUDGE, JUDGES, JudgeSpec
from costsim_analytics.engines.canary.verdict import (
    RelativeDelta,
    VerdictSettings,
    derived_seed,
    judge_run,
)
from costsim_analytics.engines.cost_models import BatchEstimates, CostModel, PlanBatch, StepColumns
from costsim_analytics.engines.findings import FailureReason, Interval
from costsim_analytics.engines.reports import (
    CanaryReport,
    PairedTestSummary,
    ReportStatistics,
    report_to_json,
)

Progress = Callable[[str], None]

COMPARISONS_FILE = "comparisons.jsonl"
DIFFS_FILE = "diffs.jsonl"
REPORT_FILE = "report.json"


@dataclass(frozen=True, slots=True)
class CanaryConfig:
    """Verdict thresholds and statistics settings."""

    drift_threshold: float = 0.2
    outlier_threshold: float = 0.5
    outlier_max_pct: float = 0.05
    major_drift_max_pct: float = 0.10
    min_samples: int = 30
    max_invalid_share: float = 0.5
    median_delta_tolerance: float | None = None
    bootstrap_resamples: int = 2000
    confidence_level: float = 0.95
    judge: JudgeSpec = JUDGES[DEFAULT_JUDGE]
    alpha: float = 0.01
    """Family-wise false-alarm budget of the calibrated judge's rules (Holm)."""
    permutations: int = 1000
    """Sign-flip permutations of the calibrated judge's KL test."""

    def verdict_settings(self) -> VerdictSettings:
        """The part of the configuration the verdict reads."""
        return VerdictSettings(
            self.drift_threshold,
            self.outlier_max_pct,
            self.major_drift_max_pct,
            self.median_delta_tolerance,
            self.confidence_level,
            self.judge,
            self.alpha,
            self.permutations,
        )


@dataclass(frozen=True, slots=True)
class Sample:
    """One plan input to replay, with an id to find it again in the artifacts."""

    id: str
    plan_input: Any


@dataclass(frozen=True)
class Evaluation:
    """A judged run: the report plus the per-sample data behind it."""

    report: CanaryReport
    config: CanaryConfig
    samples: Sequence[Sample]
    baseline: BatchEstimates | None
    candidate: BatchEstimates | None
    drift: st.Drift | None
    divergence: st.Divergence | None
    judged_divergence: st.Divergence | None = None
    """KL/JS under the judge's binning (the one its KL rule read)."""


def choose(ids: Sequence[int], k: int, seed: int) -> list[int]:
    """Up to ``k`` of ``ids``, deterministic for a seed and the same ids, in ascending order."""
    if len(ids) <= k:
        return list(ids)
    return sorted(random.Random(seed).sample(list(ids), k))


def _interval(ci: st.ConfidenceInterval) -> Interval | None:
    if not np.isfinite(ci.estimate):
        return None
    return Interval(ci.estimate, ci.low, ci.high, ci.level, ci.resamples)


def _reason(
    code: str, metric: str, observed: float, comparator: str, threshold: float, message: str
) -> FailureReason:
    return FailureReason(code, metric, float(observed), float(threshold), comparator, message)


def _closed_reasons(total: int, valid: int, config: CanaryConfig) -> list[FailureReason]:
    """Why a run cannot be judged at all (fail closed), if it cannot."""
    if total == 0:
        return [_reason("NO_SAMPLES", "total_samples", 0, "<", 1, "no samples")]
    invalid_share = (total - valid) / total
    if invalid_share > config.max_invalid_share:
        return [
            _reason(
                "MOSTLY_INVALID_SAMPLES",
                "invalid_share",
                invalid_share,
                ">",
                config.max_invalid_share,
                f"{total - valid} of {total} samples could not be estimated "
                f"({invalid_share:.0%} > {config.max_invalid_share:.0%})",
            )
        ]
    if valid < config.min_samples:
        return [
            _reason(
                "INSUFFICIENT_SAMPLES",
                "total_samples",
                valid,
                "<",
                config.min_samples,
                f"only {valid} valid samples, fewer than the minimum of {config.min_samples}",
            )
        ]
    return []


def _no_samples_judged(
    run_id: str, timestamp: datetime, baseline: str, candidate: str
) -> CanaryReport:
    """A report with no sample judged yet: status error, not passed, every count zero."""
    return CanaryReport(
        run_id=run_id,
        timestamp=timestamp,
        status="error",
        total_samples=0,
        matching_samples=0,
        minor_drift_samples=0,
        major_drift_samples=0,
        median_cost_diff=None,
        p90_cost_diff=None,
        kl_divergence=None,
        outlier_count=0,
        passed=False,
        baseline_model=baseline,
        candidate_model=candidate,
    )


def evaluate(
    samples: Sequence[Sample],
    baseline_model: CostModel,
    candidate_model: CostModel,
    config: CanaryConfig,
    *,
    run_id: str,
    timestamp: datetime,
    seed: int,
    sample_source: str,
    progress: Progress | None = None,
) -> Evaluation:
    """Run both models over the samples and judge the drift."""
    say = progress or (lambda _stage: None)
    base_report = replace(
        _no_samples_judged(run_id, timestamp, baseline_model.name, candidate_model.name),
        sample_source=sample_source,
        seed=seed,
    )
    if not samples:
        reasons = _closed_reasons(0, 0, config)
        report = replace(
            base_report, reasons=tuple(reasons), failure_reasons=tuple(r.message for r in reasons)
        )
        return Evaluation(report, config, samples, None, None, None, None)

    # Read once, shared by both models (built-in models reuse the parsed columns).
    inputs = PlanBatch([s.plan_input for s in samples])
    say("baseline model")
    baseline = baseline_model.estimate_batch(inputs)
    say("candidate model")
    candidate = candidate_model.estimate_batch(inputs)
    say("statistics")
    valid = baseline.valid & candidate.valid
    n_valid = int(valid.sum())
    closed = _closed_reasons(len(samples), n_valid, config)
    report = replace(base_report, invalid_samples=len(samples) - n_valid, total_samples=n_valid)
    if n_valid == 0:
        report = replace(
            report, reasons=tuple(closed), failure_reasons=tuple(r.message for r in closed)
        )
        return Evaluation(report, config, samples, baseline, candidate, None, None)

    v1 = baseline.cost_cents[valid]
    v2 = candidate.cost_cents[valid]
    d = st.drift(v1, v2, baseline.feasible[valid], candidate.feasible[valid])
    counts = np.bincount(d.verdict, minlength=4)
    abs_delta = np.abs(d.cost_delta)
    relative = d.cost_delta / np.maximum(v1, 1.0)
    outlier_count = int(st.outliers(d.drift_score, config.outlier_threshold).sum())
    major = int(counts[st.MAJOR_DRIFT] + counts[st.MISMATCH])
    div = st.divergence(v1, v2)
    paired = st.paired_test(v1, v2)
    resamples, level = config.bootstrap_resamples, config.confidence_level
    median_ci = st.bootstrap_ci(abs_delta, "median", level=level, resamples=resamples, seed=seed)
    p90_seed, rel_seed = derived_seed(seed, 1), derived_seed(seed, 2)
    p90_ci = st.bootstrap_ci(abs_delta, "p90", level=level, resamples=resamples, seed=p90_seed)
    rel_ci = st.bootstrap_ci(relative, "median", level=level, resamples=resamples, seed=rel_seed)
    rel = None
    if config.median_delta_tolerance is not None:
        # The same stream as rel_ci's, for the rule's p-value (canary/judge.py: median_rule).
        replicates = st.bootstrap_replicates(
            relative, "median", resamples, np.random.default_rng(rel_seed)
        )
        rel = RelativeDelta(rel_ci, replicates)
    judged = None
    if not closed:
        judged = judge_run(
            v1,
            v2,
            outliers=outlier_count,
            major=major,
            rel=rel,
            settings=config.verdict_settings(),
            seed=seed,
        )
    statistics = ReportStatistics(
        js_divergence=div.js,
        # The summary's fields are the leading fields of the test's.
        paired_test=PairedTestSummary(
            *(getattr(paired, f.name) for f in fields(PairedTestSummary))
        ),
        median_cost_diff_ci=_interval(median_ci),
        p90_cost_diff_ci=_interval(p90_ci),
        median_relative_delta_ci=_interval(rel_ci),
        kl_bins=div.bins,
        kl_epsilon=div.epsilon,
        outlier_share=outlier_count / n_valid,
        major_drift_share=major / n_valid,
        judgement=None if judged is None else judged.judgement,
    )
    reasons = list(closed) if judged is None else list(judged.reasons)
    status = "error" if judged is None else judged.status
    report = replace(
        report,
        status=status,
        passed=status == "pass",
        matching_samples=int(counts[st.MATCH]),
        minor_drift_samples=int(counts[st.MINOR_DRIFT]),
        major_drift_samples=major,
        median_cost_diff=st.percentile(abs_delta, 50),
        p90_cost_diff=st.percentile(abs_delta, 90),
        kl_divergence=div.kl,
        outlier_count=outlier_count,
        statistics=statistics,
        reasons=tuple(reasons),
        failure_reasons=tuple(r.message for r in reasons),
    )
    judged_div = None if judged is None else judged.divergence
    return Evaluation(report, config, samples, baseline, candidate, d, div, judged_div)


def skipped(run_id: str, timestamp: datetime, baseline: str, candidate: str) -> CanaryReport:
    """The answer of a replica that found another run in progress: skipped, not passed.

    Nothing was judged, so nothing passed: a run that cannot take the lock must not let the
    nightly canary look green (the CLI exits non-zero for it).
    """
    message = "another canary run is in progress (run lock held); this request was skipped"
    return replace(
        _no_samples_judged(run_id, timestamp, baseline, candidate),
        status="skipped",
        passed=False,
        failure_reasons=(message,),
        reasons=(_reason("RUN_IN_PROGRESS", "run_lock", 1, "==", 1, message),),
    )


# --- artifacts ---------------------------------------------------------------------------------


def _estimates(batch: BatchEstimates, i: int, steps: _Breakdown | None) -> dict[str, Any]:
    row: dict[str, Any] = {
        "cost_cents": _num(batch.cost_cents[i]),
        "duration_ms": _num(batch.duration_ms[i]),
        "feasible": bool(batch.feasible[i]),
        "valid": bool(batch.valid[i]),
        "error": batch.errors[i],
    }
    if batch.valid[i]:
        row["cumulative_risk"] = float(batch.cumulative_risk[i])
        if steps is None:
            row["steps"] = None  # the model gives no breakdown (recorded, not guessed)
        else:
            row["steps"], skills = steps.of(i)
            if skills is not None:
                row["step_skills"] = skills
    return row


def _num(value: float) -> float | None:
    return None if np.isnan(value) else float(value)


def _compact_rows(matrix: npt.NDArray[np.float64]) -> list[list[float | int]]:
    """The rows as lists; a whole number (of cents, of milliseconds) as an int, without ".0".

    Same values, fewer bytes: most V1 costs and latencies are whole numbers.
    """
    cells = matrix.astype(object)
    whole = (matrix == np.rint(matrix)) & (np.abs(matrix) < 2**53)
    cells[whole] = matrix[whole].astype(np.int64)
    rows: list[list[float | int]] = cells.tolist()
    return rows


class _Breakdown:
    """One model's per-step estimates as ``[cost, latency, risk]`` rows, sample by sample."""

    __slots__ = ("_rows", "_skills", "_starts")

    def __init__(self, steps: StepColumns) -> None:
        self._rows = _compact_rows(
            np.column_stack((steps.cost_cents, steps.latency_ms, steps.risk))
        )
        self._starts = np.concatenate(([0], np.cumsum(steps.n_steps))).tolist()
        self._skills = steps.skills

    def of(self, i: int) -> tuple[list[list[float | int]], list[str] | None]:
        start, end = self._starts[i], self._starts[i + 1]
        skills = None if self._skills is None else list(self._skills[start:end])
        return self._rows[start:end], skills


_LINE = json.JSONEncoder(separators=(",", ":")).encode


def _per_sample(ev: Evaluation) -> tuple[bytes, bytes]:
    """``comparisons.jsonl`` (every sample) and ``diffs.jsonl`` (the drifting ones).

    A comparison row carries the sample's plan input (so that a run can be promoted to a
    golden dataset), both models' estimates and, for a valid sample, its drift. For a valid
    sample each model's estimates also carry its ``cumulative_risk`` and its per-step
    breakdown, ``steps``: one ``[cost_cents, latency_ms, risk]`` per step (``null`` when the
    model gives none; ``step_skills`` names the entries when they are not the plan's steps),
    from which a run is explained (``canary/explain.py``). Runs written before that have no
    ``steps``. A diff row
    points at its comparison by ``index`` (the 0-based line of ``comparisons.jsonl``) and
    repeats only the sample id and the drift, not the plan. Runs written before that repeated
    the whole comparison row, plan included (readers tell them apart by ``plan_input``).

    Each row is encoded as soon as it is built, into one growing buffer per file: the rows
    are never all held as objects, nor the text twice. Keys stay in the order the rows are
    built in (deterministic); no sorting, no spaces.
    """
    if ev.baseline is None or ev.candidate is None:
        return b"", b""
    comparisons, diffs = io.BytesIO(), io.BytesIO()
    valid: npt.NDArray[np.bool_] = ev.baseline.valid & ev.candidate.valid
    position = np.cumsum(valid) - 1  # index into the drift arrays, for valid samples
    base_steps = None if ev.baseline.steps is None else _Breakdown(ev.baseline.steps)
    cand_steps = None if ev.candidate.steps is None else _Breakdown(ev.candidate.steps)
    for i, sample in enumerate(ev.samples):
        row: dict[str, Any] = {
            "id": sample.id,
            "plan_input": sample.plan_input,
            "baseline": _estimates(ev.baseline, i, base_steps),
            "candidate": _estimates(ev.candidate, i, cand_steps),
        }
        if valid[i] and ev.drift is not None:
            j = int(position[i])
            drift = {
                "cost_delta": float(ev.drift.cost_delta[j]),
                "cost_delta_pct": float(ev.drift.cost_delta_pct[j]),
                "drift_score": float(ev.drift.drift_score[j]),
                "verdict": st.VERDICT_NAMES[int(ev.drift.verdict[j])],
            }
            row.update(drift)
            if ev.drift.verdict[j] != st.MATCH:
                diff = {"index": i, "id": sample.id, **drift}
                diffs.write(_LINE(diff).encode())
                diffs.write(b"\n")
        comparisons.write(_LINE(row).encode())
        comparisons.write(b"\n")
    return comparisons.getvalue(), diffs.getvalue()


def sample_artifacts(ev: Evaluation) -> dict[str, bytes]:
    """The per-sample artifacts (comparisons for all, diffs for drifting samples)."""
    comparisons, diffs = _per_sample(ev)
    return {COMPARISONS_FILE: comparisons, DIFFS_FILE: diffs}


def report_artifact(ev: Evaluation, report: CanaryReport, request: dict[str, Any]) -> bytes:
    """The report JSON: the report, its thresholds, the binning behind KL, the request."""
    data = report_to_json(report)
    # Every threshold and setting, by field; the judge by its name.
    config = {f.name: getattr(ev.config, f.name) for f in fields(ev.config)}
    data["config"] = {**config, "judge": ev.config.judge.name}
    if ev.divergence is not None:
        data["kl_binning"] = {
            "edges": list(ev.divergence.edges),
            "baseline_counts": list(ev.divergence.baseline_counts),
            "candidate_counts": list(ev.divergence.candidate_counts),
            "epsilon": ev.divergence.epsilon,
            "bins": ev.divergence.bins,
            "log_base": "e",
        }
    if ev.judged_divergence is not None:
        binning = ev.config.judge.binning
        data["judge_binning"] = {
            "judge": ev.config.judge.name,
            "method": binning.method,
            "smoothing": binning.smoothing,
            "edges": list(ev.judged_divergence.edges),
            "baseline_counts": list(ev.judged_divergence.baseline_counts),
            "candidate_counts": list(ev.judged_divergence.candidate_counts),
            "bins": ev.judged_divergence.bins,
            "epsilon": binning.epsilon,
            "pseudocount": binning.pseudocount,
            "log_base": "e",
        }
    data["request"] = request
    return (json.dumps(data, indent=2, sort_keys=True) + "\n").encode()
