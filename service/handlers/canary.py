"""Canary handlers: run one (artifacts first, then the report row) and reconcile.

The seed's invariant lives in :meth:`ReportPublisher.publish`, the only code that writes a
canary report row: the artifacts are written (atomically, with checksums) before the row, and
a failure to write them means no row. A failure to write the row after the artifacts were
written leaves them for ``costsim-analytics canary reconcile``, which imports every complete
report in the artifact store that the database lacks.
"""

from __future__ import annotations

import functools
import json
import logging
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any

from costsim_analytics.engines.canary import evaluation as engine
from costsim_analytics.engines.canary.command import (
    DEFAULT_LOOKBACK_DAYS,
    DEFAULT_SAMPLE_COUNT,
    RunCanary,
    RunCanaryResult,
    fingerprint,
    resolve_config,
    validate,
)
from costsim_analytics.engines.canary.evaluation import REPORT_FILE, CanaryConfig, Progress, Sample
from costsim_analytics.engines.canary.synthetic import synthetic_samples
from costsim_analytics.engines.cost_models import CostModel, load_cost_model
from costsim_analytics.engines.errors import (
    AlreadyExists,
    ArtifactStoreUnavailable,
    DatabaseUnavailable,
    DeadlineExceeded,
    FailedPrecondition,
    NotFound,
    Unavailable,
)
from costsim_analytics.engines.golden import comparison as golden
from costsim_analytics.engines.golden.comparison import GoldenConfig
from costsim_analytics.engines.golden.datasets import GoldenDataset
from costsim_analytics.engines.limits import WorkLimits, check_artifact_bytes, plan_bytes
from costsim_analytics.engines.maintenance import Reconcile, ReconcileResult
from costsim_analytics.engines.reports import ArtifactRef, CanaryReport, report_from_json
from costsim_analytics.engines.text import DEFAULT_MAX_JSON_DEPTH
from costsim_analytics.handlers.call import Call, Clock, utc_now
from costsim_analytics.handlers.golden import load_dataset
from costsim_analytics.handlers.idempotency import Claim, ClaimTaken, Replay
from costsim_analytics.handlers.ports import ArtifactStore, RunLock, UnitOfWork, UnitOfWorkFactory
from costsim_analytics.handlers.registry import OP_CANARY_RUN

log = logging.getLogger(__name__)

# Provenance plan inputs are read this many at a time (and their bytes checked after each).
PLAN_CHUNK = 1000


class ArtifactsUnwritable(FailedPrecondition):
    """The artifact store refused the artifacts; no report row was written."""

    reason = "ARTIFACTS_UNWRITABLE"


class ReportNotPersisted(Unavailable):
    """The artifacts are saved but the report row could not be written."""

    reason = "REPORT_NOT_PERSISTED"


def _replayed_run(uow: UnitOfWork, response: Mapping[str, Any]) -> RunCanaryResult:
    report = uow.reports.get_by_run_id(str(response["run_id"]))
    if report is None:
        raise NotFound(f"canary run {response['run_id']!r} of this request_id is gone")
    return RunCanaryResult(report, replayed=True)


RUN_REPLAY: Replay[RunCanary, RunCanaryResult] = Replay(
    request_id=lambda cmd: cmd.request_id, digest=fingerprint, replay=_replayed_run
)


def new_run_id(now: datetime) -> str:
    """``canary-20261126T110000Z-1a2b3c4d``: sortable, unique, safe as a directory name."""
    return f"canary-{now:%Y%m%dT%H%M%SZ}-{uuid.uuid4().hex[:8]}"


