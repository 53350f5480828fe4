"""ExplainCanaryRunHandler with fakes: read-only, checked artifacts, the same answer as a run."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from costsim_analytics.engines.canary.command import RunCanary
from costsim_analytics.engines.canary.evaluation import Sample
from costsim_analytics.engines.canary.explain import ExplainRun, RunNotExplainable
from costsim_analytics.engines.canary.synthetic import synthetic_samples
from costsim_analytics.engines.errors import DeadlineExceeded, InvalidArgument, NotFound
from costsim_analytics.handlers.call import Call
from costsim_analytics.handlers.canary import CanaryRunHandler
from costsim_analytics.handlers.explain import ExplainCanaryRunHandler
from tests.unit.fakes import FakeArtifactStore, FakeLock, FakeStore

NOW = datetime(2026, 11, 26, tzinfo=UTC)


@pytest.fixture
def ran() -> tuple[FakeStore, FakeArtifactStore, str]:
    store, artifacts, lock = FakeStore(), FakeArtifactStore(), FakeLock()
    samples = tuple(Sample(i, plan) for i, plan in synthetic_samples()[:60])
    run = CanaryRunHandler(store, artifacts, lambda: lock, clock=lambda: NOW)
    report = run(RunCanary(samples=samples, min_samples=10, seed=5), Call()).report
    return store, artifacts, report.run_id


def test_explains_a_stored_run_in_read_only_units_of_work(ran):
    store, artifacts, run_id = ran
    opened = len(store.opened)
    explanation = ExplainCanaryRunHandler(store, artifacts)(ExplainRun(run_id, top=3), Call())
    assert explanation.run_id == run_id and len(explanation.top) == 3
    assert sum(g.share for g in explanation.groups) == pytest.approx(1.0)
    assert store.opened[opened:] and all(uow.read_only for uow in store.opened[opened:])


def test_unknown_runs_bad_fields_and_altered_artifacts_are_refused(ran):
    store, artifacts, run_id = ran
    handler = ExplainCanaryRunHandler(store, artifacts)
    with pytest.raises(NotFound):
        handler(ExplainRun("canary-none"), Call())
    opened = len(store.opened)
    with pytest.raises(InvalidArgument) as exc:
        handler(ExplainRun(run_id, group_by="colour"), Call())
    assert [v.field for v in exc.value.violations] == ["group_by"]
    assert len(store.opened) == opened  # refused before any transaction
    artifacts.files[run_id]["comparisons.jsonl"] += b"\n"
    with pytest.raises(RunNotExplainable, match=r"comparisons\.jsonl is missing or does not match"):
        handler(ExplainRun(run_id), Call())
    del artifacts.files[run_id]["report.json"]
    with pytest.raises(RunNotExplainable, match=r"report\.json"):
        handler(ExplainRun(run_id), Call())


def test_a_call_whose_deadline_passed_does_not_compute(ran):
    store, artifacts, run_id = ran
    with pytest.raises(DeadlineExceeded):
        ExplainCanaryRunHandler(store, artifacts)(ExplainRun(run_id), Call(deadline=0.0))
