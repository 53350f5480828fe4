"""The client's pure parts: batching, what a refusal means, backoff, status decoding, records."""

from __future__ import annotations

import random
import time
from datetime import timedelta
from typing import Any

import grpc
import pytest
from google.protobuf import any_pb2, duration_pb2
from google.rpc import error_details_pb2, status_pb2

from costsim.analytics.v1 import analytics_pb2 as pb
from costsim_analytics.client import _calls
from costsim_analytics.client.batching import Buffer, Outcome, WriterOptions, judge
from costsim_analytics.client.errors import (
    MESSAGE_TOO_LARGE,
    FieldViolation,
    InvalidRecordError,
    ResourceExhaustedError,
    RpcError,
    UnavailableError,
    from_grpc,
)
from costsim_analytics.client.records import batch_bytes, encode_batch, prepare_record
from costsim_analytics.client.retry import RetryBudget, RetryPolicy, should_retry
from costsim_analytics.client.spool import Spool
from costsim_analytics.engines.provenance import ProvenanceInput, prepare_batch
from tests.factories import T0, provenance_json

# --- batching ------------------------------------------------------------------------------


def buffer(tmp_path=None, **options) -> Buffer:
    spool = Spool.open(tmp_path) if tmp_path is not None else None
    return Buffer(spool, WriterOptions(**options))


def test_a_batch_is_sealed_when_full_by_count():
    buf = buffer(max_batch_records=3, max_buffer_records=10, max_delay_s=60)
    buf.append([b"a", b"b"])
    due = buf.due_in(closing=False)
    assert due is not None and due > 1 and buf.next_batch(closing=False) is None
    buf.append([b"c", b"d"])
    batch = buf.next_batch(closing=False)
    assert batch is not None and batch.bodies == [b"a", b"b", b"c"]
    assert buf.next_batch(closing=False) is None  # "d" waits for more, or for its delay


def test_a_batch_is_sealed_when_full_by_bytes():
    buf = buffer(max_batch_records=100, max_batch_bytes=250, max_delay_s=60)
    buf.append([b"x" * 100] * 3)
    batch = buf.next_batch(closing=False)
    assert batch is not None and len(batch.bodies) == 2  # a third would pass 250 bytes


def test_a_batch_is_sealed_after_the_delay_or_on_flush():
    buf = buffer(max_batch_records=100, max_delay_s=0.05)
    buf.append([b"a"])
    assert buf.next_batch(closing=False) is None
    buf.flushing += 1
    assert buf.next_batch(closing=False) is not None
    buf.flushing -= 1
    buf.append([b"b"])
    time.sleep(0.06)
    assert buf.due_in(closing=False) == 0.0
    assert buf.next_batch(closing=False) is not None


def test_request_ids_are_the_spool_id_and_the_batch_number(tmp_path):
    buf = buffer(tmp_path, max_batch_records=1, request_id_prefix="sim-")
    buf.append([b"a", b"b"])
    first, second = buf.next_batch(False), buf.next_batch(False)
    assert first is not None and second is not None
    assert first.request_id == f"sim-{buf.source_id}-0"
    assert second.request_id == f"sim-{buf.source_id}-1"
    assert buf.spool is not None
    buf.spool.close()
    # Reopened: the same batches, under the same ids, sent first.
    again = buffer(tmp_path, max_batch_records=1, request_id_prefix="sim-")
    assert again.source_id == buf.source_id
    resent = [again.next_batch(False), again.next_batch(False)]
    assert [b.request_id for b in resent if b] == [first.request_id, second.request_id]
    assert [b.bodies for b in resent if b] == [[b"a"], [b"b"]]
    assert again.spool is not None
    again.spool.close()


def test_the_buffer_bounds_what_is_not_yet_acknowledged():
    buf = buffer(max_batch_records=2, max_buffer_records=4, max_buffer_bytes=1000)
    buf.append([b"a"] * 4)
    assert not buf.has_room(1, 1)
    batch = buf.next_batch(closing=False)
    assert batch is not None
    assert not buf.has_room(1, 1)  # in flight is still held
    buf.acked(batch, replayed=False)
    assert buf.has_room(2, 2) and not buf.has_room(3, 3)
    assert buf.metrics().records_sent == 2 and buf.depth == 2


def test_a_returned_batch_goes_first_and_a_refused_record_leaves():
    buf = buffer(max_batch_records=3, max_delay_s=60)
    a, b, c, d = (prepare_record(**provenance_json(i)).body for i in range(4))
    buf.append([a, b, c, d])
    batch = buf.next_batch(closing=False)
    assert batch is not None
    error = RpcError(grpc.StatusCode.INVALID_ARGUMENT, "bad", violations=[])
    [rejected] = buf.rejected(batch, [1], error)
    assert rejected.request_id == batch.request_id and rejected.record.run_id == "run-1"
    again = buf.next_batch(closing=False)
    assert again is not None and again.bodies == [a, c, d]
    assert buf.metrics().records_rejected == 1


