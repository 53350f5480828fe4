"""The golden dataset handlers on the fakes, behind the middleware of bootstrap.py."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import pytest

from costsim_analytics.engines.canary.evaluation import (
    COMPARISONS_FILE,
    CanaryConfig,
    Sample,
    evaluate,
)
from costsim_analytics.engines.cost_models import load_cost_model
from costsim_analytics.engines.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    RequestIdReused,
)
from costsim_analytics.engines.golden.commands import (
    ActivateGoldenDataset,
    CompareGolden,
    CreateGoldenDataset,
    GetGoldenDataset,
    ListGoldenDatasets,
    PromoteCanaryRun,
    StoredVersion,
)
from costsim_analytics.engines.golden.datasets import (
    PROMOTE_PREFIX,
    GoldenSample,
    RunNotPromotable,
    dataset_sha256,
    prepare_dataset,
)
from costsim_analytics.engines.golden.results import GoldenComparison
from costsim_analytics.handlers.call import Call
from costsim_analytics.handlers.canary import ReportPublisher
from costsim_analytics.handlers.golden import (
    CREATE_REPLAY,
    PROMOTE_REPLAY,
    ActivateGoldenDatasetHandler,
    CompareGoldenHandler,
    CreateGoldenDatasetHandler,
    GetGoldenDatasetHandler,
    ListGoldenDatasetsHandler,
    PromoteCanaryRunHandler,
)
from costsim_analytics.handlers.idempotency import ReplayTable, idempotency, request_ids
from costsim_analytics.handlers.ports import UnitOfWorkFactory
from costsim_analytics.handlers.registry import (
    OP_GOLDEN_ACTIVATE,
    OP_GOLDEN_COMPARE,
    OP_GOLDEN_CREATE,
    OP_GOLDEN_GET,
    OP_GOLDEN_LIST,
    OP_GOLDEN_PROMOTE,
    OperationRegistry,
)
from tests.unit.fakes import FakeArtifactStore, FakeStore, FakeUnitOfWork, ReadOnlyWrite

NOW = datetime(2026, 11, 26, 11, 0, tzinfo=UTC)
CALL = Call()


def plan(prompt_chars: int) -> dict[str, Any]:
    return {
        "plan": [{"skill": "llm_invoke", "params": {"prompt": "x" * prompt_chars}}],
        "budget_cents": 1000,
    }


def samples(*prompt_chars: int) -> tuple[GoldenSample, ...]:
    """Samples whose expectations are v1's own estimates."""
    v1 = load_cost_model("v1")
    found = []
    for n in prompt_chars:
        estimate = v1.estimate(plan(n))
        found.append(GoldenSample(f"s{n}", plan(n), estimate.cost_cents, estimate.feasible))
    return tuple(found)


A = samples(10, 20, 30)
B = samples(40, 50)


def build_registry(store: UnitOfWorkFactory, artifacts: FakeArtifactStore) -> OperationRegistry:
    registry = OperationRegistry()
    registry.register(OP_GOLDEN_CREATE, CreateGoldenDatasetHandler(store, clock=lambda: NOW))
    registry.register(
        OP_GOLDEN_PROMOTE, PromoteCanaryRunHandler(store, artifacts, clock=lambda: NOW)
    )
    registry.register(OP_GOLDEN_GET, GetGoldenDatasetHandler(store))
    registry.register(OP_GOLDEN_LIST, ListGoldenDatasetsHandler(store))
    registry.register(OP_GOLDEN_ACTIVATE, ActivateGoldenDatasetHandler(store))
    registry.register(OP_GOLDEN_COMPARE, CompareGoldenHandler(store))
    table = (
        ReplayTable().add(OP_GOLDEN_CREATE, CREATE_REPLAY).add(OP_GOLDEN_PROMOTE, PROMOTE_REPLAY)
    )
    registry.wrap(request_ids(table), idempotency(store, table))
    return registry


