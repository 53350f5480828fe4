from dataclasses import replace
from datetime import UTC, datetime

from hypothesis import given
from hypothesis import strategies as st

from costsim.analytics.v1 import analytics_pb2 as pb
from costsim_analytics.api import convert, convert_canary
from costsim_analytics.engines.canonical import normalize_numbers
from costsim_analytics.engines.errors import InvalidArgument
from costsim_analytics.engines.provenance import WriteBatch, prepare_batch
from costsim_analytics.engines.provenance_digest import command_fingerprint
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


# Every double a Struct can carry, the awkward ones included, and Values with no kind set.
struct_numbers = st.floats() | st.sampled_from([0.0, -0.0, 1000.0, 2.0**53, 2.0**53 + 2, 1e300])
struct_like = st.recursive(
    st.none() | st.booleans() | struct_numbers | st.integers(-(2**60), 2**60) | st.text(),
    lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=5), c, max_size=3),
    max_leaves=25,
)


def json_depth(value: object) -> int:
    """Nesting as normalize_json counts it: ``{}`` is 1."""
    if isinstance(value, dict):
        return 1 + max((json_depth(v) for v in value.values()), default=0)
    if isinstance(value, list):
        return 1 + max((json_depth(v) for v in value), default=0)
    return 0


def typed(value: object) -> object:
    """``value`` with every leaf's type beside it, so that 1 and 1.0 (and 0.0, -0.0) differ."""
    if isinstance(value, dict):
        return {k: typed(v) for k, v in value.items()}
    if isinstance(value, list):
        return [typed(v) for v in value]
    return (type(value).__name__, repr(value))


@given(st.dictionaries(st.text(max_size=5), struct_like, max_size=4), st.booleans())
def test_normalized_struct_is_the_old_conversion_normalised(value, unset_kind):
    msg = pb.ProvenanceRecord()
    msg.payload.update(value)
    if unset_kind:
        msg.payload.fields["unset"].Clear()  # a Value with no kind: None, as before
    old = convert.struct_to_dict(msg.payload)
    fast = convert.normalized_struct(msg.payload)
    try:
        expected = normalize_numbers(old)
    except ValueError:  # NaN or an infinity: left to the engine's walk
        assert fast is None
        return
    if fast is None:  # only for a number the engine must decide on
        assert any(
            (f.is_integer() and (abs(f) > 2**53 or str(f) == "-0.0")) for f in floats_in(old)
        )
        return
    payload, depth = fast
    assert typed(payload) == typed(expected)
    assert depth == json_depth(old)


def digest_or_error(batch: WriteBatch) -> str:
    try:
        return command_fingerprint(batch)
    except ValueError as exc:  # no JSON form (NaN, an infinity): refused by validation too
        return f"error: {exc}"


def floats_in(value: object) -> list[float]:
    if isinstance(value, dict):
        return [f for v in value.values() for f in floats_in(v)]
    if isinstance(value, list):
        return [f for v in value for f in floats_in(v)]
    return [value] if isinstance(value, float) else []


@given(st.dictionaries(st.text(max_size=5), struct_like, max_size=4))
def test_a_struct_record_prepares_and_digests_as_before(value):
    """Hashes, stored text and the idempotency digest are those of the old conversion."""
    msg = pb.WriteProvenanceBatchRequest(request_id="k")
    rec = msg.records.add(run_id="r", variant_slug="v2", source="sandbox")
    rec.payload.SetInParent()
    rec.payload.update(value)
    new = convert.write_batch(msg)
    old = WriteBatch(
        [replace(new.records[0], payload=convert.struct_to_dict(rec.payload), payload_depth=0)],
        "k",
    )
    assert digest_or_error(new) == digest_or_error(old)
    now = datetime(2026, 1, 1, tzinfo=UTC)
    outcomes: list[object] = []
    for batch in (new, old):
        try:
            outcomes.append(prepare_batch(batch.records, max_batch=1, now=now, max_depth=4))
        except InvalidArgument as exc:
            outcomes.append([str(exc)])
    assert outcomes[0] == outcomes[1]