def test_a_batch_too_large_makes_the_next_ones_the_size_the_server_names():
    buf = buffer(max_batch_records=100)
    buf.append([b"x"] * 120)
    batch = buf.next_batch(closing=False)
    assert batch is not None and len(batch.seqs) == 100
    error = RpcError(
        grpc.StatusCode.INVALID_ARGUMENT,
        "records: 100 records exceed the batch limit of 50",
        reason="BATCH_TOO_LARGE",
        violations=[FieldViolation("records", "must hold at most 50 records")],
    )
    buf.shrink(batch, error)
    sizes = [len(b.seqs) for b in iter(lambda: buf.next_batch(closing=True), None)]
    assert sizes == [50, 50, 20]


# --- what a refusal means --------------------------------------------------------------------


def error(code: grpc.StatusCode, reason: str = "", fields: tuple[str, ...] = (), **kw) -> RpcError:
    violations = [FieldViolation(f, "no") for f in fields]
    cls = {grpc.StatusCode.RESOURCE_EXHAUSTED: ResourceExhaustedError}.get(code, RpcError)
    return cls(code, "m", reason=reason, violations=violations, **kw)


@pytest.mark.parametrize(
    ("failure", "size", "expected"),
    [
        (error(grpc.StatusCode.UNAVAILABLE, "DATABASE_UNAVAILABLE"), 5, (Outcome.RETRY, [])),
        (error(grpc.StatusCode.DEADLINE_EXCEEDED), 5, (Outcome.RETRY, [])),
        (error(grpc.StatusCode.INTERNAL), 5, (Outcome.RETRY, [])),
        (error(grpc.StatusCode.UNAUTHENTICATED, "TOKEN_EXPIRED"), 5, (Outcome.RETRY, [])),
        (error(grpc.StatusCode.PERMISSION_DENIED, "METHOD_NOT_ALLOWED"), 5, (Outcome.RETRY, [])),
        (
            error(grpc.StatusCode.RESOURCE_EXHAUSTED, "TOO_MANY_CALLS", retry_delay_s=1.0),
            5,
            (Outcome.RETRY, []),
        ),
        (error(grpc.StatusCode.RESOURCE_EXHAUSTED, MESSAGE_TOO_LARGE), 5, (Outcome.SPLIT, [])),
        (error(grpc.StatusCode.RESOURCE_EXHAUSTED, MESSAGE_TOO_LARGE), 1, (Outcome.REJECT, [0])),
        (error(grpc.StatusCode.INVALID_ARGUMENT, "BATCH_TOO_LARGE"), 5, (Outcome.SPLIT, [])),
        (error(grpc.StatusCode.ALREADY_EXISTS, "REQUEST_ID_REUSED"), 5, (Outcome.RESEAL, [])),
        (
            error(
                grpc.StatusCode.INVALID_ARGUMENT,
                fields=("records[3].v1_cost", "records[1].run_id", "records[3].source"),
            ),
            5,
            (Outcome.REJECT, [1, 3]),
        ),
        (
            error(grpc.StatusCode.INVALID_ARGUMENT, fields=("request_id",)),
            2,
            (Outcome.REJECT, [0, 1]),
        ),
        (
            error(
                grpc.StatusCode.PERMISSION_DENIED, "TENANT_NOT_ALLOWED", ("records[2].tenant_id",)
            ),
            5,
            (Outcome.REJECT, [2]),
        ),
    ],
)
def test_only_an_explicit_refusal_drops_a_record(failure, size, expected):
    assert judge(failure, size) == expected


# --- backoff and budget ----------------------------------------------------------------------


def test_backoff_grows_to_its_cap_with_jitter_below_the_ceiling():
    policy = RetryPolicy(initial_backoff_s=0.1, max_backoff_s=1.0, jitter=0.5)
    rng = random.Random(3)
    for attempt, ceiling in [(1, 0.1), (2, 0.2), (3, 0.4), (4, 0.8), (5, 1.0), (9, 1.0)]:
        delays = [policy.backoff_s(attempt, rng) for _ in range(200)]
        assert ceiling / 2 <= min(delays) and max(delays) <= ceiling
        assert max(delays) - min(delays) > ceiling / 4  # jittered, not one value


def test_the_servers_retry_delay_wins_over_the_backoff_up_to_the_cap():
    policy = RetryPolicy(max_backoff_s=5.0)
    assert policy.delay_s(error(grpc.StatusCode.UNAVAILABLE, retry_delay_s=1.5), 1) == 1.5
    assert policy.delay_s(error(grpc.StatusCode.UNAVAILABLE, retry_delay_s=60.0), 1) == 5.0


