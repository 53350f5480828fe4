"""What the sync and asyncio clients share: method paths, request building, paging.

Requests are built from plain Python values (datetimes, status names, dicts in the proto's
JSON form) here once, so that both clients send exactly the same messages.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, NamedTuple, TypeVar

import grpc
from google.protobuf import json_format, message, timestamp_pb2

from costsim.analytics.v1 import analytics_pb2 as pb
from costsim_analytics.client.errors import FieldViolation, InvalidRecordError
from costsim_analytics.client.records import PreparedRecord, encode_batch, prepare_record
from costsim_analytics.client.retry import SERVICE

M = TypeVar("M", bound=message.Message)

# Messages a stream page asks for when the caller names no size: the server's default is 100,
# and bigger pages cost fewer calls (the server lowers a size above COSTSIM_MAX_PAGE_SIZE).
DEFAULT_PAGE_SIZE = 1000
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

RecordLike = PreparedRecord | pb.ProvenanceRecord | Mapping[str, Any]


def path(method: str) -> str:
    """The full gRPC path of a method of the service."""
    return f"/{SERVICE}/{method}"


def new_request_id(prefix: str = "client") -> str:
    """A fresh idempotency key: every write the client sends carries one."""
    return f"{prefix}-{uuid.uuid4().hex}"


def timestamp(value: datetime) -> timestamp_pb2.Timestamp:
    """A datetime as a Timestamp (a naive one is taken as UTC)."""
    aware = value if value.tzinfo is not None else value.replace(tzinfo=UTC)
    delta = aware - _EPOCH
    return timestamp_pb2.Timestamp(
        seconds=delta.days * 86_400 + delta.seconds, nanos=delta.microseconds * 1000
    )


def window(request: Any, start: datetime | None, end: datetime | None) -> None:
    """Set ``start_time`` (inclusive) and ``end_time`` (exclusive) when given."""
    if start is not None:
        request.start_time.CopyFrom(timestamp(start))
    if end is not None:
        request.end_time.CopyFrom(timestamp(end))


def canary_status(status: str | int) -> pb.CanaryStatus.ValueType:
    """A status by name (``fail``, ``CANARY_STATUS_FAIL``) or number; ``""`` matches all."""
    if isinstance(status, int):
        return pb.CanaryStatus.ValueType(status)
    if not status:
        return pb.CANARY_STATUS_UNSPECIFIED
    name = status.upper()
    return pb.CanaryStatus.Value(
        name if name.startswith("CANARY_STATUS_") else f"CANARY_STATUS_{name}"
    )


def message_of(cls: type[M], value: M | Mapping[str, Any] | None, fields: Mapping[str, Any]) -> M:
    """A request message: ``value`` itself, or parsed from its JSON form, updated by ``fields``."""
    if isinstance(value, message.Message):
        request = cls()
        request.CopyFrom(value)
    else:
        request = json_format.ParseDict(dict(value or {}), cls())
    if fields:
        json_format.ParseDict(dict(fields), request)
    return request


def encode_record(record: RecordLike) -> bytes:
    """One record's bytes: prepared already, a message as it is, a mapping checked and hashed."""
    if isinstance(record, PreparedRecord):
        return record.body
    if isinstance(record, pb.ProvenanceRecord):
        return record.SerializeToString()
    return prepare_record(**record).body


def write_request(records: Iterable[RecordLike], request_id: str) -> bytes:
    """A serialised WriteProvenanceBatchRequest.

    Raises:
        InvalidRecordError: naming every refused field of every record (``records[3].v1_cost``),
            as the server would.
    """
    bodies: list[bytes] = []
    violations: list[FieldViolation] = []
    for index, record in enumerate(records):
        try:
            bodies.append(encode_record(record))
        except InvalidRecordError as exc:
            violations += [
                FieldViolation(f"records[{index}].{v.field}", v.description) for v in exc.violations
            ]
    if violations:
        first = violations[0]
        more = f" (and {len(violations) - 1} more)" if len(violations) > 1 else ""
        raise InvalidRecordError(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"{first.field}: {first.description}{more}",
            reason="INVALID_ARGUMENT",
            violations=violations,
        )
    return encode_batch(bodies, request_id)


def golden_samples(samples: Sequence[pb.GoldenSample | Mapping[str, Any]]) -> list[pb.GoldenSample]:
    """Golden samples from messages or their JSON form."""
    return [message_of(pb.GoldenSample, s, {}) for s in samples]


class Pager:
    """Which page a resumable stream asks for next, and when it is done.

    A page ends with an OK status after at most ``page_size`` messages. A full page may have
    more after it; a short one is the last, once the server is known to honour the size (it
    lowers sizes above its own maximum, so a first short page is followed by one more call to
    tell "the end" from "the server's maximum"). ``limit`` bounds the messages in all.
    """

    def __init__(self, page_size: int, limit: int | None, page_token: str) -> None:
        self.page_size = page_size if page_size > 0 else DEFAULT_PAGE_SIZE
        self.remaining = limit
        self.page_token = page_token
        self._honoured = False
        self._server_cap: int | None = None
        self._size = 0

    def next_size(self) -> int | None:
        """The size of the next page to ask for, or None when the stream is done."""
        if self.remaining is not None and self.remaining <= 0:
            return None
        size = self.page_size if self.remaining is None else min(self.page_size, self.remaining)
        self._size = size
        return size

    def saw(self, page_token: str) -> None:
        """One message received (its token is where a resumed stream continues)."""
        self.page_token = page_token
        if self.remaining is not None:
            self.remaining -= 1

    def page_ended(self, received: int) -> bool:
        """A page ended with OK after ``received`` messages; whether to ask for another."""
        if received == 0:
            return False
        if received >= self._size:
            self._honoured = True
            return True
        if self._honoured or (self._server_cap is not None and received < self._server_cap):
            return False
        self._server_cap = received
        return True


class Explanation(NamedTuple):
    """ExplainCanaryRun's answer: the summary, then the most drifting samples."""

    summary: pb.CanaryExplanation
    samples: list[pb.DriftingSample]


def explain_request(run_id: str, group_by: str, top: int) -> pb.ExplainCanaryRunRequest:
    """``group_by``: ``skill``, ``position``, ``iterations`` or ``prompt_band`` (empty: skill)."""
    request = pb.ExplainCanaryRunRequest(run_id=run_id, top=top)
    if group_by:
        request.group_by = pb.ExplainGroupBy.Value(f"EXPLAIN_GROUP_BY_{group_by.upper()}")
    return request


def explanation(messages: Sequence[pb.ExplainCanaryRunResponse]) -> Explanation:
    """The messages of one ExplainCanaryRun stream, put together."""
    summary = pb.CanaryExplanation()
    samples = []
    for message_ in messages:
        if message_.HasField("summary"):
            summary = message_.summary
        elif message_.HasField("sample"):
            samples.append(message_.sample)
    return Explanation(summary, samples)
