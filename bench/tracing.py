"""What tracing costs: a unary RPC and a stream with tracing off against tracing on.

What is measured: two ``costsim-analytics serve`` subprocesses on the same PostgreSQL
database, one with no ``OTEL_*`` variables (tracing off: no interceptor, no listeners) and one
exporting every span over OTLP/gRPC (``OTEL_TRACES_EXPORTER=otlp``, batch processor) to a stub
collector in this process that accepts and drops them, so the traced server pays for the
whole of it: spans, statement spans, serialisation and export. For each: calls/s and server
CPU per call of ``ListGoldenDatasets`` (one in flight), and messages/s and server CPU per
message of a ``QueryProvenance`` stream of ``--records`` records. The variants are
interleaved ``--repeats`` times and the medians compared: the JSON last line has the on/off
ratios (``*_on_over_off``: throughput, >1 is faster; ``*_cpu_on_over_off``: CPU, >1 costs
more). Tracing off is the service as it is without this feature, by construction: nothing of
tracing is installed (tests/integration/test_tracing.py checks that structurally).
"""

from __future__ import annotations

import json
import statistics
import time
from concurrent import futures
from typing import Any

import grpc
from _common import Server, base_parser, bench_database, service_server
from google.protobuf import json_format
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2 as otlp
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2_grpc as otlp_grpc

from costsim.analytics.v1 import analytics_pb2 as pb
from costsim.analytics.v1 import analytics_pb2_grpc as pb_grpc


class Collector(otlp_grpc.TraceServiceServicer):  # type: ignore[misc]
    """Accepts every export and counts its spans."""

    def __init__(self) -> None:
        self.spans = 0

    def Export(self, request: Any, context: Any) -> Any:
        """Take the spans, keep nothing."""
        self.spans += sum(len(s.spans) for r in request.resource_spans for s in r.scope_spans)
        return otlp.ExportTraceServiceResponse()


def seed(server: Server, records: int) -> None:
    with server.channel() as channel:
        stub = pb_grpc.AnalyticsServiceStub(channel)
        for start in range(0, records, 1000):
            request = pb.WriteProvenanceBatchRequest()
            for i in range(start, min(records, start + 1000)):
                record = {
                    "run_id": f"run-{i}",
                    "tenant_id": f"tenant-{i % 3}",
                    "variant_slug": "v2",
                    "source": "sandbox",
                    "v1_cost": float(10 + i % 5),
                    "v2_cost": float(11 + i % 7),
                    "payload_json": json.dumps(
                        {
                            "input": {"plan": []},
                            "output": {"cost_cents": i % 9},
                            "status": "success",
                        }
                    ),
                }
                json_format.ParseDict(record, request.records.add())
            stub.WriteProvenanceBatch(request, timeout=60)


def unary(server: Server, calls: int) -> tuple[float, float]:
    """Calls/s and server CPU µs per call."""
    with server.channel() as channel:
        stub = pb_grpc.AnalyticsServiceStub(channel)
        request = pb.ListGoldenDatasetsRequest()
        for _ in range(20):
            stub.ListGoldenDatasets(request, timeout=10)
        cpu, started = server.cpu_s(), time.perf_counter()
        for _ in range(calls):
            stub.ListGoldenDatasets(request, timeout=10)
        elapsed = time.perf_counter() - started
        return calls / elapsed, (server.cpu_s() - cpu) / calls * 1e6


def stream(server: Server, records: int) -> tuple[float, float]:
    """Messages/s and server CPU µs per message of one stream of every record."""
    with server.channel() as channel:
        call = channel.unary_stream(
            "/costsim.analytics.v1.AnalyticsService/QueryProvenance",
            request_serializer=pb.QueryProvenanceRequest.SerializeToString,
            response_deserializer=None,  # raw bytes: the client does as little as it can
        )
        request = pb.QueryProvenanceRequest(page_size=records)
        cpu, started = server.cpu_s(), time.perf_counter()
        received = sum(1 for _ in call(request, timeout=120))
        elapsed = time.perf_counter() - started
        assert received == records, received
        return received / elapsed, (server.cpu_s() - cpu) / received * 1e6


def main() -> None:
    parser = base_parser(__doc__ or "")
    parser.add_argument("--calls", type=int, default=1000, help="timed unary calls per round")
    parser.add_argument("--records", type=int, default=5000, help="records of each stream")
    parser.add_argument("--repeats", type=int, default=5, help="interleaved rounds")
    args = parser.parse_args()

    collector = Collector()
    receiver = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    otlp_grpc.add_TraceServiceServicer_to_server(collector, receiver)
    port = receiver.add_insecure_port("127.0.0.1:0")
    receiver.start()
    traced = {
        "OTEL_TRACES_EXPORTER": "otlp",
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": f"http://127.0.0.1:{port}",
        "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "grpc",
    }
    untraced = {"OTEL_TRACES_EXPORTER": "none"}
    results: dict[str, dict[str, list[float]]] = {"off": {}, "on": {}}
    try:
        with (
            bench_database(args.database_url, "costsim_bench_tracing") as url,
            service_server(url, env=untraced) as off,
            service_server(url, env=traced) as on,
        ):
            seed(off, args.records)
            for _ in range(args.repeats):
                for name, server in (("off", off), ("on", on)):
                    rate, cpu = unary(server, args.calls)
                    results[name].setdefault("unary_per_s", []).append(rate)
                    results[name].setdefault("unary_cpu_us", []).append(cpu)
                    rate, cpu = stream(server, args.records)
                    results[name].setdefault("stream_msgs_per_s", []).append(rate)
                    results[name].setdefault("stream_cpu_us_per_msg", []).append(cpu)
            time.sleep(6)  # the batch processor exports every 5 s: let the last batch arrive
    finally:
        receiver.stop(0)

    median = {v: {k: statistics.median(xs) for k, xs in r.items()} for v, r in results.items()}
    print("numbers from a shared machine: compare the ratios, not the absolute figures")
    for key in median["off"]:
        off_value, on_value = median["off"][key], median["on"][key]
        ratio = on_value / off_value
        print(f"{key:>24}: off {off_value:10.1f}   on {on_value:10.1f}   on/off {ratio:.3f}")
    summary = {
        "unary_on_over_off": round(median["on"]["unary_per_s"] / median["off"]["unary_per_s"], 3),
        "stream_on_over_off": round(
            median["on"]["stream_msgs_per_s"] / median["off"]["stream_msgs_per_s"], 3
        ),
        "unary_cpu_on_over_off": round(
            median["on"]["unary_cpu_us"] / median["off"]["unary_cpu_us"], 3
        ),
        "stream_cpu_on_over_off": round(
            median["on"]["stream_cpu_us_per_msg"] / median["off"]["stream_cpu_us_per_msg"], 3
        ),
        "off": {k: round(v, 1) for k, v in median["off"].items()},
        "on": {k: round(v, 1) for k, v in median["on"].items()},
        "spans_exported": collector.spans,
        "repeats": args.repeats,
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
