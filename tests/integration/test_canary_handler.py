"""The canary handler on real SQLite and PostgreSQL: the artifact invariant, the run lock,
idempotency, sampling from provenance and reconcile."""

import json
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from costsim_analytics.drivers.artifacts import LocalArtifactStore
from costsim_analytics.drivers.locks import canary_lock
from costsim_analytics.engines.canary.command import RunCanary
from costsim_analytics.engines.canary.evaluation import Sample
from costsim_analytics.engines.canary.synthetic import synthetic_samples
from costsim_analytics.engines.errors import DatabaseUnavailable, RequestIdReused
from costsim_analytics.engines.maintenance import Reconcile
from costsim_analytics.engines.provenance import prepare_batch
from costsim_analytics.handlers.call import Call
from costsim_analytics.handlers.canary import (
    ArtifactsUnwritable,
    CanaryRunHandler,
    ReconcileHandler,
    ReportNotPersisted,
)
from costsim_analytics.handlers.registry import OP_CANARY_RUN
from costsim_analytics.handlers.uow import SqlAlchemyUnitOfWorkFactory
from tests.factories import plan_payload, provenance_input
from tests.seam import served

NOW = datetime(2026, 11, 26, 6, 0, tzinfo=UTC)
EXPLICIT = tuple(Sample(i, p) for i, p in synthetic_samples()[:60])


def handler(engine, root: Path, **kw):
    return CanaryRunHandler(
        SqlAlchemyUnitOfWorkFactory(engine),
        LocalArtifactStore(root),
        lambda: canary_lock(engine, root),
        lock_timeout_s=0.2,
        clock=lambda: NOW,
        **kw,
    )


def run(h: CanaryRunHandler):
    """``h`` as the server calls it (behind the request-id and idempotency middleware)."""
    return served(OP_CANARY_RUN, h, h.uow_factory)


def stored_reports(engine):
    with SqlAlchemyUnitOfWorkFactory(engine)(read_only=True) as uow:
        return [r for chunk in uow.reports.stream(_all(), None, 1000) for r in chunk]


def _all():
    from costsim_analytics.engines.reports import ReportFilter

    return ReportFilter()


def test_run_writes_artifacts_then_the_report(engine, tmp_path):
    result = run(handler(engine, tmp_path))(RunCanary(samples=EXPLICIT, seed=4))
    report = result.report
    assert report.id > 0 and report.sample_source == "explicit"
    [stored] = stored_reports(engine)
    assert stored.run_id == report.run_id and stored.artifacts == report.artifacts
    assert [Path(a.path).name for a in stored.artifacts] == [
        "comparisons.jsonl",
        "diffs.jsonl",
        "report.json",
    ]
    assert all(LocalArtifactStore(tmp_path).verify(a) for a in stored.artifacts)
    assert stored.statistics == report.statistics and stored.reasons == report.reasons
    body = json.loads((tmp_path / stored.artifacts[2].path).read_text())
    assert body["run_id"] == report.run_id and body["kl_binning"]["bins"] >= 1


def test_artifact_failure_writes_no_row(engine, tmp_path):
    blocked = tmp_path / "not-a-dir"
    blocked.write_text("a file where the artifact root should be")
    with pytest.raises(ArtifactsUnwritable, match="no report was stored"):
        run(handler(engine, blocked))(RunCanary(samples=EXPLICIT))
    assert stored_reports(engine) == []


class FailingReportsUow:
    """Units of work whose report insert fails as if the database had gone away."""

    def __init__(self, inner):
        self.inner = inner

    def __call__(self, *, read_only=False):
        uow = self.inner(read_only=read_only)
        return uow if read_only else _BrokenReports(uow)


class _BrokenReports:
    def __init__(self, uow):
        self.uow = uow

    def __enter__(self):
        entered = self.uow.__enter__()
        self.provenance, self.idempotency = entered.provenance, entered.idempotency
        self.reports = self
        return self

    def add(self, report, now=None):
        raise DatabaseUnavailable("database unavailable: OperationalError")

    def commit(self):
        self.uow.commit()

    def __exit__(self, *exc):
        return self.uow.__exit__(*exc)


def test_row_failure_after_artifacts_is_reconciled(engine, tmp_path):
    uow = SqlAlchemyUnitOfWorkFactory(engine)
    broken = replace(handler(engine, tmp_path), uow_factory=FailingReportsUow(uow))
    with pytest.raises(ReportNotPersisted, match="canary reconcile"):
        run(broken)(RunCanary(samples=EXPLICIT, request_id="nightly-1"))
    assert stored_reports(engine) == []
    [run_dir] = [p for p in tmp_path.iterdir() if p.is_dir()]
    assert (run_dir / "report.json").is_file()

    reconcile = ReconcileHandler(uow, LocalArtifactStore(tmp_path))
    first = reconcile(Reconcile(), Call())
    assert first.imported == (run_dir.name,) and first.corrupt == ()
    [stored] = stored_reports(engine)
    assert stored.run_id == run_dir.name and len(stored.artifacts) == 3
    assert all(LocalArtifactStore(tmp_path).verify(a) for a in stored.artifacts)
    again = reconcile(Reconcile(), Call())
    assert (again.imported, again.present) == ((), 1)
    # the request's idempotency key came back with the report: a retry replays it
    replay = run(handler(engine, tmp_path))(RunCanary(samples=EXPLICIT, request_id="nightly-1"))
    assert replay.replayed and replay.report.run_id == stored.run_id


