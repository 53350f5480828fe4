"""Golden datasets on real SQLite and PostgreSQL: versions, immutability, activation,
idempotency, the canary's golden comparison, promotion from a real run, the migration."""

import hashlib
import json
import threading
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import exc as sa_exc
from sqlalchemy import inspect, update

from costsim_analytics.drivers import schema
from costsim_analytics.drivers.artifacts import LocalArtifactStore
from costsim_analytics.drivers.database import make_engine
from costsim_analytics.drivers.locks import canary_lock
from costsim_analytics.drivers.models import golden_datasets_table
from costsim_analytics.engines.canary.command import RunCanary
from costsim_analytics.engines.canary.evaluation import Sample
from costsim_analytics.engines.canary.synthetic import synthetic_samples
from costsim_analytics.engines.cost_models import load_cost_model
from costsim_analytics.engines.errors import (
    AlreadyExists,
    FailedPrecondition,
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
)
from costsim_analytics.engines.golden.comparison import GoldenConfig
from costsim_analytics.engines.golden.datasets import GoldenSample, export_jsonl, parse_jsonl
from costsim_analytics.engines.reports import ReportFilter
from costsim_analytics.handlers.canary import CanaryRunHandler
from costsim_analytics.handlers.golden import (
    ActivateGoldenDatasetHandler,
    CompareGoldenHandler,
    CreateGoldenDatasetHandler,
    GetGoldenDatasetHandler,
    ListGoldenDatasetsHandler,
    PromoteCanaryRunHandler,
)
from costsim_analytics.handlers.registry import (
    OP_CANARY_RUN,
    OP_GOLDEN_ACTIVATE,
    OP_GOLDEN_COMPARE,
    OP_GOLDEN_CREATE,
    OP_GOLDEN_GET,
    OP_GOLDEN_LIST,
    OP_GOLDEN_PROMOTE,
)
from costsim_analytics.handlers.uow import SqlAlchemyUnitOfWorkFactory
from tests.seam import served

NOW = datetime(2026, 11, 26, 6, 0, tzinfo=UTC)
GOLDEN_TABLES = {"costsim_golden_datasets", "costsim_golden_samples"}


def samples_for(model_name, n=60, offset=0):
    """Samples whose expectations are ``model_name``'s own estimates."""
    model = load_cost_model(model_name)
    out = []
    for i, plan in synthetic_samples()[offset : offset + n]:
        e = model.estimate(plan)
        out.append(GoldenSample(i, plan, e.cost_cents, e.feasible, e.duration_ms))
    return tuple(out)


@pytest.fixture
def uow(engine):
    return SqlAlchemyUnitOfWorkFactory(engine)


def create(uow, name, samples, **kw):
    handler = served(OP_GOLDEN_CREATE, CreateGoldenDatasetHandler(uow, clock=lambda: NOW), uow)
    return handler(CreateGoldenDataset(name, samples=samples, **kw))


def get(uow, name, version=None):
    return served(OP_GOLDEN_GET, GetGoldenDatasetHandler(uow), uow)(GetGoldenDataset(name, version))


class ReadOnlyOnly:
    """A unit-of-work factory that refuses to open a writing unit of work."""

    def __init__(self, inner):
        self.inner = inner

    def __call__(self, *, read_only=False):
        assert read_only, "a read path opened a writing unit of work"
        return self.inner(read_only=True)


def test_import_export_round_trip_is_byte_stable(uow):
    source = export_jsonl(samples_for("v1"))
    # Reformatted and reordered on the way in: the stored version exports canonically anyway.
    rows = [json.loads(line) for line in source.decode().splitlines()][::-1]
    text = "".join(json.dumps(row, indent=None, separators=(", ", ": ")) + "\n" for row in rows)
    stored = create(uow, "ref", tuple(parse_jsonl(text)), description="first").dataset
    assert (stored.name, stored.version, stored.active, stored.sample_count) == ("ref", 1, True, 60)
    assert (stored.source, stored.description, stored.created_at) == ("import", "first", NOW)
    found = get(uow, "ref")
    assert export_jsonl(found.samples) == source
    assert found.sha256 == stored.sha256 == hashlib.sha256(source).hexdigest()
    # And again: export -> import elsewhere -> export.
    again = create(uow, "copy", tuple(parse_jsonl(export_jsonl(found.samples).decode())))
    assert export_jsonl(get(uow, "copy").samples) == source
    assert again.dataset.sha256 == stored.sha256


