"""Explaining a 10,000-sample canary run end to end, against reading its comparisons once.

What is measured: a fresh ``costsim-analytics serve`` subprocess on its own PostgreSQL
database; one ``RunCanary`` of ``--samples`` explicit samples (the built-in synthetic plans,
cycled, each with its own id); then ``ExplainCanaryRun`` of that run, end to end (the call
until its last message is in this process: the report row, both artifacts read and checked
against their checksums, the attribution, its bootstrap, the histograms, the drifting samples,
their messages). The floor, measured in the same run on the same file: reading the run's
``comparisons.jsonl`` once and parsing every line, which any explanation of it must do. Each
is timed ``--repeat`` times (median). Target: the explanation within 3x the floor.

It also reports what keeping per-step estimates costs: the size of ``comparisons.jsonl``
against the same rows written without ``steps`` and ``cumulative_risk`` (the format before).

Honesty checks: the explanation must count every valid sample of the report, its shares
must add up to 1, and its KL histogram must be the one ``report.json`` names.
"""

from __future__ import annotations

import gc
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import grpc
from _common import base_parser, bench_database, service_server

from costsim.analytics.v1 import analytics_pb2 as pb
from costsim.analytics.v1 import analytics_pb2_grpc as pb_grpc
from costsim_analytics.engines.canary.synthetic import synthetic_samples

MIB = 1024 * 1024
_LINE = json.JSONEncoder(separators=(",", ":")).encode


def canary_request(n: int) -> pb.RunCanaryRequest:
    """``n`` explicit samples: the synthetic plans, cycled."""
    plans = synthetic_samples()
    message = pb.RunCanaryRequest(seed=1)
    for i in range(n):
        message.samples.add(id=f"s{i:06d}").plan_input.update(plans[i % len(plans)][1])
    return message


def read_once(path: Path) -> list[dict[str, object]]:
    """The floor: the file read and every line parsed."""
    return [json.loads(line) for line in path.read_bytes().splitlines() if line]


def without_steps(rows: list[dict[str, object]]) -> int:
    """Bytes of the same rows in the format before per-step estimates."""
    size = 0
    for row in rows:
        old = dict(row)
        for side in ("baseline", "candidate"):
            estimates = dict(old[side])  # type: ignore[call-overload]
            estimates.pop("steps", None)
            estimates.pop("cumulative_risk", None)
            estimates.pop("step_skills", None)
            old[side] = estimates
        size += len(_LINE(old)) + 1
    return size


def main() -> None:
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=10_000, help="samples of the run")
    parser.add_argument("--repeat", type=int, default=5, help="timings of each (median)")
    parser.add_argument("--top", type=int, default=10, help="drifting samples to ask for")
    args = parser.parse_args()
    os.environ.setdefault("COSTSIM_LOG_LEVEL", "ERROR")
    with (
        tempfile.TemporaryDirectory() as scratch,
        bench_database(args.database_url, "costsim_bench_explain") as url,
    ):
        artifacts = Path(scratch) / "artifacts"
        env = {"COSTSIM_ARTIFACTS_DIR": str(artifacts), "COSTSIM_MAX_MESSAGE_MB": "2000"}
        with service_server(url, env=env) as server:
            options = [("grpc.max_send_message_length", 2**31 - 1),
                       ("grpc.max_receive_message_length", 2**31 - 1)]  # fmt: skip
            with grpc.insecure_channel(server.address, options=options) as channel:
                stub = pb_grpc.AnalyticsServiceStub(channel)
                started = time.perf_counter()
                report = stub.RunCanary(canary_request(args.samples), timeout=900).report
                run_s = time.perf_counter() - started
                comparisons = artifacts / report.run_id / "comparisons.jsonl"
                request = pb.ExplainCanaryRunRequest(run_id=report.run_id, top=args.top)
                floors, explains = [], []
                messages: list[pb.ExplainCanaryRunResponse] = []
                rows: list[dict[str, object]] = []
                for _ in range(args.repeat):  # interleaved: both see the same machine load
                    # The floor starts as clean as the server's call: last round's rows freed.
                    rows = []
                    gc.collect()
                    t = time.perf_counter()
                    rows = read_once(comparisons)
                    floors.append(time.perf_counter() - t)
                    t = time.perf_counter()
                    messages = list(stub.ExplainCanaryRun(request, timeout=300))
                    explains.append(time.perf_counter() - t)
        summary = messages[0].summary
        body = json.loads((artifacts / report.run_id / "report.json").read_text())
        assert summary.samples == report.total_samples == len(rows), summary.samples
        assert abs(sum(g.share for g in summary.groups) - 1.0) < 1e-9
        kl = next(h for h in summary.histograms if h.name == "kl_divergence")
        assert list(kl.baseline_counts) == body["kl_binning"]["baseline_counts"]
        size, before = comparisons.stat().st_size, without_steps(rows)
    floor, explained = statistics.median(floors), statistics.median(explains)
    ratio = explained / floor
    top = max(summary.groups, key=lambda g: g.share)
    print(
        f"{args.samples} samples, {summary.steps} steps: RunCanary {run_s:.1f} s; "
        f"comparisons.jsonl {size / MIB:.2f} MiB ({before / MIB:.2f} MiB without per-step "
        f"estimates, +{(size / before - 1) * 100:.1f} %)"
    )
    print(
        f"floor (read + parse comparisons.jsonl): {floor * 1000:.0f} ms; ExplainCanaryRun end "
        f"to end: {explained * 1000:.0f} ms ({len(messages)} messages); ratio {ratio:.2f}x "
        f"(target <= 3x); largest share {top.group} {top.share:.1%}"
    )
    print(
        json.dumps(
            {
                "bench": "explain",
                "samples": args.samples,
                "steps": summary.steps,
                "floor_ms": round(floor * 1000, 1),
                "explain_ms": round(explained * 1000, 1),
                "floor_runs_ms": [round(x * 1000, 1) for x in floors],
                "explain_runs_ms": [round(x * 1000, 1) for x in explains],
                "ratio": round(ratio, 2),
                "comparisons_mib": round(size / MIB, 2),
                "comparisons_without_steps_mib": round(before / MIB, 2),
                "growth_pct": round((size / before - 1) * 100, 1),
                "target_ratio": 3.0,
                "ok": ratio <= 3.0,
            }
        )
    )


if __name__ == "__main__":
    main()