@dataclass
class Rig:
    store: FakeStore
    artifacts: FakeArtifactStore
    registry: OperationRegistry

    def create(self, cmd: CreateGoldenDataset) -> StoredVersion:
        return self.registry.get(OP_GOLDEN_CREATE)(cmd, CALL)

    def promote(self, cmd: PromoteCanaryRun) -> StoredVersion:
        return self.registry.get(OP_GOLDEN_PROMOTE)(cmd, CALL)

    def get(self, name: str, version: int | None = None):
        return self.registry.get(OP_GOLDEN_GET)(GetGoldenDataset(name, version), CALL)

    def list(self, name: str = ""):
        return self.registry.get(OP_GOLDEN_LIST)(ListGoldenDatasets(name), CALL)

    def activate(self, name: str, version: int):
        return self.registry.get(OP_GOLDEN_ACTIVATE)(ActivateGoldenDataset(name, version), CALL)

    def compare(self, cmd: CompareGolden) -> GoldenComparison:
        return self.registry.get(OP_GOLDEN_COMPARE)(cmd, CALL)

    def nothing_written(self) -> bool:
        return (
            self.store.golden.versions == []
            and self.store.golden.stored_samples == {}
            and self.store.idempotency.keys == {}
            and "commit" not in self.store.events
        )


@pytest.fixture
def rig() -> Rig:
    store, artifacts = FakeStore(), FakeArtifactStore()
    return Rig(store, artifacts, build_registry(store, artifacts))


def canary_run(rig: Rig, run_id: str = "canary-golden-1") -> str:
    """A published canary run over three plans, one the baseline cannot estimate."""
    v1 = load_cost_model("v1")
    run_samples = [
        Sample("b", plan(100)),
        Sample(
            "a",
            {
                "plan": [{"skill": "http_call", "params": {"url": "https://x.test"}}],
                "budget_cents": 3,
            },
        ),
        Sample("bad", {"plan": "not a list", "budget_cents": 10}),
    ]
    evaluation = evaluate(
        run_samples,
        v1,
        v1,
        CanaryConfig(),
        run_id=run_id,
        timestamp=NOW,
        seed=0,
        sample_source="explicit",
    )
    ReportPublisher(rig.store, rig.artifacts).publish(evaluation)
    return run_id


# --- Create ------------------------------------------------------------------------------------


def test_create_stores_the_first_version_active_and_later_ones_inactive(rig):
    first = rig.create(CreateGoldenDataset("ref", "first", A)).dataset
    second = rig.create(CreateGoldenDataset("ref", "second", B)).dataset

    assert (first.name, first.version, first.active, first.sample_count) == ("ref", 1, True, 3)
    assert (first.source, first.description, first.created_at) == ("import", "first", NOW)
    assert first.sha256 == dataset_sha256(A)
    assert (second.version, second.active) == (2, False)
    assert rig.get("ref").version == 1  # the active one
    assert [s.id for s in rig.get("ref", 2).samples] == ["s40", "s50"]
    # Another name starts at version 1, active, whatever "ref" holds.
    other = rig.create(CreateGoldenDataset("other", "", B)).dataset
    assert (other.version, other.active) == (1, True)


def test_create_same_content_under_a_name_already_exists(rig):
    rig.create(CreateGoldenDataset("ref", "", A))
    reordered = tuple(reversed(A))  # same samples, other order: same canonical content

    with pytest.raises(AlreadyExists) as exc:
        rig.create(CreateGoldenDataset("ref", "again", reordered))

    assert type(exc.value) is AlreadyExists and exc.value.reason == "ALREADY_EXISTS"
    assert [d.version for d in rig.list("ref")] == [1]
    assert rig.store.events[-1] == "rollback"


def test_create_replays_by_request_id(rig):
    cmd = CreateGoldenDataset("ref", "", A, request_id="req-1")

    first = rig.create(cmd)
    again = rig.create(cmd)

    assert (first.replayed, again.replayed) == (False, True)
    assert again.dataset == first.dataset
    assert len(rig.store.golden.versions) == 1
    key = rig.store.idempotency.get(OP_GOLDEN_CREATE.name, "req-1")
    assert key is not None and key.response == {"name": "ref", "version": 1}


def test_create_with_a_used_request_id_and_other_content_is_refused(rig):
    rig.create(CreateGoldenDataset("ref", "", A, request_id="req-1"))

    with pytest.raises(RequestIdReused) as exc:
        rig.create(CreateGoldenDataset("ref", "", B, request_id="req-1"))

    assert exc.value.reason == "REQUEST_ID_REUSED"
    assert [d.version for d in rig.list()] == [1]
    assert rig.store.golden.stored_samples.keys() == {1}