def test_versions_are_immutable_and_only_activation_moves(uow):
    v1 = create(uow, "ref", samples_for("v1")).dataset
    first_export = export_jsonl(get(uow, "ref", 1).samples)
    with pytest.raises(AlreadyExists, match="version 1 already holds this content"):
        create(uow, "ref", tuple(reversed(samples_for("v1"))))
    v2 = create(uow, "ref", samples_for("v1", n=50)).dataset
    v3 = create(uow, "ref", samples_for("v2")).dataset
    assert [(v.version, v.active) for v in (v1, v2, v3)] == [(1, True), (2, False), (3, False)]
    assert get(uow, "ref").version == 1  # a new version is not activated by itself
    assert export_jsonl(get(uow, "ref", 1).samples) == first_export

    activate = served(OP_GOLDEN_ACTIVATE, ActivateGoldenDatasetHandler(uow), uow)
    assert activate(ActivateGoldenDataset("ref", 3)).active
    assert get(uow, "ref").version == 3
    assert activate(ActivateGoldenDataset("ref", 3)).version == 3  # idempotent
    with pytest.raises(NotFound):
        activate(ActivateGoldenDataset("ref", 9))
    listed = served(OP_GOLDEN_LIST, ListGoldenDatasetsHandler(ReadOnlyOnly(uow)), uow)(
        ListGoldenDatasets()
    )
    assert [(d.name, d.version, d.active) for d in listed] == [
        ("ref", 1, False),
        ("ref", 2, False),
        ("ref", 3, True),
    ]
    assert all(d.samples == () for d in listed)
    # Nothing was rewritten: every version still exports to its own hash.
    for d in listed:
        body = export_jsonl(get(uow, "ref", d.version).samples)
        assert hashlib.sha256(body).hexdigest() == d.sha256
    # The same content under another name is another dataset.
    assert create(uow, "other", samples_for("v1")).dataset.version == 1


def test_one_active_version_per_name_is_enforced_by_the_database(engine, uow):
    create(uow, "ref", samples_for("v1", n=5))
    create(uow, "ref", samples_for("v1", n=6))
    create(uow, "ref", samples_for("v1", n=7))  # two inactive rows side by side are fine
    with pytest.raises(sa_exc.IntegrityError), engine.begin() as conn:
        conn.execute(
            update(golden_datasets_table)
            .where(golden_datasets_table.c.version == 2)
            .values(active=True)
        )


def test_lookups_that_find_nothing(uow):
    with pytest.raises(NotFound, match="'nope' has no active version"):
        get(uow, "nope")
    create(uow, "ref", samples_for("v1", n=3))
    with pytest.raises(NotFound, match="version 4"):
        get(uow, "ref", 4)
    with pytest.raises(NotFound):
        served(OP_GOLDEN_COMPARE, CompareGoldenHandler(uow), uow)(CompareGolden("nope"))


def test_request_id_replays_and_refuses_another_request(uow):
    first = create(uow, "ref", samples_for("v1"), request_id="import-1")
    again = create(uow, "ref", samples_for("v1"), request_id="import-1")
    assert again.replayed and not first.replayed
    assert again.dataset == first.dataset
    with pytest.raises(RequestIdReused):
        create(uow, "ref", samples_for("v2"), request_id="import-1")
    # A duplicate under a new key is ALREADY_EXISTS, and the key is not used up.
    with pytest.raises(AlreadyExists):
        create(uow, "ref", samples_for("v1"), request_id="import-2")
    assert create(uow, "ref", samples_for("v2"), request_id="import-2").dataset.version == 2


