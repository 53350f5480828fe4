"""The per-call work bounds (engines/limits.py) in the engines and the handlers, on the fakes.

Over a bound a call is WorkBoundExceeded (INVALID_ARGUMENT) naming the field, with the bound's
reason, before any work is done, and nothing is written: no artifact, no row, no key.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from costsim_analytics.api.metrics import ServiceMetrics
from costsim_analytics.engines.canary.command import RunCanary, RunCanaryResult, validate
from costsim_analytics.engines.canary.evaluation import (
    COMPARISONS_FILE,
    DIFFS_FILE,
    REPORT_FILE,
    CanaryConfig,
    Sample,
    evaluate,
    report_artifact,
    sample_artifacts,
)
from costsim_analytics.engines.canary.synthetic import synthetic_samples
from costsim_analytics.engines.cost_models import load_cost_model
from costsim_analytics.engines.errors import FieldViolation, InvalidArgument, WorkBoundExceeded
from costsim_analytics.engines.golden.commands import (
    CompareGolden,
    CreateGoldenDataset,
    PromoteCanaryRun,
)
from costsim_analytics.engines.golden.datasets import GoldenSample, prepare_dataset
from costsim_analytics.engines.limits import (
    ARTIFACT_BYTES,
    PLAN_BYTES,
    PLAN_STEPS,
    SAMPLES,
    WorkLimits,
    plan_bytes,
)
from costsim_analytics.engines.maintenance import Reconcile, ReconcileResult
from costsim_analytics.engines.provenance import WriteBatch
from costsim_analytics.handlers.call import Call
from costsim_analytics.handlers.canary import CanaryRunHandler, ReconcileHandler
from costsim_analytics.handlers.golden import (
    CompareGoldenHandler,
    CreateGoldenDatasetHandler,
    PromoteCanaryRunHandler,
)
from costsim_analytics.handlers.provenance import WriteProvenanceBatchHandler
from costsim_analytics.handlers.registry import (
    OP_CANARY_RECONCILE,
    OP_CANARY_RUN,
    OP_GOLDEN_COMPARE,
    OP_GOLDEN_CREATE,
    OP_GOLDEN_PROMOTE,
    OP_PROVENANCE_BATCH,
    OperationRegistry,
)
from tests.factories import plan_payload, provenance_input, stored_record
from tests.seam import served
from tests.unit.fakes import FakeArtifactStore, FakeLock, FakeStore

NOW = datetime(2026, 11, 26, 11, 0, tzinfo=UTC)
SYNTHETIC = tuple(Sample(sample_id, plan) for sample_id, plan in synthetic_samples())
SAME: dict[str, Any] = {"baseline_model": "v1", "candidate_model": "v1"}
LARGE = WorkLimits(max_samples=100_000, max_artifact_bytes=2**40)


def refusal(call: Any) -> tuple[str, str, list[str]]:
    """(bound, reason, fields) of the WorkBoundExceeded ``call()`` raises."""
    with pytest.raises(WorkBoundExceeded) as exc:
        call()
    assert isinstance(exc.value, InvalidArgument)  # so: INVALID_ARGUMENT with its violations
    return exc.value.bound, exc.value.reason, [v.field for v in exc.value.violations]


def sized_plan(size: int, steps: int = 1) -> dict[str, Any]:
    """A plan input whose compact JSON is exactly ``size`` bytes."""
    plan: dict[str, Any] = {"plan": [{"skill": "kv_get"}] * steps, "budget_cents": 5, "note": ""}
    plan["note"] = "x" * (size - plan_bytes(plan))
    assert plan_bytes(plan) == size
    return plan


# --- the engines' validation --------------------------------------------------------------------


def test_plan_bytes_is_the_compact_ascii_json_the_artifacts_write():
    assert plan_bytes({"a": [1, 2.5], "b": "é"}) == len('{"a":[1,2.5],"b":"\\u00e9"}')


def test_a_canary_over_the_sample_bound_is_refused_before_any_sample_is_read():
    limits = WorkLimits(max_samples=3)
    broken = tuple(Sample("", {"deep": 1}) for _ in range(4))  # every one of them invalid too
    assert refusal(lambda: validate(RunCanary(samples=broken), limits=limits)) == (
        SAMPLES,
        "TOO_MANY_SAMPLES",
        ["samples"],
    )
    assert refusal(lambda: validate(RunCanary(sample_count=4), limits=limits)) == (
        SAMPLES,
        "TOO_MANY_SAMPLES",
        ["sample_count"],
    )
    validate(RunCanary(samples=SYNTHETIC[:3], sample_count=3), limits=limits)  # at the bound


def test_a_plan_over_its_byte_or_step_bound_is_named_by_path():
    limits = WorkLimits(max_plan_bytes=2000, max_plan_steps=10)
    fine = Sample("fine", sized_plan(2000, steps=10))  # exactly at both bounds
    big = Sample("big", sized_plan(2001))
    long = Sample("long", sized_plan(500, steps=11))
    validate(RunCanary(samples=(fine,)), limits=limits)

    bound, reason, fields = refusal(
        lambda: validate(RunCanary(samples=(fine, big, fine, long)), limits=limits)
    )
    assert (bound, reason) == (PLAN_BYTES, "PLAN_TOO_LARGE")
    assert fields == ["samples[1].plan_input", "samples[3].plan_input"]
    assert refusal(lambda: validate(RunCanary(samples=(long,)), limits=limits)) == (
        PLAN_STEPS,
        "PLAN_TOO_LARGE",
        ["samples[0].plan_input"],
    )


def test_plans_alone_over_the_artifact_bound_are_refused_before_the_models_run():
    plans = tuple(Sample(f"s{i}", sized_plan(1000)) for i in range(5))
    validate(RunCanary(samples=plans), limits=WorkLimits(max_artifact_bytes=5000))
    with pytest.raises(WorkBoundExceeded) as exc:
        validate(RunCanary(samples=plans), limits=WorkLimits(max_artifact_bytes=4999))
    assert (exc.value.bound, exc.value.reason) == (ARTIFACT_BYTES, "ARTIFACTS_TOO_LARGE")
    assert exc.value.violations == (
        FieldViolation(
            "samples",
            "the run's artifacts would take at least 5000 bytes, more than the 0.00476742 MiB "
            "one run may write: send fewer or smaller samples",
        ),
    )


def test_a_bound_is_reported_before_the_other_rules():
    limits = WorkLimits(max_plan_bytes=1024)
    cmd = RunCanary(samples=(Sample("big", sized_plan(1025)),), candidate_model="v2\x00")
    assert refusal(lambda: validate(cmd, limits=limits))[2] == ["samples[0].plan_input"]
    # Within the bounds, the other rules name their fields as before.
    with pytest.raises(InvalidArgument) as exc:
        validate(replace(cmd, samples=SYNTHETIC[:1]), limits=limits)
    assert not isinstance(exc.value, WorkBoundExceeded)
    assert [v.field for v in exc.value.violations] == ["candidate_model"]


def test_a_golden_import_over_the_sample_or_plan_bound_is_refused():
    one = GoldenSample("a", sized_plan(1024), 1.0, True)
    limits = WorkLimits(max_samples=1, max_plan_bytes=1024)
    prepare_dataset("ref", "", "import", [one], limits=limits)
    two = [one, replace(one, id="b")]
    assert refusal(lambda: prepare_dataset("ref", "", "import", two, limits=limits)) == (
        SAMPLES,
        "TOO_MANY_SAMPLES",
        ["samples"],
    )
    big = [replace(one, plan_input=sized_plan(1025))]
    assert refusal(lambda: prepare_dataset("ref", "", "import", big, limits=limits)) == (
        PLAN_BYTES,
        "PLAN_TOO_LARGE",
        ["samples[0].plan_input"],
    )


# --- the handlers: refused before any work, nothing written -------------------------------------


@dataclass
class Rig:
    store: FakeStore
    artifacts: FakeArtifactStore
    lock: FakeLock

    def canary(self, limits: WorkLimits, **options: Any) -> Any:
        handler = CanaryRunHandler(
            self.store, self.artifacts, lambda: self.lock, clock=lambda: NOW, limits=limits
        )
        return served(OP_CANARY_RUN, replace(handler, **options), self.store)

    def nothing_written(self) -> bool:
        return (
            self.artifacts.files == {}
            and self.store.reports.reports == {}
            and self.store.idempotency.keys == {}
            and self.store.golden.versions == []
            and "commit" not in self.store.events
        )


@pytest.fixture
def rig() -> Rig:
    events: list[str] = []
    return Rig(FakeStore(events=events), FakeArtifactStore(events=events), FakeLock())


def test_a_canary_over_a_bound_does_no_work_and_writes_nothing(rig):
    run = rig.canary(WorkLimits(max_samples=119))
    cmd = RunCanary(samples=SYNTHETIC, request_id="req-1", **SAME)
    assert refusal(lambda: run(cmd))[:2] == (SAMPLES, "TOO_MANY_SAMPLES")
    assert rig.lock.acquired == [] and rig.nothing_written()
    # Only the idempotency middleware's look-up of the key touched storage, read-only.
    assert [uow.read_only for uow in rig.store.opened] == [True]
    # The key was not taken: within the bound the same request runs.
    result: RunCanaryResult = rig.canary(WorkLimits(max_samples=120))(cmd)
    assert not result.replayed and result.report.total_samples == 120


def test_the_artifact_bound_counts_every_byte_of_every_artifact(rig):
    cmd = RunCanary(samples=SYNTHETIC, **SAME)
    report = rig.canary(LARGE)(cmd).report
    size = sum(a.size_bytes for a in report.artifacts)
    names = {a.path.rsplit("/", 1)[1] for a in report.artifacts}
    assert names == {COMPARISONS_FILE, DIFFS_FILE, REPORT_FILE}

    events: list[str] = []
    over = Rig(FakeStore(events=events), FakeArtifactStore(events=events), FakeLock())
    bound, reason, fields = refusal(
        lambda: over.canary(replace(LARGE, max_artifact_bytes=size - 1))(cmd)
    )
    assert (bound, reason, fields) == (ARTIFACT_BYTES, "ARTIFACTS_TOO_LARGE", ["samples"])
    # The models ran (the exact size is known only then), but nothing was written.
    assert over.nothing_written() and over.lock.released == 1
    at = over.canary(replace(LARGE, max_artifact_bytes=size))(cmd).report
    assert sum(a.size_bytes for a in at.artifacts) == size


def test_provenance_plans_over_the_artifact_bound_are_refused_by_sample_count(rig):
    rig.store.provenance.rows = [stored_record(i, NOW - timedelta(hours=1)) for i in range(1, 2501)]
    first_chunk = sum(plan_bytes(plan_payload(i)["input"]) for i in range(1, 1001))
    limits = replace(LARGE, max_artifact_bytes=first_chunk)  # the second chunk passes it
    bound, reason, fields = refusal(lambda: rig.canary(limits)(RunCanary(sample_count=2500)))
    assert (bound, reason, fields) == (ARTIFACT_BYTES, "ARTIFACTS_TOO_LARGE", ["sample_count"])
    assert rig.nothing_written() and rig.lock.released == 1


def test_a_golden_version_over_the_sample_bound_is_refused_before_its_samples_are_read(rig):
    samples = [GoldenSample(s.id, s.plan_input, 1.0, True) for s in SYNTHETIC[:3]]
    create = served(
        OP_GOLDEN_CREATE, CreateGoldenDatasetHandler(rig.store, limits=LARGE), rig.store
    )
    create(CreateGoldenDataset("ref", samples=tuple(samples)))
    rig.store.events.clear()
    small = WorkLimits(max_samples=2)
    compare = served(OP_GOLDEN_COMPARE, CompareGoldenHandler(rig.store, limits=small), rig.store)
    assert refusal(lambda: compare(CompareGolden("ref"))) == (
        SAMPLES,
        "TOO_MANY_SAMPLES",
        ["name"],
    )
    run = rig.canary(small)
    cmd = RunCanary(samples=SYNTHETIC[:2], golden_dataset="ref", **SAME)
    assert refusal(lambda: run(cmd))[2] == ["golden_dataset"]
    assert rig.artifacts.files == {} and rig.store.reports.reports == {}
    assert "commit" not in rig.store.events


def test_golden_create_and_promote_over_the_sample_bound_write_nothing(rig):
    samples = tuple(GoldenSample(s.id, s.plan_input, 1.0, True) for s in SYNTHETIC[:3])
    small = WorkLimits(max_samples=2)
    create = served(
        OP_GOLDEN_CREATE, CreateGoldenDatasetHandler(rig.store, limits=small), rig.store
    )
    assert refusal(lambda: create(CreateGoldenDataset("ref", samples=samples)))[2] == ["samples"]
    assert rig.nothing_written()

    run_id = rig.canary(LARGE)(RunCanary(samples=SYNTHETIC[:3], **SAME)).report.run_id
    versions = list(rig.store.golden.versions)
    promote = served(
        OP_GOLDEN_PROMOTE,
        PromoteCanaryRunHandler(rig.store, rig.artifacts, limits=small),
        rig.store,
    )
    cmd = PromoteCanaryRun(run_id, "promoted", request_id="req-p")
    assert refusal(lambda: promote(cmd))[2] == ["run_id"]
    assert rig.store.golden.versions == versions and rig.store.idempotency.keys == {}


# --- the refusal metric -------------------------------------------------------------------------


def test_refusals_are_counted_by_method_and_bound_and_nothing_else_is():
    metrics = ServiceMetrics()
    registry = OperationRegistry()
    store, artifacts, lock = FakeStore(), FakeArtifactStore(), FakeLock()
    small = WorkLimits(max_samples=2, max_plan_bytes=1024)
    registry.register(OP_CANARY_RUN, CanaryRunHandler(store, artifacts, lambda: lock, limits=small))
    registry.register(OP_GOLDEN_CREATE, CreateGoldenDatasetHandler(store, limits=small))
    registry.register(OP_PROVENANCE_BATCH, WriteProvenanceBatchHandler(store, max_batch=1))
    registry.wrap(metrics.middleware())
    run, create = registry.get(OP_CANARY_RUN), registry.get(OP_GOLDEN_CREATE)
    for cmd in (RunCanary(samples=SYNTHETIC[:3]), RunCanary(sample_count=3)):
        with pytest.raises(WorkBoundExceeded):
            run(cmd, Call())
    with pytest.raises(WorkBoundExceeded):
        run(RunCanary(samples=(Sample("s", sized_plan(1025)),)), Call())
    with pytest.raises(InvalidArgument):  # a bad field, not a bound: not counted
        run(RunCanary(candidate_model="v2\x00"), Call())
    golden = (GoldenSample("a", sized_plan(1025), 1.0, True),)
    with pytest.raises(WorkBoundExceeded):
        create(CreateGoldenDataset("ref", samples=golden), Call())
    batch = WriteBatch([provenance_input(0), provenance_input(1)])
    with pytest.raises(WorkBoundExceeded) as exc:
        registry.get(OP_PROVENANCE_BATCH)(batch, Call())
    assert exc.value.reason == "BATCH_TOO_LARGE"

    text = metrics.exposition().decode()

    def count(method: str, bound: str) -> str:
        return f'costsim_work_refusals_total{{bound="{bound}",method="{method}"}}'

    assert f"{count('RunCanary', SAMPLES)} 2.0" in text
    assert f"{count('RunCanary', PLAN_BYTES)} 1.0" in text
    assert f"{count('CreateGoldenDataset', PLAN_BYTES)} 1.0" in text
    assert f"{count('WriteProvenanceBatch', 'records')} 1.0" in text
    # Every bound of every bounded method is exposed from the start, at 0.
    for method, bound in [
        ("RunCanary", ARTIFACT_BYTES),
        ("RunCanary", PLAN_STEPS),
        ("CompareGolden", SAMPLES),
        ("PromoteCanaryRun", SAMPLES),
    ]:
        assert f"{count(method, bound)} 0.0" in text
    assert artifacts.files == {} and store.provenance.inserted == []


# --- runs written before diffs.jsonl pointed at its comparisons ---------------------------------


def test_a_run_with_whole_row_diffs_still_reconciles_and_promotes(rig):
    # A run as the service wrote it before: each diff the whole comparison row, plan included;
    # its row lost (the database was down), so only its artifacts tell of it.
    evaluation = evaluate(
        SYNTHETIC,
        load_cost_model("v1"),
        load_cost_model("v2"),
        CanaryConfig(),
        run_id="canary-20250101T000000Z-0ld0ld00",
        timestamp=NOW,
        seed=0,
        sample_source="explicit",
    )
    files = sample_artifacts(evaluation)
    rows = [json.loads(line) for line in files[COMPARISONS_FILE].splitlines()]
    old = [row for row in rows if row.get("verdict", "MATCH") != "MATCH"]
    assert old and len(old) < len(rows)
    files[DIFFS_FILE] = "".join(json.dumps(row) + "\n" for row in old).encode()
    run_id = evaluation.report.run_id
    refs = rig.artifacts.save(run_id, files)
    report = replace(evaluation.report, artifacts=refs)
    body = report_artifact(evaluation, report, {"request_id": "", "request_hash": ""})
    rig.artifacts.save(run_id, {REPORT_FILE: body})

    reconcile = served(OP_CANARY_RECONCILE, ReconcileHandler(rig.store, rig.artifacts), rig.store)
    assert reconcile(Reconcile()) == ReconcileResult((run_id,), 0, ())
    promote = served(
        OP_GOLDEN_PROMOTE, PromoteCanaryRunHandler(rig.store, rig.artifacts), rig.store
    )
    dataset = promote(PromoteCanaryRun(run_id, "promoted")).dataset
    assert dataset.sample_count == len(rows)
