"""A small synchronous client for the CLI and scripts; speaks JSON-shaped dicts.

Example:
    >>> with AnalyticsClient("127.0.0.1:50051") as client:  # doctest: +SKIP
    ...     client.write_provenance([{"run_id": "r1", "variant_slug": "v2", ...}])

"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self

import grpc
from google.protobuf import json_format

from costsim.analytics.v1 import analytics_pb2 as pb
from costsim.analytics.v1 import analytics_pb2_grpc as pb_grpc
from costsim_analytics.api.convert import to_timestamp
from costsim_analytics.api.convert_canary import STATUS_TO_PROTO
from costsim_analytics.client.tracing import trace_metadata

JsonDict = dict[str, Any]


def _dict(message: Any, *, every_field: bool = False) -> JsonDict:
    return json_format.MessageToDict(
        message,
        preserving_proto_field_name=True,
        always_print_fields_with_no_presence=every_field,
    )


def _window(request: Any, start: datetime | None, end: datetime | None) -> None:
    if start is not None:
        request.start_time.CopyFrom(to_timestamp(start))
    if end is not None:
        request.end_time.CopyFrom(to_timestamp(end))


@dataclass(frozen=True)
class ClientSecurity:
    """How a client proves who it is: TLS (a CA to trust, a client certificate), a token.

    ``token_file`` is re-read when it changes, so a rotated token is picked up by a long-lived
    client; ``token`` wins when both are given.
    """

    ca: Path | None = None
    cert: Path | None = None
    key: Path | None = None
    token: str = ""
    token_file: Path | None = None

    def credentials(self) -> grpc.ChannelCredentials | None:
        """TLS credentials, or None for plaintext (no CA and no client certificate)."""
        if self.ca is None and self.cert is None:
            return None
        return grpc.ssl_channel_credentials(
            root_certificates=self.ca.read_bytes() if self.ca else None,
            private_key=self.key.read_bytes() if self.key else None,
            certificate_chain=self.cert.read_bytes() if self.cert else None,
        )


if TYPE_CHECKING:  # generic in grpc-stubs only
    _UnaryUnary = grpc.UnaryUnaryClientInterceptor[Any, Any]
    _UnaryStream = grpc.UnaryStreamClientInterceptor[Any, Any]
else:
    _UnaryUnary = grpc.UnaryUnaryClientInterceptor
    _UnaryStream = grpc.UnaryStreamClientInterceptor


class _Bearer(_UnaryUnary, _UnaryStream):
    """Adds ``authorization: Bearer …`` to every call (plaintext loopback included)."""

    def __init__(self, security: ClientSecurity) -> None:
        self._security = security
        self._stamp: tuple[float, int] | None = None
        self._from_file = ""

    def _token(self) -> str:
        if self._security.token or self._security.token_file is None:
            return self._security.token
        stat = self._security.token_file.stat()
        if (stat.st_mtime, stat.st_size) != self._stamp:
            self._from_file = self._security.token_file.read_text().strip()
            self._stamp = (stat.st_mtime, stat.st_size)
        return self._from_file

    def _with_token(self, details: Any) -> Any:
        metadata = [*(details.metadata or ()), ("authorization", f"Bearer {self._token()}")]
        return details._replace(metadata=metadata)

    def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        """The call with the token."""
        return continuation(self._with_token(details), request)

    def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        """The stream with the token."""
        return continuation(self._with_token(details), request)


class _TraceContext(_UnaryUnary, _UnaryStream):
    """Adds the current span's ``traceparent`` to every call (``client/tracing.py``)."""

    @staticmethod
    def _traced(details: Any) -> Any:
        carried = trace_metadata()
        if not carried:
            return details
        return details._replace(metadata=[*(details.metadata or ()), *carried])

    def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        """The call with the trace context."""
        return continuation(self._traced(details), request)

    def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        """The stream with the trace context."""
        return continuation(self._traced(details), request)