def test_compare_reads_only_and_judges_the_candidate(uow):
    create(uow, "ref", samples_for("v1"))
    compare = served(
        OP_GOLDEN_COMPARE, CompareGoldenHandler(ReadOnlyOnly(uow), GoldenConfig()), uow
    )
    against_itself = compare(CompareGolden("ref", candidate_model="v1"))
    assert against_itself.passed and against_itself.candidate.within_tolerance_share == 1.0
    assert against_itself.direction == "unchanged"
    v2 = compare(CompareGolden("ref"))
    assert (v2.candidate_model, v2.baseline_model, v2.dataset_version) == ("v2", "v1", 1)
    assert not v2.passed and v2.direction == "away"
    assert v2.farther_samples > 0 and v2.closer_samples == 0
    assert compare(CompareGolden("ref", tolerance=100, max_feasibility_flips=1000)).passed
    assert len(compare(CompareGolden("ref", worst_samples=3)).worst_samples) == 3


def test_concurrent_imports_of_one_name_get_consecutive_versions(engine, uow):
    # PostgreSQL serialises them with a per-name transaction lock, SQLite with BEGIN IMMEDIATE.
    barrier = threading.Barrier(4)
    results, errors = [], []

    def work(n):
        barrier.wait()
        try:
            results.append(create(uow, "race", samples_for("v1", n=10 + n)).dataset)
        except Exception as exc:  # pragma: no cover - the assertion shows it
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert sorted(d.version for d in results) == [1, 2, 3, 4]
    assert sum(d.active for d in results) == 1


# --- the canary --------------------------------------------------------------------------------


def canary(engine, root: Path, **kw):
    uow = SqlAlchemyUnitOfWorkFactory(engine)
    handler = CanaryRunHandler(
        uow,
        LocalArtifactStore(root),
        lambda: canary_lock(engine, root),
        lock_timeout_s=0.2,
        clock=lambda: NOW,
        **kw,
    )
    return served(OP_CANARY_RUN, handler, uow)


def stored_reports(uow):
    with uow(read_only=True) as r:
        return [x for chunk in r.reports.stream(ReportFilter(), None, 100) for x in chunk]


EXPLICIT = tuple(Sample(i, p) for i, p in synthetic_samples()[:60])


def test_canary_records_the_golden_version_it_used(engine, uow, tmp_path):
    ref = create(uow, "ref", samples_for("v2")).dataset  # the candidate's own outputs: pass
    create(uow, "ref", samples_for("v1"))  # version 2, not active
    result = canary(engine, tmp_path, golden_dataset="ref")(RunCanary(samples=EXPLICIT))
    report = result.report
    g = report.golden_comparison
    assert (g.dataset_name, g.dataset_version, g.dataset_sha256) == ("ref", 1, ref.sha256)
    assert g.passed and g.candidate.within_tolerance_share == 1.0
    assert g.baseline.model == "v1" and g.direction == "toward"
    [stored] = stored_reports(uow)
    assert stored.golden_comparison == g
    body = json.loads((tmp_path / report.artifacts[2].path).read_text())
    assert body["golden_comparison"]["dataset_sha256"] == ref.sha256


def test_a_failing_golden_comparison_fails_the_canary(engine, uow, tmp_path):
    create(uow, "ref", samples_for("v1"))  # the baseline's outputs: v2 is far from them
    create(uow, "other", samples_for("v2"))
    handler = canary(engine, tmp_path, golden_dataset="other")
    # With the default thresholds V2's drift from V1 fails the canary on its own...
    default = handler(RunCanary(samples=EXPLICIT)).report
    assert (default.status, default.passed) == ("fail", False)
    assert default.golden_comparison is not None and default.golden_comparison.passed
    assert "GOLDEN_COMPARISON_FAILED" not in {r.code for r in default.reasons}
    # ...so the golden verdict is shown with the drift rules opened up.
    drift_only = handler(
        RunCanary(
            samples=EXPLICIT, major_drift_max_pct=1.0, drift_threshold=99, outlier_max_pct=1.0
        )
    ).report
    assert drift_only.status == "pass" and drift_only.golden_comparison.dataset_name == "other"
    judged = handler(
        RunCanary(
            samples=EXPLICIT,
            major_drift_max_pct=1.0,
            drift_threshold=99,
            outlier_max_pct=1.0,
            golden_dataset="ref",
        )
    ).report
    assert (judged.status, judged.passed) == ("fail", False)
    codes = {(r.code, r.metric) for r in judged.reasons}
    assert ("GOLDEN_COMPARISON_FAILED", "golden_within_tolerance_share") in codes
    assert any("golden ref v1" in m for m in judged.failure_reasons)
    stored = {r.run_id: r for r in stored_reports(uow)}[judged.run_id]
    assert stored.status == "fail" and stored.reasons == judged.reasons