@dataclass(frozen=True)
class ReportPublisher:
    """Artifacts first, then the report row: the one place that writes canary reports."""

    uow_factory: UnitOfWorkFactory
    artifacts: ArtifactStore
    clock: Clock = utc_now
    limits: WorkLimits = field(default_factory=WorkLimits)

    def publish(
        self,
        evaluation: engine.Evaluation,
        claim: Claim | None = None,
        call: Call | None = None,
    ) -> CanaryReport:
        """Check the artifacts' size, write them, then the row; return the stored report.

        Raises:
            WorkBoundExceeded: the artifacts would take more than ``limits.max_artifact_bytes``
                (reason ``ARTIFACTS_TOO_LARGE``); nothing was written.
            ArtifactsUnwritable: the store refused the artifacts, so no row either (and the
                run's folder was removed).
            ArtifactStoreUnavailable: the store did not answer; no row either (what was
                written was removed when the store let it be).
            DeadlineExceeded: ``call``'s deadline passed between two artifacts; no row.
            ReportNotPersisted: artifacts written, row not: run ``canary reconcile``.
        """
        report = evaluation.report
        # Relative to the artifacts root: no absolute server path reaches a caller.
        paths = tuple(
            f"{report.run_id}/{name}"
            for name in (engine.COMPARISONS_FILE, engine.DIFFS_FILE, REPORT_FILE)
        )
        report = replace(report, artifact_paths=paths)
        request = {
            "request_id": claim.request_id if claim else "",
            "request_hash": claim.digest() if claim else "",
        }
        files = engine.sample_artifacts(evaluation)
        self._check_size(evaluation, report, files, request)
        try:
            refs = self.artifacts.save(report.run_id, files)
            report = replace(report, artifacts=refs)
            body = engine.report_artifact(evaluation, report, request)
            if call is not None:
                # The store's requests are bounded each; the run as a whole by the deadline.
                call.check_deadline("the report artifact")
            refs += self.artifacts.save(report.run_id, {REPORT_FILE: body})
        except OSError as exc:
            self._discard(report.run_id)
            raise ArtifactsUnwritable(
                f"canary {report.run_id}: its artifacts could not be written "
                f"({exc.strerror or type(exc).__name__}); no report was stored"
            ) from exc
        except ArtifactStoreUnavailable as exc:
            self._discard(report.run_id)
            raise ArtifactStoreUnavailable(
                f"canary {report.run_id}: {exc.message}; no report was stored"
            ) from exc
        except DeadlineExceeded:
            self._discard(report.run_id)
            raise
        report = replace(report, artifacts=refs)
        try:
            return self.store(report, claim)
        except DatabaseUnavailable as exc:
            raise ReportNotPersisted(
                f"canary {report.run_id}: artifacts saved but the report row "
                "could not be written; run `costsim-analytics canary reconcile` once the "
                "database is back"
            ) from exc

    def _check_size(
        self,
        evaluation: engine.Evaluation,
        report: CanaryReport,
        files: Mapping[str, bytes],
        request: dict[str, Any],
    ) -> None:
        """Refuse the run before anything is written when its artifacts exceed the bound.

        ``report.json`` names the others' checksums, which the store computes; a stand-in of
        the same length (a SHA-256 is always 64 hex digits) gives its exact size.
        """
        stand_in = tuple(
            ArtifactRef(f"{report.run_id}/{name}", "0" * 64, len(data))
            for name, data in files.items()
        )
        body = engine.report_artifact(evaluation, replace(report, artifacts=stand_in), request)
        size = sum(map(len, files.values())) + len(body)
        field = "samples" if report.sample_source == "explicit" else "sample_count"
        check_artifact_bytes(size, self.limits, field)

    def _discard(self, run_id: str) -> None:
        """Remove what a failed save left, so no partial folder outlives the refusal."""
        try:
            self.artifacts.remove(run_id)
        except (OSError, ArtifactStoreUnavailable):
            # The save's error is the one the caller needs; this one goes to the log.
            log.exception("canary %s: could not remove its partial artifacts", run_id)

    def store(self, report: CanaryReport, claim: Claim | None) -> CanaryReport:
        """Insert the row (and the request's idempotency key) in one transaction."""
        now = self.clock()
        report = replace(report, created_at=now)
        with self.uow_factory() as uow:
            row_id = uow.reports.add(report, now=report.created_at)
            if claim:
                claim.take(uow, now)
                claim.complete(uow, {"run_id": report.run_id})
            uow.commit()
        return replace(report, id=row_id)


