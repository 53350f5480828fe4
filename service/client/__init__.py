"""The client library of costsim-analytics: every RPC, and a durable provenance writer.

Install it alone with ``pip install costsim-analytics`` (grpcio, protobuf and grpcio-status
only; the server is the ``server`` extra). See docs/client.md.

Example:
    >>> from costsim_analytics.client import AnalyticsClient, ProvenanceWriter
    >>> client = AnalyticsClient("costsim.internal:50051", token_file="token")  # doctest: +SKIP
    >>> with ProvenanceWriter(client, spool="/var/lib/sim/spool") as writer:  # doctest: +SKIP
    ...     writer.add(run_id="run-42", tenant_id="acme", variant_slug="v2", source="sandbox",
    ...                v1_cost=120.0, v2_cost=131.5, payload={"input": {}, "output": {}})

"""

from costsim.analytics.v1 import analytics_pb2 as messages
from costsim_analytics.client._calls import Explanation
from costsim_analytics.client.aio import AsyncAnalyticsClient, AsyncRecordStream
from costsim_analytics.client.aio_writer import AsyncProvenanceWriter
from costsim_analytics.client.batching import (
    BatchInfo,
    RejectedRecord,
    WriterHooks,
    WriterMetrics,
    WriterOptions,
)
from costsim_analytics.client.channel import Credentials
from costsim_analytics.client.errors import (
    AlreadyExistsError,
    ClientError,
    DeadlineExceededError,
    FailedPreconditionError,
    FieldViolation,
    FlushTimeoutError,
    InvalidArgumentError,
    InvalidRecordError,
    NotFoundError,
    PermissionDeniedError,
    ResourceExhaustedError,
    RetryableError,
    RpcError,
    ServerError,
    SpoolError,
    SpoolLockedError,
    UnauthenticatedError,
    UnavailableError,
    WriterClosedError,
    WriterFullError,
)
from costsim_analytics.client.records import PreparedRecord, content_hash, prepare_record
from costsim_analytics.client.retry import RetryBudget, RetryPolicy
from costsim_analytics.client.spool_format import Recovery, SpoolDamage
from costsim_analytics.client.sync import AnalyticsClient, RecordStream
from costsim_analytics.client.writer import ProvenanceWriter

__all__ = [
    "AlreadyExistsError",
    "AnalyticsClient",
    "AsyncAnalyticsClient",
    "AsyncProvenanceWriter",
    "AsyncRecordStream",
    "BatchInfo",
    "ClientError",
    "Credentials",
    "DeadlineExceededError",
    "Explanation",
    "FailedPreconditionError",
    "FieldViolation",
    "FlushTimeoutError",
    "InvalidArgumentError",
    "InvalidRecordError",
    "NotFoundError",
    "PermissionDeniedError",
    "PreparedRecord",
    "ProvenanceWriter",
    "RecordStream",
    "Recovery",
    "RejectedRecord",
    "ResourceExhaustedError",
    "RetryBudget",
    "RetryPolicy",
    "RetryableError",
    "RpcError",
    "ServerError",
    "SpoolDamage",
    "SpoolError",
    "SpoolLockedError",
    "UnauthenticatedError",
    "UnavailableError",
    "WriterClosedError",
    "WriterFullError",
    "WriterHooks",
    "WriterMetrics",
    "WriterOptions",
    "content_hash",
    "messages",
    "prepare_record",
]