def test_canary_with_an_unknown_golden_dataset_stores_nothing(engine, uow, tmp_path):
    with pytest.raises(NotFound, match="'missing'"):
        canary(engine, tmp_path)(RunCanary(samples=EXPLICIT, golden_dataset="missing"))
    assert stored_reports(uow) == []
    # Without any golden name there is no comparison.
    assert canary(engine, tmp_path)(RunCanary(samples=EXPLICIT)).report.golden_comparison is None


def test_promote_a_real_canary_run(engine, uow, tmp_path):
    run = canary(engine, tmp_path)(RunCanary(samples=EXPLICIT)).report
    promote = served(
        OP_GOLDEN_PROMOTE,
        PromoteCanaryRunHandler(uow, LocalArtifactStore(tmp_path), clock=lambda: NOW),
        uow,
    )
    result = promote(PromoteCanaryRun(run.run_id, "from-canary", request_id="p-1"))
    d = result.dataset
    assert (d.name, d.version, d.active, d.source) == (
        "from-canary",
        1,
        True,
        f"promote:{run.run_id}",
    )
    assert d.sample_count == 60 and "v1 outputs" in d.description
    # The baseline's outputs are the expectations: V1 matches it exactly, byte for byte.
    assert export_jsonl(get(uow, "from-canary").samples) == export_jsonl(samples_for("v1"))
    compare = served(OP_GOLDEN_COMPARE, CompareGoldenHandler(uow), uow)
    assert compare(CompareGolden("from-canary", candidate_model="v1")).passed
    assert promote(PromoteCanaryRun(run.run_id, "from-canary", request_id="p-1")).replayed
    with pytest.raises(AlreadyExists):
        promote(PromoteCanaryRun(run.run_id, "from-canary"))
    with pytest.raises(NotFound):
        promote(PromoteCanaryRun("canary-nope", "x"))
    comparisons = tmp_path / run.artifacts[0].path
    comparisons.write_text(comparisons.read_text().replace("synthetic-001", "synthetic-101"))
    with pytest.raises(FailedPrecondition, match="checksum"):
        promote(PromoteCanaryRun(run.run_id, "tampered"))


# --- the migration -----------------------------------------------------------------------------


def test_golden_tables_migrate_down_and_up(empty_database_url):
    engine = make_engine(empty_database_url)
    try:
        schema.upgrade(empty_database_url, "0003_golden_datasets")
        assert set(inspect(engine).get_table_names()) >= GOLDEN_TABLES
        indexes = {ix["name"]: ix for ix in inspect(engine).get_indexes("costsim_golden_datasets")}
        assert indexes["uq_costsim_golden_active_name"]["unique"]
        assert indexes["uq_costsim_golden_name_version"]["unique"]
        assert indexes["uq_costsim_golden_name_sha256"]["unique"]
        create(SqlAlchemyUnitOfWorkFactory(engine), "ref", samples_for("v1", n=4))
        schema.downgrade(empty_database_url, "0002_canary_details")
        assert not GOLDEN_TABLES & set(inspect(engine).get_table_names())
        assert "costsim_canary_reports" in inspect(engine).get_table_names()
        schema.upgrade(empty_database_url, "0003_golden_datasets")
        assert set(inspect(engine).get_table_names()) >= GOLDEN_TABLES
    finally:
        engine.dispose()


def test_a_golden_comparison_row_without_golden_reads_back_as_none(uow, engine, tmp_path):
    report = canary(engine, tmp_path)(RunCanary(samples=EXPLICIT)).report
    [stored] = stored_reports(uow)
    assert stored.golden_comparison is None and report.golden_comparison is None
    assert replace(stored, id=0, created_at=None).run_id == report.run_id