@dataclass
class CanaryRunHandler:
    """RunCanary: resolve, lock, sample, evaluate, judge against the golden version, publish."""

    uow_factory: UnitOfWorkFactory
    artifacts: ArtifactStore
    lock_factory: Callable[[], RunLock]
    defaults: CanaryConfig = field(default_factory=CanaryConfig)
    lock_timeout_s: float = 2.0
    synthetic_fallback: bool = True
    # The newest this many candidates are drawn from: bounded work per run.
    max_candidates: int = 100_000
    clock: Clock = utc_now
    models: Callable[..., CostModel] = load_cost_model
    progress: Progress | None = None
    # The golden dataset of requests that name none ("": no golden comparison), and its verdict.
    golden_dataset: str = ""
    golden_config: GoldenConfig = field(default_factory=GoldenConfig)
    max_json_depth: int = DEFAULT_MAX_JSON_DEPTH
    limits: WorkLimits = field(default_factory=WorkLimits)

    def __call__(self, cmd: RunCanary, call: Call, /) -> RunCanaryResult:
        """Run the canary (or skip it) and return its report."""
        validate(cmd, max_depth=self.max_json_depth, limits=self.limits)
        config = resolve_config(cmd, self.defaults)
        baseline = self.models(cmd.baseline_model or "v1", field="baseline_model")
        candidate = self.models(cmd.candidate_model or "v2", field="candidate_model")
        now = self.clock()
        lock = self.lock_factory()
        if not lock.acquire(self.lock_timeout_s):
            log.info("canary skipped: run lock held elsewhere")
            return RunCanaryResult(
                engine.skipped(new_run_id(now), now, baseline.name, candidate.name)
            )
        try:
            if call.claim:
                # Another replica may have finished this very request while we waited.
                with self.uow_factory(read_only=True) as uow:
                    call.claim.check_free(uow)
            samples, source, reference = self._samples(cmd, now)

            def stage(doing: str) -> None:
                call.check_deadline(doing)  # the caller stopped waiting: stop working
                if self.progress:
                    self.progress(doing)

            stage("the evaluation")
            evaluation = engine.evaluate(
                samples,
                baseline,
                candidate,
                config,
                run_id=new_run_id(now),
                timestamp=now,
                seed=cmd.seed,
                sample_source=source,
                progress=stage,
            )
            if reference is not None:
                stage("golden comparison")
                comparison = golden.compare(reference, candidate, baseline, self.golden_config)
                report = golden.judge_report(evaluation.report, comparison)
                evaluation = replace(evaluation, report=report)
            stage("artifacts and report")
            publisher = ReportPublisher(self.uow_factory, self.artifacts, self.clock, self.limits)
            return RunCanaryResult(publisher.publish(evaluation, call.claim, call))
        finally:
            lock.release()

    def _samples(
        self, cmd: RunCanary, now: datetime
    ) -> tuple[list[Sample], str, GoldenDataset | None]:
        """The samples, where they came from, and the golden version to judge against.

        One read-only unit of work: the golden name resolves to its active version in the same
        snapshot the provenance samples are read from.
        """
        golden_name = cmd.golden_dataset or self.golden_dataset
        if cmd.samples and not golden_name:
            return list(cmd.samples), "explicit", None
        since = now - timedelta(days=cmd.lookback_days or DEFAULT_LOOKBACK_DAYS)
        with self.uow_factory(read_only=True) as uow:
            reference = None
            if golden_name:
                reference = load_dataset(
                    uow, golden_name, limits=self.limits, field="golden_dataset"
                )
            if cmd.samples:
                return list(cmd.samples), "explicit", reference
            ids = engine.choose(
                uow.provenance.sample_candidates(since, self.max_candidates),
                cmd.sample_count or DEFAULT_SAMPLE_COUNT,
                cmd.seed,
            )
            inputs = self._plan_inputs(uow, ids)
        if ids:
            return [Sample(f"provenance-{i}", inputs[i]) for i in ids], "provenance", reference
        if self.synthetic_fallback:
            synthetic = [Sample(i, plan) for i, plan in synthetic_samples()]
            return synthetic, "synthetic", reference
        return [], "none", reference

    def _plan_inputs(self, uow: UnitOfWork, ids: list[int]) -> dict[int, Any]:
        """The plan inputs of ``ids``, read a chunk at a time while their bytes fit the bound.

        The plans alone are a lower bound of the run's artifacts: a run whose plans exceed
        the artifact bound is refused as soon as they do, not after all of them were loaded.
        """
        inputs: dict[int, Any] = {}
        size = 0
        for start in range(0, len(ids), PLAN_CHUNK):
            chunk = uow.provenance.plan_inputs(ids[start : start + PLAN_CHUNK])
            size += sum(map(plan_bytes, chunk.values()))
            check_artifact_bytes(size, self.limits, "sample_count", at_least=True)
            inputs.update(chunk)
        return inputs


@dataclass
class ReconcileHandler:
    """Import every complete report in the artifact store that the database lacks."""

    uow_factory: UnitOfWorkFactory
    artifacts: ArtifactStore
    clock: Clock = utc_now

    def __call__(self, _command: Reconcile, _call: Call, /) -> ReconcileResult:
        """One idempotent pass over the store, run folder by folder.

        A folder that cannot be read or whose artifacts do not match their checksums counts
        as corrupt and the pass goes on. When a run's request id has meanwhile been taken by
        another run (a client retried after this run's row failed), the run is imported
        without the key: the key stays with the run that answered the retry.
        """
        publisher = ReportPublisher(self.uow_factory, self.artifacts, self.clock)
        imported, corrupt, present = [], [], 0
        for run_id in self.artifacts.runs():
            with self.uow_factory(read_only=True) as uow:
                if uow.reports.get_by_run_id(run_id) is not None:
                    present += 1
                    continue
            try:
                data = json.loads(self.artifacts.read(run_id, REPORT_FILE))
                report = report_from_json(data)
                request = data.get("request") or {}
            except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
                log.warning(
                    "reconcile: %s has an unreadable report.json (%r); skipped", run_id, exc
                )
                corrupt.append(run_id)
                continue
            if report.run_id != run_id or not all(map(self.artifacts.verify, report.artifacts)):
                log.warning("reconcile: %s has missing or altered artifacts; skipped", run_id)
                corrupt.append(run_id)
                continue
            report = replace(
                report, artifacts=(*report.artifacts, self.artifacts.ref(run_id, REPORT_FILE))
            )
            request_id = str(request.get("request_id", ""))
            digest = functools.partial(str, request.get("request_hash", ""))
            claim = Claim(OP_CANARY_RUN.name, request_id, digest) if request_id else None
            try:
                try:
                    publisher.store(report, claim)
                except ClaimTaken:
                    log.warning(
                        "reconcile: %s: request_id %r now belongs to another run; "
                        "imported without it",
                        run_id,
                        request_id,
                    )
                    publisher.store(report, None)
            except AlreadyExists:  # another reconcile imported it meanwhile
                present += 1
                continue
            imported.append(run_id)
        return ReconcileResult(tuple(imported), present, tuple(corrupt))