def test_create_with_invalid_samples_names_each_field_and_stores_nothing(rig):
    bad = (
        A[0],
        GoldenSample("s2", plan(5), -1.0, True),
        GoldenSample("s3", {"plan": "nope", "budget_cents": 1}, 1.0, True),
        GoldenSample("s2", plan(6), 1.0, True),
    )

    with pytest.raises(InvalidArgument) as exc:
        rig.create(CreateGoldenDataset("ref", "", bad, request_id="req-1"))

    assert [v.field for v in exc.value.violations] == [
        "samples[1].expected_cost_cents",
        "samples[2].plan_input",
        "samples[3].id",
    ]
    assert exc.value.violations[2].description == "duplicate of samples[1].id"
    assert rig.nothing_written()
    assert all(uow.read_only for uow in rig.store.opened)  # only the replay look-up ran


def test_create_with_a_bad_name_is_invalid(rig):
    with pytest.raises(InvalidArgument) as exc:
        rig.create(CreateGoldenDataset("-bad name", "", A))
    assert [v.field for v in exc.value.violations] == ["name"]
    assert rig.nothing_written()


# --- Promote -----------------------------------------------------------------------------------


def test_promote_makes_the_runs_baseline_outputs_a_version(rig):
    run_id = canary_run(rig)

    stored = rig.promote(PromoteCanaryRun(run_id, "promoted", request_id="req-p"))

    dataset = stored.dataset
    assert (dataset.version, dataset.active, dataset.sample_count) == (1, True, 2)
    assert dataset.source == f"{PROMOTE_PREFIX}{run_id}"
    assert dataset.description == f"canary run {run_id}: v1 outputs as expectations"
    got = rig.get("promoted")
    # The baseline could not estimate "bad": left out; the rest sorted by id.
    assert [s.id for s in got.samples] == ["a", "b"]
    v1 = load_cost_model("v1")
    assert [s.expected_cost_cents for s in got.samples] == [
        v1.estimate(plan).cost_cents
        for plan in (
            {
                "plan": [{"skill": "http_call", "params": {"url": "https://x.test"}}],
                "budget_cents": 3,
            },
            {
                "plan": [{"skill": "llm_invoke", "params": {"prompt": "x" * 100}}],
                "budget_cents": 1000,
            },
        )
    ]
    # A retry replays; the run's samples can be imported no second time under the name.
    assert rig.promote(PromoteCanaryRun(run_id, "promoted", request_id="req-p")).replayed
    with pytest.raises(AlreadyExists):
        rig.promote(PromoteCanaryRun(run_id, "promoted"))
    assert len(rig.store.golden.versions) == 1


def test_promote_refuses_an_altered_comparisons_artifact_and_stores_nothing(rig):
    run_id = canary_run(rig)
    files = rig.artifacts.files[run_id]
    files[COMPARISONS_FILE] = files[COMPARISONS_FILE].replace(b'"id":"a"', b'"id":"z"')

    with pytest.raises(RunNotPromotable) as exc:
        rig.promote(PromoteCanaryRun(run_id, "promoted", request_id="req-p"))

    assert isinstance(exc.value, FailedPrecondition)
    assert exc.value.reason == "RUN_NOT_PROMOTABLE"
    assert rig.store.golden.versions == [] and rig.store.idempotency.keys == {}


def test_promote_refuses_a_missing_comparisons_artifact(rig):
    run_id = canary_run(rig)
    del rig.artifacts.files[run_id][COMPARISONS_FILE]

    with pytest.raises(RunNotPromotable) as exc:
        rig.promote(PromoteCanaryRun(run_id, "promoted"))

    assert exc.value.reason == "RUN_NOT_PROMOTABLE"
    assert rig.store.golden.versions == []


def test_promote_of_an_unknown_run_is_not_found(rig):
    with pytest.raises(NotFound) as exc:
        rig.promote(PromoteCanaryRun("canary-nope", "promoted"))
    assert exc.value.reason == "NOT_FOUND"
    with pytest.raises(InvalidArgument) as invalid:
        rig.promote(PromoteCanaryRun("", "promoted"))
    assert [v.field for v in invalid.value.violations] == ["run_id"]
    assert rig.nothing_written()


# --- Get, List, Activate -----------------------------------------------------------------------


def test_get_returns_samples_sorted_and_not_found_otherwise(rig):
    rig.create(CreateGoldenDataset("ref", "", tuple(reversed(A))))

    got = rig.get("ref", 1)
    assert [s.id for s in got.samples] == ["s10", "s20", "s30"]
    assert got.samples[0].plan_input == plan(10)

    with pytest.raises(NotFound, match="no version 9"):
        rig.get("ref", 9)
    with pytest.raises(NotFound, match="no active version"):
        rig.get("unknown")
    with pytest.raises(InvalidArgument) as exc:
        rig.get("ref", 0)
    assert [v.field for v in exc.value.violations] == ["version"]