class AnalyticsClient:
    """Blocking client over one channel; close it (or use ``with``)."""

    def __init__(
        self, target: str, *, timeout_s: float = 30.0, security: ClientSecurity | None = None
    ) -> None:
        security = security or ClientSecurity()
        # No client-side size limit (gRPC's default is 4 MiB): a golden dataset with its samples
        # can be larger; the server enforces its limits (COSTSIM_MAX_MESSAGE_MB and per RPC).
        options = [("grpc.max_receive_message_length", -1), ("grpc.max_send_message_length", -1)]
        credentials = security.credentials()
        if credentials is None:
            self._channel = grpc.insecure_channel(target, options=options)
        else:
            self._channel = grpc.secure_channel(target, credentials, options=options)
        channel = self._channel
        if security.token or security.token_file:
            channel = grpc.intercept_channel(channel, _Bearer(security))
        channel = grpc.intercept_channel(channel, _TraceContext())
        self._stub = pb_grpc.AnalyticsServiceStub(channel)
        self._timeout_s = timeout_s

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        """Close the channel."""
        self._channel.close()

    def write_provenance(self, records: Sequence[JsonDict], request_id: str = "") -> JsonDict:
        """Write one batch; records use the proto's JSON field names."""
        request = pb.WriteProvenanceBatchRequest(request_id=request_id)
        for record in records:
            json_format.ParseDict(record, request.records.add())
        return _dict(self._stub.WriteProvenanceBatch(request, timeout=self._timeout_s))

    def query_provenance(
        self,
        *,
        start: datetime | None = None,
        end: datetime | None = None,
        page_size: int = 0,
        page_token: str = "",
        tenant_id: str = "",
        variant_slug: str = "",
        source: str = "",
        input_hash: str = "",
        run_id: str = "",
    ) -> Iterator[JsonDict]:
        """Stream records (with their page tokens), newest first."""
        request = pb.QueryProvenanceRequest(
            tenant_id=tenant_id,
            variant_slug=variant_slug,
            source=source,
            input_hash=input_hash,
            run_id=run_id,
            page_size=page_size,
            page_token=page_token,
        )
        _window(request, start, end)
        for message in self._stub.QueryProvenance(request, timeout=self._timeout_s):
            yield _dict(message)

    def drift_stats(
        self,
        *,
        tenant_id: str = "",
        variant_slug: str = "",
        start: datetime | None = None,
        end: datetime | None = None,
    ) -> JsonDict:
        """Drift statistics, every field present."""
        request = pb.GetDriftStatsRequest(tenant_id=tenant_id, variant_slug=variant_slug)
        _window(request, start, end)
        return _dict(self._stub.GetDriftStats(request, timeout=self._timeout_s), every_field=True)

    def query_reports(
        self,
        *,
        status: str = "",
        passed: bool | None = None,
        start: datetime | None = None,
        end: datetime | None = None,
        page_size: int = 0,
        page_token: str = "",
    ) -> Iterator[JsonDict]:
        """Stream canary reports (with their page tokens), newest first."""
        request = pb.QueryCanaryReportsRequest(
            status=STATUS_TO_PROTO[status] if status else pb.CANARY_STATUS_UNSPECIFIED,
            passed=passed,
            page_size=page_size,
            page_token=page_token,
        )
        _window(request, start, end)
        for message in self._stub.QueryCanaryReports(request, timeout=self._timeout_s):
            yield _dict(message)

    def run_canary(self, request: JsonDict, timeout_s: float = 600.0) -> JsonDict:
        """Run a canary; ``request`` uses RunCanaryRequest's JSON field names."""
        message = json_format.ParseDict(request, pb.RunCanaryRequest())
        return _dict(self._stub.RunCanary(message, timeout=timeout_s))

    def get_report(self, run_id: str) -> JsonDict:
        """One canary report."""
        request = pb.GetCanaryReportRequest(run_id=run_id)
        return _dict(self._stub.GetCanaryReport(request, timeout=self._timeout_s).report)

    def explain_run(
        self, run_id: str, *, group_by: str = "", top: int = 0, timeout_s: float = 120.0
    ) -> Iterator[JsonDict]:
        """ExplainCanaryRun's messages: ``{"summary": ...}``, then ``{"sample": ...}`` each.

        ``group_by``: ``skill``, ``position``, ``iterations`` or ``prompt_band`` (empty: skill).
        """
        request = pb.ExplainCanaryRunRequest(run_id=run_id, top=top)
        if group_by:
            request.group_by = pb.ExplainGroupBy.Value(f"EXPLAIN_GROUP_BY_{group_by.upper()}")
        for message in self._stub.ExplainCanaryRun(request, timeout=timeout_s):
            yield _dict(message, every_field=True)

    # --- golden datasets ---------------------------------------------------------------------

    def create_golden(
        self,
        name: str,
        samples: Sequence[JsonDict],
        *,
        description: str = "",
        request_id: str = "",
        timeout_s: float = 300.0,
    ) -> JsonDict:
        """Store a new golden version; samples use GoldenSample's JSON field names."""
        request = pb.CreateGoldenDatasetRequest(
            name=name, description=description, request_id=request_id
        )
        for sample in samples:
            json_format.ParseDict(sample, request.samples.add())
        return _dict(self._stub.CreateGoldenDataset(request, timeout=timeout_s))

    def promote_golden(
        self, run_id: str, name: str, *, description: str = "", request_id: str = ""
    ) -> JsonDict:
        """Store a canary run's samples as a new golden version."""
        request = pb.PromoteCanaryRunRequest(
            run_id=run_id, name=name, description=description, request_id=request_id
        )
        return _dict(self._stub.PromoteCanaryRun(request, timeout=self._timeout_s))

    def get_golden(self, name: str, version: int | None = None) -> JsonDict:
        """One golden version with its samples (the active one without ``version``)."""
        request = pb.GetGoldenDatasetRequest(name=name, version=version)
        dataset = self._stub.GetGoldenDataset(request, timeout=self._timeout_s).dataset
        return _dict(dataset, every_field=True)

    def list_golden(self, name: str = "") -> list[JsonDict]:
        """Every golden version (of ``name``), without samples."""
        request = pb.ListGoldenDatasetsRequest(name=name)
        response = self._stub.ListGoldenDatasets(request, timeout=self._timeout_s)
        return [_dict(d, every_field=True) for d in response.datasets]

    def activate_golden(self, name: str, version: int) -> JsonDict:
        """Make one version the active version of its name."""
        request = pb.ActivateGoldenDatasetRequest(name=name, version=version)
        return _dict(self._stub.ActivateGoldenDataset(request, timeout=self._timeout_s).dataset)

    def compare_golden(self, request: JsonDict, timeout_s: float = 300.0) -> JsonDict:
        """A golden comparison; ``request`` uses CompareGoldenRequest's JSON field names."""
        message = json_format.ParseDict(request, pb.CompareGoldenRequest())
        return _dict(
            self._stub.CompareGolden(message, timeout=timeout_s).comparison, every_field=True
        )