def test_the_budget_stops_retries_until_successes_refill_it():
    policy = RetryPolicy(max_attempts=100, budget=RetryBudget(max_tokens=10, ratio=0.5))
    failure = UnavailableError(grpc.StatusCode.UNAVAILABLE, "down")
    allowed = [should_retry(failure, 1, policy) for _ in range(10)]
    assert allowed == [True] * 4 + [False] * 6
    for _ in range(12):  # 6 tokens: the next failure would leave 5, not more than half
        policy.budget.succeeded()
    assert not should_retry(failure, 1, policy)
    for _ in range(4):
        policy.budget.succeeded()
    assert should_retry(failure, 1, policy)


def test_what_is_never_retried():
    policy = RetryPolicy()
    too_large = error(grpc.StatusCode.RESOURCE_EXHAUSTED, MESSAGE_TOO_LARGE, retry_delay_s=1)
    no_advice = error(grpc.StatusCode.RESOURCE_EXHAUSTED, "SOMETHING")
    admission = error(grpc.StatusCode.RESOURCE_EXHAUSTED, "TOO_MANY_CALLS", retry_delay_s=1)
    assert not should_retry(too_large, 1, policy)
    assert not should_retry(no_advice, 1, policy)
    assert should_retry(admission, 1, policy)
    assert not should_retry(error(grpc.StatusCode.INVALID_ARGUMENT), 1, policy)
    unavailable = UnavailableError(grpc.StatusCode.UNAVAILABLE, "down")
    assert not should_retry(unavailable, policy.max_attempts, policy)


# --- status decoding -----------------------------------------------------------------------


class FakeCall(grpc.RpcError):
    def __init__(self, code, message, trailers):
        self._code, self._message, self._trailers = code, message, trailers

    def code(self):
        return self._code

    def details(self):
        return self._message

    def trailing_metadata(self):
        return self._trailers


def packed(message) -> any_pb2.Any:
    out = any_pb2.Any()
    out.Pack(message)
    return out


def test_a_status_is_decoded_into_reason_fields_and_retry_delay():
    delay = duration_pb2.Duration()
    delay.FromTimedelta(timedelta(seconds=1.5))
    status = status_pb2.Status(
        code=14,
        message="database unavailable",
        details=[
            packed(error_details_pb2.ErrorInfo(reason="DATABASE_UNAVAILABLE", metadata={"a": "b"})),
            packed(
                error_details_pb2.BadRequest(
                    field_violations=[
                        error_details_pb2.BadRequest.FieldViolation(field="x", description="y")
                    ]
                )
            ),
            packed(error_details_pb2.RetryInfo(retry_delay=delay)),
        ],
    )
    trailers = (("grpc-status-details-bin", status.SerializeToString()),)
    decoded = from_grpc(FakeCall(grpc.StatusCode.UNAVAILABLE, "database unavailable", trailers))
    assert isinstance(decoded, UnavailableError) and decoded.retryable
    assert (decoded.reason, decoded.metadata, decoded.retry_delay_s) == (
        "DATABASE_UNAVAILABLE",
        {"a": "b"},
        1.5,
    )
    assert decoded.violations == (FieldViolation("x", "y"),)


def test_grpcs_own_message_too_large_is_not_retryable():
    decoded = from_grpc(
        FakeCall(
            grpc.StatusCode.RESOURCE_EXHAUSTED, "Received message larger than max (5 vs. 4)", ()
        )
    )
    assert isinstance(decoded, ResourceExhaustedError)
    assert decoded.reason == MESSAGE_TOO_LARGE and not decoded.retryable
    pushback = from_grpc(
        FakeCall(grpc.StatusCode.RESOURCE_EXHAUSTED, "busy", (("grpc-retry-pushback-ms", "250"),))
    )
    assert pushback.retry_delay_s == 0.25 and pushback.retryable


# --- records -------------------------------------------------------------------------------