def test_list_orders_by_name_then_version_without_samples(rig):
    rig.create(CreateGoldenDataset("zeta", "", A))
    rig.create(CreateGoldenDataset("alpha", "", A))
    rig.create(CreateGoldenDataset("alpha", "", B))

    assert [(d.name, d.version) for d in rig.list()] == [("alpha", 1), ("alpha", 2), ("zeta", 1)]
    assert all(d.samples == () for d in rig.list())
    assert [d.version for d in rig.list("alpha")] == [1, 2]
    assert rig.list("unknown") == []


def test_activate_moves_the_active_flag_and_not_found_changes_nothing(rig):
    rig.create(CreateGoldenDataset("ref", "", A))
    rig.create(CreateGoldenDataset("ref", "", B))

    active = rig.activate("ref", 2)

    assert (active.version, active.active) == (2, True)
    assert [(d.version, d.active) for d in rig.list("ref")] == [(1, False), (2, True)]
    assert rig.get("ref").version == 2
    with pytest.raises(NotFound, match="no version 7"):
        rig.activate("ref", 7)
    assert rig.store.events[-1] == "rollback"
    assert [(d.version, d.active) for d in rig.list("ref")] == [(1, False), (2, True)]
    with pytest.raises(NotFound):
        rig.activate("unknown", 1)


# --- Compare and the read paths ----------------------------------------------------------------


def test_compare_is_read_only_and_judges_the_candidate(rig):
    rig.create(CreateGoldenDataset("ref", "", samples(10, 20, 5000, 9000)))
    writes = len(rig.store.opened)

    same = rig.compare(CompareGolden("ref", candidate_model="v1"))
    drifting = rig.compare(CompareGolden("ref"))  # v2, the default candidate

    compares = rig.store.opened[writes:]
    assert len(compares) == 2 and all(uow.read_only and not uow.committed for uow in compares)
    assert (same.passed, same.dataset_name, same.dataset_version) == (True, "ref", 1)
    assert same.candidate.within_tolerance == 4
    assert (drifting.passed, drifting.candidate_model) == (False, "v2")
    assert [r.code for r in drifting.reasons][:1] == ["GOLDEN_COMPARISON_FAILED"]
    assert drifting.candidate.within_tolerance < 4
    with pytest.raises(NotFound):
        rig.compare(CompareGolden("ref", version=2))


@dataclass
class ReadOnlyUnits:
    """A factory that hands out read-only units of work whatever the caller asks for."""

    store: FakeStore

    def __call__(self, *, read_only: bool = False) -> FakeUnitOfWork:
        return self.store(read_only=True)


def test_a_read_only_unit_of_work_refuses_writes_and_commit():
    store = FakeStore()
    new = prepare_dataset("ref", "", "import", A)

    with store(read_only=True) as uow:
        with pytest.raises(ReadOnlyWrite):
            uow.golden.create(new, NOW)
        with pytest.raises(ReadOnlyWrite):
            uow.idempotency.claim("op", "req-1", "hash", NOW)
        with pytest.raises(ReadOnlyWrite):
            uow.commit()

    assert store.golden.versions == [] and store.idempotency.keys == {}


def test_read_handlers_need_no_write_and_write_handlers_are_refused_one():
    store, artifacts = FakeStore(), FakeArtifactStore()
    build_registry(store, artifacts).get(OP_GOLDEN_CREATE)(CreateGoldenDataset("ref", "", A), CALL)
    reads = Rig(store, artifacts, build_registry(ReadOnlyUnits(store), artifacts))
    opened = len(store.opened)

    assert rig_reads_work(reads)
    with pytest.raises(ReadOnlyWrite):
        reads.activate("ref", 1)
    with pytest.raises(ReadOnlyWrite):
        reads.create(CreateGoldenDataset("ref", "", B))
    assert [d.version for d in store.golden.versions] == [1]
    assert all(uow.read_only for uow in store.opened[opened:])


def rig_reads_work(reads: Rig) -> bool:
    return (
        reads.get("ref").version == 1
        and [d.name for d in reads.list()] == ["ref"]
        and reads.compare(CompareGolden("ref", candidate_model="v1")).passed
    )
