from datetime import UTC, datetime

from hypothesis import given
from hypothesis import strategies as st

from costsim.analytics.v1 import analytics_pb2 as pb
from costsim_analytics.api import convert, convert_canary
from costsim_analytics.engines.reports import CanaryReport

json_like = st.recursive(
    st.none() | st.booleans() | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=5), c, max_size=3),
    max_leaves=15,
)


@given(st.dictionaries(st.text(max_size=5), json_like, max_size=4))
def test_struct_round_trip(value):
    msg = pb.ProvenanceRecord()
    msg.payload.update(value)
    assert convert.struct_to_dict(msg.payload) == value


def test_presence_of_output_only_and_optional_fields():
    rec = pb.ProvenanceRecord(run_id="r", v1_cost=0.0, id=3, cost_delta=0.0)
    rec.created_at.GetCurrentTime()
    domain = convert.provenance_input(rec)
    assert domain.v1_cost == 0.0 and domain.v2_cost is None
    assert domain.id_set and domain.cost_delta_set and domain.created_at_set
    assert domain.payload is None


def test_report_status_and_unknown_enum():
    report = CanaryReport(
        run_id="r",
        timestamp=datetime(2026, 1, 1, tzinfo=UTC),
        status="fail",
        total_samples=1,
        matching_samples=0,
        minor_drift_samples=0,
        major_drift_samples=1,
        median_cost_diff=None,
        p90_cost_diff=0.5,
        kl_divergence=None,
        outlier_count=0,
        passed=False,
        failure_reasons=("x",),
        created_at=datetime(2026, 1, 1, tzinfo=UTC),
    )
    msg = convert_canary.canary_report(report)
    assert msg.status == pb.CANARY_STATUS_FAIL
    assert not msg.HasField("median_cost_diff") and msg.p90_cost_diff == 0.5
    unknown = pb.QueryCanaryReportsRequest(status=17)  # type: ignore[arg-type]  # no such enum
    query = convert_canary.report_query(unknown)
    assert query.filter.status.startswith("<unknown")


def test_inconclusive_report_and_its_judgement_convert():
    from costsim_analytics.engines.canary.evaluation import CanaryConfig, Sample, evaluate
    from costsim_analytics.engines.canary.synthetic import synthetic_samples
    from costsim_analytics.engines.cost_models import load_cost_model

    samples = [Sample(i, p) for i, p in synthetic_samples()[:40]]
    v1 = load_cost_model("v1")
    report = evaluate(
        samples,
        v1,
        v1,
        CanaryConfig(),
        run_id="r",
        timestamp=datetime(2026, 1, 1, tzinfo=UTC),
        seed=0,
        sample_source="explicit",
    ).report
    assert report.status == "inconclusive"  # 40 samples cannot show outliers <= 5 %
    msg = convert_canary.canary_report(report)
    assert msg.status == pb.CANARY_STATUS_INCONCLUSIVE and not msg.passed
    j = msg.statistics.judgement
    assert (j.judge, j.kl_bin_method, j.permutations, j.correction) == (
        "calibrated",
        "quantile",
        1000,
        "holm",
    )
    outliers = next(r for r in j.rules if r.rule == "outliers")
    assert outliers.decision == "inconclusive" and outliers.HasField("upper_bound")
    assert convert_canary.STATUS_FROM_PROTO[msg.status] == "inconclusive"
    request = convert_canary.run_canary(pb.RunCanaryRequest(judge="legacy"))
    assert request.judge == "legacy"


def test_a_stored_permutation_seed_past_64_bits_converts_wrapped():
    from dataclasses import replace

    from costsim_analytics.engines.canary.evaluation import CanaryConfig, Sample, evaluate
    from costsim_analytics.engines.canary.synthetic import synthetic_samples
    from costsim_analytics.engines.cost_models import load_cost_model

    samples = [Sample(i, p) for i, p in synthetic_samples()[:40]]
    v1 = load_cost_model("v1")
    report = evaluate(
        samples,
        v1,
        v1,
        CanaryConfig(),
        run_id="r",
        timestamp=datetime(2026, 1, 1, tzinfo=UTC),
        seed=0,
        sample_source="explicit",
    ).report
    assert report.statistics is not None and report.statistics.judgement is not None
    # A row written before the seeds wrapped: seed 2**64 - 1, its permutation stream's + 3.
    judgement = replace(report.statistics.judgement, permutation_seed=2**64 + 2)
    stored = replace(report, statistics=replace(report.statistics, judgement=judgement))
    msg = convert_canary.canary_report(stored)
    assert msg.statistics.judgement.permutation_seed == 2