def test_a_prepared_record_is_what_the_server_would_store_from_the_struct():
    fields = provenance_json(4, tenant_id="acme", adapter_version="1.3", commit_sha="abc")
    record = prepare_record(**fields)
    message = pb.ProvenanceRecord.FromString(record.body)
    [server] = prepare_batch([ProvenanceInput(**fields)], max_batch=1, now=T0)
    assert message.payload_json == server.payload_json  # the canonical JSON
    assert (message.input_hash, message.output_hash) == (server.input_hash, server.output_hash)
    assert not message.HasField("payload")
    # ... and the server's fast path takes that as it is, to the same hashes.
    [fast] = prepare_batch(
        [
            ProvenanceInput(
                **{k: v for k, v in fields.items() if k != "payload"},
                payload_json=message.payload_json,
                input_hash=message.input_hash,
                output_hash=message.output_hash,
            )
        ],
        max_batch=1,
        now=T0,
    )
    assert fast.payload == server.payload


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"v1_cost": -1.0}, "v1_cost"),
        ({"variant_slug": "v9"}, "variant_slug"),
        ({"run_id": ""}, "run_id"),
        ({"model_version": "a\x00b"}, "model_version"),
        ({"payload": {"input": {}, "output": {}, "status": "nope"}}, "payload.status"),
        ({"payload": {"input": {"when": object()}, "output": {}}}, "payload"),
        ({"payload": {"input": {"x": float("nan")}, "output": {}}}, "payload"),
        ({"payload": {"output": {}}}, "input_hash"),
        ({"input_hash": "not-hex"}, "input_hash"),
    ],
)
def test_a_bad_record_is_refused_locally_naming_its_field(change, field):
    with pytest.raises(InvalidRecordError) as refused:
        prepare_record(**{**provenance_json(1), **change})
    assert refused.value.code is grpc.StatusCode.INVALID_ARGUMENT
    assert field in [v.field for v in refused.value.violations]


def test_deeper_payloads_than_the_server_allows_are_refused():
    deep: dict[str, Any] = {}
    node = deep
    for _ in range(40):
        node["a"] = {}
        node = node["a"]
    with pytest.raises(InvalidRecordError) as refused:
        prepare_record(**{**provenance_json(1), "payload": {"input": deep, "output": {}}})
    assert "levels deep" in refused.value.message


def test_an_encoded_batch_is_the_request_the_server_parses():
    records = [prepare_record(**provenance_json(i)) for i in range(3)]
    request = pb.WriteProvenanceBatchRequest.FromString(
        encode_batch([r.body for r in records], "key-1")
    )
    assert request.request_id == "key-1"
    assert [r.run_id for r in request.records] == ["run-0", "run-1", "run-2"]


@pytest.mark.parametrize("size", [0, 1, 127, 128, 16383, 16384, 70_000, 2_100_000])
def test_batch_bytes_is_what_a_record_adds_to_the_encoded_request(size):
    body = pb.ProvenanceRecord(run_id="r" * size).SerializeToString()
    alone = encode_batch([], "k")
    assert len(encode_batch([body], "k")) - len(alone) == batch_bytes(body)
    assert pb.WriteProvenanceBatchRequest.FromString(encode_batch([body, body], "k")).records[
        1
    ] == pb.ProvenanceRecord.FromString(body)


# --- pages -----------------------------------------------------------------------------------


def pages(pager: _calls.Pager, results: list[int]) -> list[int]:
    """Drive a pager over pages of the given sizes; the sizes asked for."""
    asked = []
    for received in results:
        size = pager.next_size()
        if size is None:
            break
        asked.append(size)
        for n in range(received):
            pager.saw(f"t{n}")
        if not pager.page_ended(received):
            break
    return asked


def test_pages_continue_while_full_and_end_on_a_short_one():
    assert pages(_calls.Pager(10, None, ""), [10, 10, 3, 99]) == [10, 10, 10]


def test_a_server_that_lowers_the_page_size_is_followed_to_the_end():
    # The server caps pages at 4: the first short page is not taken for the end.
    assert pages(_calls.Pager(10, None, ""), [4, 4, 4, 1, 99]) == [10, 10, 10, 10]
    assert pages(_calls.Pager(10, None, ""), [4, 0, 99]) == [10, 10]


def test_a_limit_bounds_the_pages():
    assert pages(_calls.Pager(10, 25, ""), [10, 10, 5, 99]) == [10, 10, 5]


def test_a_batch_names_each_refused_record_by_its_index():
    records = [provenance_json(0), provenance_json(1, v1_cost=-1.0), provenance_json(2, source="x")]
    with pytest.raises(InvalidRecordError) as refused:
        _calls.write_request(records, "key")
    assert [v.field for v in refused.value.violations] == [
        "records[1].v1_cost",
        "records[2].source",
    ]
    assert refused.value.message.startswith("records[1].v1_cost: must not be negative (and 1 more)")


def test_both_clients_have_a_method_for_every_rpc_of_the_contract():
    import re

    from costsim_analytics.client import AnalyticsClient, AsyncAnalyticsClient

    service = pb.DESCRIPTOR.services_by_name["AnalyticsService"]
    names = [re.sub(r"(?<!^)(?=[A-Z])", "_", m.name).lower() for m in service.methods]
    assert "write_provenance_batch" in names
    for cls in (AnalyticsClient, AsyncAnalyticsClient):
        missing = [n for n in names if not callable(getattr(cls, n, None))]
        assert not missing, f"{cls.__name__} lacks {missing}"
