"""RunCanary, ReportPublisher and Reconcile on the fakes, behind the middleware of bootstrap.py."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from costsim_analytics.engines.canary.command import RunCanary, RunCanaryResult, fingerprint
from costsim_analytics.engines.canary.evaluation import (
    COMPARISONS_FILE,
    DIFFS_FILE,
    REPORT_FILE,
    CanaryConfig,
    Sample,
    evaluate,
)
from costsim_analytics.engines.canary.synthetic import synthetic_samples
from costsim_analytics.engines.cost_models import load_cost_model
from costsim_analytics.engines.errors import (
    DeadlineExceeded,
    FailedPrecondition,
    InvalidArgument,
    RequestIdReused,
)
from costsim_analytics.engines.maintenance import Reconcile, ReconcileResult
from costsim_analytics.engines.reports import CanaryReport
from costsim_analytics.handlers.call import Call
from costsim_analytics.handlers.canary import (
    RUN_REPLAY,
    ArtifactsUnwritable,
    CanaryRunHandler,
    ReconcileHandler,
    ReportNotPersisted,
    ReportPublisher,
)
from costsim_analytics.handlers.idempotency import ReplayTable, idempotency, request_ids
from costsim_analytics.handlers.registry import (
    OP_CANARY_RECONCILE,
    OP_CANARY_RUN,
    OperationRegistry,
)
from tests.factories import plan_payload, stored_record
from tests.unit.fakes import FakeArtifactStore, FakeLock, FakeStore

NOW = datetime(2026, 11, 26, 11, 0, tzinfo=UTC)
# 120 plans over every skill: v2 prices long prompts far above v1's flat rate, so v1 -> v2
# drifts for real, while v1 -> v1 is the identical-models control.
SYNTHETIC = tuple(Sample(sample_id, plan) for sample_id, plan in synthetic_samples())
SAME: dict[str, Any] = {"baseline_model": "v1", "candidate_model": "v1"}


@dataclass
class Rig:
    """One registry over one set of fakes; ``events`` journals artifacts and storage together."""

    store: FakeStore
    artifacts: FakeArtifactStore
    lock: FakeLock
    registry: OperationRegistry

    def run(self, cmd: RunCanary) -> RunCanaryResult:
        return self.registry.get(OP_CANARY_RUN)(cmd, Call())

    def reconcile(self) -> ReconcileResult:
        return self.registry.get(OP_CANARY_RECONCILE)(Reconcile(), Call())

    def stored(self, run_id: str) -> CanaryReport:
        report = self.store.reports.get_by_run_id(run_id)
        assert report is not None, f"no row for {run_id}"
        return report


def make_rig(**handler_options: Any) -> Rig:
    events: list[str] = []
    store = FakeStore(events=events)
    artifacts = FakeArtifactStore(events=events)
    lock = FakeLock()
    registry = OperationRegistry()
    registry.register(
        OP_CANARY_RUN,
        CanaryRunHandler(store, artifacts, lambda: lock, clock=lambda: NOW, **handler_options),
    )
    registry.register(OP_CANARY_RECONCILE, ReconcileHandler(store, artifacts))
    table = ReplayTable().add(OP_CANARY_RUN, RUN_REPLAY)
    registry.wrap(request_ids(table), idempotency(store, table))
    return Rig(store, artifacts, lock, registry)


@pytest.fixture
def rig() -> Rig:
    return make_rig()


# --- RunCanary ---------------------------------------------------------------------------------


def test_explicit_samples_store_the_report_after_its_artifacts(rig):
    result = rig.run(RunCanary(samples=SYNTHETIC, **SAME))

    report = result.report
    run_id = report.run_id
    assert not result.replayed
    assert (report.status, report.passed, report.sample_source) == ("pass", True, "explicit")
    assert report.total_samples == 120 and report.timestamp == NOW
    assert run_id.startswith("canary-20261126T110000Z-")
    # The artifacts (report.json last) are written before the row, and the row commits.
    assert rig.store.events == [
        f"artifacts.save {run_id} {COMPARISONS_FILE},{DIFFS_FILE}",
        f"artifacts.save {run_id} {REPORT_FILE}",
        f"reports.add {run_id}",
        "commit",
    ]
    stored = rig.stored(run_id)
    assert stored == report and stored.id == 1
    assert [Path(a.path).name for a in stored.artifacts] == [
        COMPARISONS_FILE,
        DIFFS_FILE,
        REPORT_FILE,
    ]
    assert all(rig.artifacts.verify(a) for a in stored.artifacts)
    body = json.loads(rig.artifacts.read(run_id, REPORT_FILE))
    assert body["run_id"] == run_id
    assert body["request"] == {"request_id": "", "request_hash": ""}
    comparisons = rig.artifacts.read(run_id, COMPARISONS_FILE).decode().splitlines()
    assert [json.loads(line)["id"] for line in comparisons] == [s.id for s in SYNTHETIC]
    # Only the publishing unit of work writes; the lock was taken once and given back.
    writers = [uow for uow in rig.store.opened if not uow.read_only]
    assert len(writers) == 1 and writers[0].committed
    assert rig.lock.acquired == [2.0] and rig.lock.released == 1


def test_default_thresholds_fail_a_real_drift_and_pass_identical_models(rig):
    # No threshold in the request: the handler's defaults, which are CanaryConfig()'s.
    drift = rig.run(RunCanary(samples=SYNTHETIC)).report
    same = rig.run(RunCanary(samples=SYNTHETIC, **SAME)).report

    assert (drift.baseline_model, drift.candidate_model) == ("v1", "v2")
    assert (drift.status, drift.passed) == ("fail", False)
    reasons = {r.code: r for r in drift.reasons}
    # The calibrated judge (the default) fails it on the share rules, each significant.
    assert set(reasons) == {"OUTLIERS_HIGH", "MAJOR_DRIFT_HIGH"}
    assert reasons["MAJOR_DRIFT_HIGH"].observed > CanaryConfig().major_drift_max_pct
    # The predecessor's rule, asked for by name, fails it on KL too.
    legacy = rig.run(RunCanary(samples=SYNTHETIC, judge="legacy")).report
    legacy_reasons = {r.code: r for r in legacy.reasons}
    assert set(legacy_reasons) == {"KL_DIVERGENCE_HIGH", "OUTLIERS_HIGH", "MAJOR_DRIFT_HIGH"}
    assert legacy_reasons["KL_DIVERGENCE_HIGH"].threshold == CanaryConfig().drift_threshold
    assert legacy_reasons["KL_DIVERGENCE_HIGH"].observed > 0.2
    assert drift.major_drift_samples > 12  # more than 10 % of 120
    assert rig.stored(drift.run_id).status == "fail"

    assert (same.status, same.passed, same.reasons) == ("pass", True, ())
    assert same.kl_divergence == 0.0 and same.matching_samples == 120
    assert rig.stored(same.run_id).status == "pass"


def test_provenance_samples_are_the_recent_successful_ones(rig):
    recent = NOW - timedelta(days=1)
    rig.store.provenance.rows = [stored_record(i, recent) for i in range(1, 41)]
    rig.store.provenance.rows += [
        stored_record(41, recent, status="error"),  # not a success
        stored_record(42, NOW - timedelta(days=8)),  # older than the 7-day lookback
    ]

    report = rig.run(RunCanary(seed=3, **SAME)).report

    assert (report.sample_source, report.total_samples, report.seed) == ("provenance", 40, 3)
    # Identical models on 40 samples: the calibrated judge needs 59 to show a pass.
    assert report.status == "inconclusive" and not report.passed
    lines = rig.artifacts.read(report.run_id, COMPARISONS_FILE).decode().splitlines()
    rows = [json.loads(line) for line in lines]
    assert [row["id"] for row in rows] == [f"provenance-{i}" for i in range(1, 41)]
    assert rows[0]["plan_input"] == plan_payload(1)["input"]


def test_no_provenance_falls_back_to_synthetic_samples_or_fails_closed():
    fallback = make_rig().run(RunCanary(**SAME)).report
    assert (fallback.sample_source, fallback.total_samples) == ("synthetic", 120)

    strict = make_rig(synthetic_fallback=False)
    report = strict.run(RunCanary(**SAME)).report
    assert (report.status, report.passed, report.sample_source) == ("error", False, "none")
    assert [r.code for r in report.reasons] == ["NO_SAMPLES"]
    assert strict.stored(report.run_id).status == "error"


def test_unwritable_artifacts_fail_precondition_and_store_nothing(rig):
    rig.artifacts.unwritable = True
    cmd = RunCanary(samples=SYNTHETIC, request_id="req-1", **SAME)

    with pytest.raises(ArtifactsUnwritable) as exc:
        rig.run(cmd)

    assert isinstance(exc.value, FailedPrecondition)
    assert exc.value.reason == "ARTIFACTS_UNWRITABLE"
    assert "Read-only file system" in exc.value.message
    assert str(rig.artifacts.root) not in exc.value.message  # names the run, not the path
    assert rig.store.reports.reports == {}
    assert rig.store.idempotency.keys == {}
    assert rig.artifacts.files == {}
    assert not any(e.startswith("reports.add") for e in rig.store.events)
    assert rig.lock.released == 1
    # The key was not taken: once the store is writable again, the same request runs.
    rig.artifacts.unwritable = False
    again = rig.run(cmd)
    assert not again.replayed and rig.stored(again.report.run_id).status == "pass"


def test_report_artifact_unwritable_leaves_nothing_for_reconcile(rig):
    rig.artifacts.fail_on = REPORT_FILE

    with pytest.raises(ArtifactsUnwritable) as exc:
        rig.run(RunCanary(samples=SYNTHETIC, **SAME))

    assert exc.value.reason == "ARTIFACTS_UNWRITABLE"
    assert rig.store.reports.reports == {}
    # The sample artifacts were written, then removed with their folder: no partial run.
    [saved] = [e for e in rig.store.events if e.startswith("artifacts.save")]
    assert saved.endswith(f"{COMPARISONS_FILE},{DIFFS_FILE}")
    assert rig.artifacts.files == {} and list(rig.artifacts.runs()) == []
    rig.artifacts.fail_on = ""
    assert rig.reconcile() == ReconcileResult((), 0, ())


def test_lock_held_elsewhere_skips_and_stores_nothing(rig):
    rig.lock.free = False

    result = rig.run(RunCanary(samples=SYNTHETIC, request_id="req-1", **SAME))

    report = result.report
    assert (report.status, report.passed, result.replayed) == ("skipped", False, False)
    assert [r.code for r in report.reasons] == ["RUN_IN_PROGRESS"]
    assert rig.store.reports.reports == {}
    assert rig.artifacts.files == {}
    assert rig.store.idempotency.keys == {}
    assert all(uow.read_only for uow in rig.store.opened)
    assert rig.lock.released == 0  # never release a lock that was not taken


def test_same_request_id_replays_the_same_report(rig):
    cmd = RunCanary(samples=SYNTHETIC, request_id="req-1", **SAME)

    first = rig.run(cmd)
    again = rig.run(cmd)

    assert (first.replayed, again.replayed) == (False, True)
    assert again.report == first.report == rig.stored(first.report.run_id)
    assert len(rig.store.reports.reports) == 1
    assert list(rig.artifacts.files) == [first.report.run_id]
    assert len(rig.lock.acquired) == 1  # the retry did not run the canary again
    key = rig.store.idempotency.get(OP_CANARY_RUN.name, "req-1")
    assert key is not None
    assert (key.request_hash, key.response) == (fingerprint(cmd), {"run_id": first.report.run_id})
    body = json.loads(rig.artifacts.read(first.report.run_id, REPORT_FILE))
    assert body["request"] == {"request_id": "req-1", "request_hash": fingerprint(cmd)}


def test_same_request_id_for_another_request_is_refused_and_stores_nothing(rig):
    rig.run(RunCanary(samples=SYNTHETIC, request_id="req-1", **SAME))
    reports, files = dict(rig.store.reports.reports), set(rig.artifacts.files)

    with pytest.raises(RequestIdReused) as exc:
        rig.run(RunCanary(samples=SYNTHETIC[:60], request_id="req-1", **SAME))

    assert exc.value.reason == "REQUEST_ID_REUSED"
    assert rig.store.reports.reports == reports
    assert set(rig.artifacts.files) == files
    assert len(rig.lock.acquired) == 1


def test_invalid_requests_name_the_field_before_any_work(rig):
    with pytest.raises(InvalidArgument) as exc:
        rig.run(RunCanary(request_id="r" * 129))
    assert [v.field for v in exc.value.violations] == ["request_id"]
    assert rig.store.opened == []  # checked before the idempotency look-up

    with pytest.raises(InvalidArgument) as exc:
        rig.run(RunCanary(sample_count=-1, samples=(Sample("", {}),)))
    assert [v.field for v in exc.value.violations] == ["sample_count", "samples[0].id"]
    assert rig.lock.acquired == []

    with pytest.raises(InvalidArgument) as exc:
        rig.run(RunCanary(candidate_model="v9"))
    assert [v.field for v in exc.value.violations] == ["candidate_model"]


# --- ReportPublisher ---------------------------------------------------------------------------


def test_publisher_writes_artifacts_then_the_row_without_a_key():
    events: list[str] = []
    store, artifacts = FakeStore(events=events), FakeArtifactStore(events=events)
    v1 = load_cost_model("v1")
    evaluation = evaluate(
        SYNTHETIC[:40],
        v1,
        v1,
        CanaryConfig(),
        run_id="canary-test-1",
        timestamp=NOW,
        seed=0,
        sample_source="explicit",
    )

    report = ReportPublisher(store, artifacts).publish(evaluation)

    assert events == [
        f"artifacts.save canary-test-1 {COMPARISONS_FILE},{DIFFS_FILE}",
        f"artifacts.save canary-test-1 {REPORT_FILE}",
        "reports.add canary-test-1",
        "commit",
    ]
    assert store.reports.get_by_run_id("canary-test-1") == report
    assert report.artifact_paths == tuple(
        f"canary-test-1/{name}" for name in (COMPARISONS_FILE, DIFFS_FILE, REPORT_FILE)
    )
    assert all(a.path.startswith("canary-test-1/") for a in report.artifacts)
    assert store.idempotency.keys == {}


def test_row_not_persisted_leaves_artifacts_that_reconcile_imports_with_the_key(rig):
    rig.store.reports.unavailable = True
    cmd = RunCanary(samples=SYNTHETIC, request_id="req-1", **SAME)

    with pytest.raises(ReportNotPersisted) as exc:
        rig.run(cmd)

    assert exc.value.reason == "REPORT_NOT_PERSISTED"
    assert "canary reconcile" in exc.value.message
    [orphan] = rig.artifacts.runs()
    assert rig.store.reports.reports == {} and rig.store.idempotency.keys == {}

    rig.store.reports.unavailable = False
    assert rig.reconcile() == ReconcileResult((orphan,), 0, ())
    # The imported run took the request's key: a retry replays it instead of running again.
    again = rig.run(cmd)
    assert again.replayed and again.report.run_id == orphan
    assert len(rig.lock.acquired) == 1


# --- Reconcile ---------------------------------------------------------------------------------


def test_reconcile_imports_orphans_counts_present_and_reports_corrupt(rig):
    present = rig.run(RunCanary(samples=SYNTHETIC, **SAME)).report.run_id
    orphan = rig.run(RunCanary(samples=SYNTHETIC[:40], **SAME)).report.run_id
    corrupt = rig.run(RunCanary(samples=SYNTHETIC[:50], **SAME)).report.run_id
    # Rows lost after their artifacts were written; one run's comparisons altered in place
    # (same size, other bytes: only the checksum can tell).
    original = rig.store.reports.reports.pop(orphan)
    del rig.store.reports.reports[corrupt]
    files = rig.artifacts.files[corrupt]
    altered = files[COMPARISONS_FILE].replace(b'"synthetic-000"', b'"synthetic-999"')
    assert altered != files[COMPARISONS_FILE] and len(altered) == len(files[COMPARISONS_FILE])
    files[COMPARISONS_FILE] = altered

    result = rig.reconcile()

    assert result == ReconcileResult(imported=(orphan,), present=1, corrupt=(corrupt,))
    imported = rig.stored(orphan)
    assert replace(imported, id=0, created_at=None) == replace(original, id=0, created_at=None)
    assert rig.store.reports.get_by_run_id(corrupt) is None
    assert rig.stored(present).run_id == present
    # One idempotent pass: the next finds the import present and the corrupt run still corrupt.
    assert rig.reconcile() == ReconcileResult((), 2, (corrupt,))


def test_reconcile_imports_a_run_whose_request_id_a_retry_took_and_goes_on():
    rig = make_rig()
    cmd = RunCanary(samples=SYNTHETIC, request_id="nightly-1", **SAME)
    rig.store.reports.unavailable = True
    with pytest.raises(ReportNotPersisted):
        rig.run(cmd)
    [orphan] = rig.artifacts.runs()
    rig.store.reports.unavailable = False
    retried = rig.run(cmd).report  # the client's retry: a new run takes the key
    assert retried.run_id != orphan and rig.run(cmd).report.run_id == retried.run_id
    later = rig.run(RunCanary(samples=SYNTHETIC[:60], **SAME)).report.run_id
    del rig.store.reports.reports[later]  # a second orphan, after the first in the folder order

    result = rig.reconcile()

    assert set(result.imported) == {orphan, later} and result.corrupt == ()
    assert rig.stored(orphan).run_id == orphan
    # The key stays with the run that answered the retry.
    assert rig.run(cmd).report.run_id == retried.run_id


@pytest.mark.parametrize(
    "body",
    [b"{not json", b'{"run_id": "x"}', b"[]", b'{"timestamp": "yesterday"}', b"\xff\xfe"],
)
def test_reconcile_counts_an_unreadable_report_as_corrupt_and_goes_on(body):
    rig = make_rig()
    broken = rig.run(RunCanary(samples=SYNTHETIC[:40], **SAME)).report.run_id
    orphan = rig.run(RunCanary(samples=SYNTHETIC[:50], **SAME)).report.run_id
    for run_id in (broken, orphan):
        del rig.store.reports.reports[run_id]
    rig.artifacts.files[broken][REPORT_FILE] = body

    assert rig.reconcile() == ReconcileResult(imported=(orphan,), present=0, corrupt=(broken,))


def test_a_run_past_its_deadline_gives_up_and_stores_nothing(rig):
    gone = Call(deadline=time.monotonic() - 0.001)  # the caller stopped waiting

    with pytest.raises(DeadlineExceeded, match="the evaluation"):
        rig.registry.get(OP_CANARY_RUN)(RunCanary(samples=SYNTHETIC, request_id="r-1"), gone)

    assert rig.store.reports.reports == {}
    assert rig.artifacts.files == {}
    assert rig.store.idempotency.keys == {}
    assert rig.lock.released == 1  # the lock was given back


class _DeadlineBeforeReport(Call):
    """A call whose deadline passes once the sample artifacts are written."""

    def check_deadline(self, doing: str) -> None:
        if doing == "the report artifact":
            raise DeadlineExceeded(f"the call's deadline passed before {doing}")


def test_a_deadline_passing_between_artifacts_stores_nothing(rig):
    with pytest.raises(DeadlineExceeded, match="the report artifact"):
        rig.registry.get(OP_CANARY_RUN)(
            RunCanary(samples=SYNTHETIC, request_id="r-1"), _DeadlineBeforeReport()
        )

    assert any(e.startswith("artifacts.save") for e in rig.artifacts.events)  # it had begun
    assert rig.artifacts.files == {}  # and what it wrote was removed
    assert rig.store.reports.reports == {}
    assert rig.store.idempotency.keys == {}