def test_reconcile_skips_altered_artifacts(engine, tmp_path):
    uow = SqlAlchemyUnitOfWorkFactory(engine)
    broken = replace(handler(engine, tmp_path), uow_factory=FailingReportsUow(uow))
    with pytest.raises(ReportNotPersisted):
        run(broken)(RunCanary(samples=EXPLICIT))
    [run_dir] = [p for p in tmp_path.iterdir() if p.is_dir()]
    (run_dir / "diffs.jsonl").write_text("tampered\n")
    result = ReconcileHandler(uow, LocalArtifactStore(tmp_path))(Reconcile(), Call())
    assert result.corrupt == (run_dir.name,) and result.imported == ()
    assert stored_reports(engine) == []


def test_loser_of_the_run_lock_skips_without_work(engine, tmp_path):
    lock = canary_lock(engine, tmp_path)
    assert lock.acquire(1.0)
    try:
        result = run(handler(engine, tmp_path))(RunCanary(samples=EXPLICIT))
    finally:
        lock.release()
    r = result.report
    # Nothing was judged, so nothing passed: a held lock must not make the canary look green.
    assert (r.status, r.passed, r.total_samples) == ("skipped", False, 0)
    assert r.reasons[0].code == "RUN_IN_PROGRESS" and "in progress" in r.failure_reasons[0]
    assert stored_reports(engine) == []
    assert [p for p in tmp_path.iterdir() if p.is_dir()] == []  # no artifacts either
    # once released, the next run goes ahead
    assert run(handler(engine, tmp_path))(RunCanary(samples=EXPLICIT)).report.status != "skipped"


def test_request_id_replays_and_refuses_other_requests(engine, tmp_path):
    h = run(handler(engine, tmp_path))
    first = h(RunCanary(samples=EXPLICIT, request_id="r-1"))
    again = h(RunCanary(samples=EXPLICIT, request_id="r-1"))
    assert again.replayed and not first.replayed
    assert again.report.run_id == first.report.run_id
    with pytest.raises(RequestIdReused):
        h(RunCanary(samples=EXPLICIT, request_id="r-1", seed=9))
    assert len(stored_reports(engine)) == 1


def test_samples_come_from_recent_successful_provenance(engine, tmp_path):
    uow = SqlAlchemyUnitOfWorkFactory(engine)
    recent = prepare_batch(
        [
            provenance_input(i, payload=plan_payload(i, "success" if i % 4 else "error"))
            for i in range(200)
        ],
        max_batch=1000,
        now=NOW - timedelta(days=1),
    )
    old = prepare_batch(
        [provenance_input(i) for i in range(50)], max_batch=1000, now=NOW - timedelta(days=30)
    )
    with uow() as w:
        w.provenance.insert_batch(recent)
        w.provenance.insert_batch(old)
        w.commit()
    h = run(handler(engine, tmp_path))
    a = h(RunCanary(sample_count=100, seed=1)).report
    b = h(RunCanary(sample_count=100, seed=1)).report
    c = h(RunCanary(sample_count=100, seed=2)).report
    assert a.sample_source == "provenance" and a.total_samples + a.invalid_samples == 100

    def ids(report):
        lines = (tmp_path / report.artifacts[0].path).read_text().splitlines()
        return [json.loads(line)["id"] for line in lines]

    assert ids(a) == ids(b) != ids(c)
    assert len(set(ids(a))) == 100
    everything = h(RunCanary(sample_count=1000)).report
    assert everything.total_samples + everything.invalid_samples == 150  # 3/4 of 200 succeeded


def test_synthetic_fallback_and_no_samples_at_all(engine, tmp_path):
    synthetic = run(handler(engine, tmp_path))(RunCanary()).report
    assert synthetic.sample_source == "synthetic" and synthetic.total_samples == 120
    none = run(handler(engine, tmp_path, synthetic_fallback=False))(RunCanary()).report
    assert (none.status, none.passed, none.failure_reasons) == ("error", False, ("no samples",))
    # an error report is a report: it is stored, with its artifacts
    assert any(r.run_id == none.run_id for r in stored_reports(engine))


def test_old_absolute_artifact_paths_still_verify_and_new_ones_are_relative(tmp_path):
    store = LocalArtifactStore(tmp_path)
    [ref] = store.save("canary-old", {"report.json": b"{}"})
    assert ref.path == "canary-old/report.json" and store.verify(ref)
    absolute = replace(ref, path=str(tmp_path.resolve() / ref.path))
    assert store.verify(absolute)
    assert not store.verify(replace(ref, sha256="0" * 64))


def test_a_run_draws_only_from_the_newest_candidates(engine, tmp_path):
    uow = SqlAlchemyUnitOfWorkFactory(engine)
    with uow() as w:
        for day in (3, 2, 1):  # three days of 40 successful records each
            batch = [provenance_input(i, payload=plan_payload(i)) for i in range(40)]
            w.provenance.insert_batch(
                prepare_batch(batch, max_batch=100, now=NOW - timedelta(days=day))
            )
        w.commit()
    with uow(read_only=True) as r:
        newest = r.provenance.sample_candidates(NOW - timedelta(days=7), 40)
        everything = r.provenance.sample_candidates(NOW - timedelta(days=7), 1000)
    assert len(everything) == 120 and newest == everything[-40:]  # the last day's, ascending
    report = run(replace(handler(engine, tmp_path), max_candidates=40))(
        RunCanary(sample_count=100, seed=3)
    ).report
    assert report.total_samples + report.invalid_samples == 40
    lines = (tmp_path / report.artifacts[0].path).read_text().splitlines()
    assert {json.loads(line)["id"] for line in lines} == {f"provenance-{i}" for i in newest}
