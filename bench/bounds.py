"""What one RunCanary costs the server: peak memory and artifact bytes, against an idle server.

What is measured: a fresh ``costsim-analytics serve`` subprocess on PostgreSQL per run size;
its resident memory (``VmRSS``) once it serves, then one ``RunCanary`` with ``--samples``
explicit samples (the built-in synthetic plans, cycled, each with its own id), then its peak
resident memory (``VmHWM``) and the bytes of every artifact the run wrote. The baseline is the
same server idle, measured in the same run: the result is the peak over the idle RSS, and the
artifact bytes over the request's bytes.

Honesty checks: the report must count every sample (valid + invalid), and the artifacts on
disk must be the ones the report names, with their recorded sizes.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import grpc
from _common import base_parser, bench_database, service_server

from costsim.analytics.v1 import analytics_pb2 as pb
from costsim.analytics.v1 import analytics_pb2_grpc as pb_grpc
from costsim_analytics.engines.canary.synthetic import synthetic_samples

MIB = 1024 * 1024


def status_kib(pid: int, key: str) -> int:
    """A ``/proc/<pid>/status`` figure in KiB (``VmRSS``, ``VmHWM``; Linux)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise KeyError(key)


def request(n: int, pad: int, steps: int) -> pb.RunCanaryRequest:
    """``n`` explicit samples: the synthetic plans, cycled, each with a ``pad``-character note.

    The note stands for a long prompt: one string that the models do not read. With ``steps``
    each plan is instead that many small steps (``kv_get``): the most objects per byte.
    """
    plans = synthetic_samples()
    message = pb.RunCanaryRequest(seed=1)
    for i in range(n):
        plan = plans[i % len(plans)][1]
        if steps:
            step = {"skill": "kv_get", "params": {"key": f"k{i}"}}
            plan = {**plan, "plan": [step] * steps}
        if pad:
            plan = {**plan, "note": "x" * pad}
        message.samples.add(id=f"s{i:06d}").plan_input.update(plan)
    return message


def measure(
    url: str, root: Path, n: int, pad: int, steps: int, env: dict[str, str]
) -> dict[str, Any]:
    """One fresh server, one RunCanary of ``n`` samples: memory and artifact figures."""
    artifacts = root / f"artifacts-{n}-{pad}-{steps}"
    message = request(n, pad, steps)
    with service_server(url, env={"COSTSIM_ARTIFACTS_DIR": str(artifacts), **env}) as server:
        time.sleep(1.0)  # let start-up settle (the first health probes)
        idle_kib = status_kib(server.pid, "VmRSS")
        start = time.perf_counter()
        with grpc.insecure_channel(
            server.address, options=[("grpc.max_send_message_length", 2**31 - 1)]
        ) as channel:
            report = pb_grpc.AnalyticsServiceStub(channel).RunCanary(message, timeout=900).report
        seconds = time.perf_counter() - start
        peak_kib = status_kib(server.pid, "VmHWM")
    assert report.total_samples + report.invalid_samples == n, report
    files = {}
    for ref in report.artifacts:
        path = artifacts / ref.path
        assert path.stat().st_size == ref.size_bytes, ref
        files[path.name] = ref.size_bytes
    total = sum(files.values())
    return {
        "samples": n,
        "pad": pad,
        "steps": steps,
        "request_mib": round(message.ByteSize() / MIB, 1),
        "idle_rss_mib": round(idle_kib / 1024, 1),
        "peak_rss_mib": round(peak_kib / 1024, 1),
        "growth_mib": round((peak_kib - idle_kib) / 1024, 1),
        "artifact_mib": round(total / MIB, 2),
        "artifact_files_mib": {k: round(v / MIB, 2) for k, v in files.items()},
        "artifacts_per_request_byte": round(total / message.ByteSize(), 2),
        "major_drift_samples": report.major_drift_samples,
        "seconds": round(seconds, 1),
    }


def main() -> None:
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument(
        "--samples", type=int, nargs="+", default=[10_000], help="run sizes (one server each)"
    )
    parser.add_argument(
        "--pad", type=int, default=0, help="characters added to every plan (a long prompt)"
    )
    parser.add_argument(
        "--steps", type=int, default=0, help="make every plan this many small steps instead"
    )
    parser.add_argument(
        "--env", action="append", default=[], help="NAME=VALUE for the server (repeatable)"
    )
    args = parser.parse_args()
    env = dict(item.split("=", 1) for item in args.env)
    env.setdefault("COSTSIM_MAX_MESSAGE_MB", "2000")  # measure the work, not the message cap
    results = []
    with (
        tempfile.TemporaryDirectory() as scratch,
        bench_database(args.database_url, "costsim_bench_bounds") as url,
    ):
        os.environ.setdefault("COSTSIM_LOG_LEVEL", "ERROR")
        for n in args.samples:
            result = measure(url, Path(scratch), n, args.pad, args.steps, env)
            results.append(result)
            print(
                f"{n:>7} samples ({result['request_mib']} MiB request): server RSS "
                f"{result['idle_rss_mib']} -> {result['peak_rss_mib']} MiB peak "
                f"(+{result['growth_mib']}), artifacts {result['artifact_mib']} MiB "
                f"{result['artifact_files_mib']} = {result['artifacts_per_request_byte']}x "
                f"the request, {result['seconds']} s"
            )
    print(json.dumps({"bench": "bounds", "runs": results}))


if __name__ == "__main__":
    main()
