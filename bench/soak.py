"""A bounded mixed load with faults on a schedule: nothing lost, nothing doubled, no INTERNAL.

What runs: a real ``costsim-analytics serve`` subprocess on a fresh PostgreSQL database (dropped
at the end) that it reaches through a TCP proxy (``costsim_analytics.testing.TcpProxy``), so
the database can be cut away from it. Against it, from this process (``bench/_soak_load.py``):

- writers: WriteProvenanceBatch with a request id per batch; each batch is retried with the same
  id on UNAVAILABLE, DEADLINE_EXCEEDED and RESOURCE_EXHAUSTED (after RetryInfo's delay, else a
  bounded jittered backoff) until it is acknowledged;
- a stream reader (QueryProvenance over the last minute, resumed by its last page token when
  cut), GetDriftStats, a probe (ListGoldenDatasets, the cheapest call), a RunCanary with a
  request id every ``--canary-every`` seconds, and a bad-input sender (NUL characters, a payload
  nested 100 deep, a 10,000-character model name, a forged page token, the year 10000, ...: each
  must be INVALID_ARGUMENT and write nothing);
- phases, shares of ``--seconds``: quiet (the baseline), slow reader (one client holds
  ``--slow-streams`` streams open and reads nothing), flood (one client fires
  ``--flood-streams`` streams and ``--flood-unary`` GetDriftStats at once, wave after wave),
  database cut (the proxy down for ``--cut-seconds``), SIGKILL (the server killed and started
  again on the same port and database), recovery.

What it reports: rows acknowledged, rows in the database (counted there, by run id: lost and
duplicated), errors by RPC and code (and by client), p50/p99 per RPC and phase for the steady
clients (the slow reader's and the flood's own calls apart), and its JSON last line. Targets:
0 lost, 0 duplicated, 0 INTERNAL/UNKNOWN, and the steady clients' unary p99 (every unary call
but RunCanary) during the slow-reader and flood phases at most 2x the quiet phase's. A
RESOURCE_EXHAUSTED answer is counted, not a failure: the flood should get them, the writers
retry them. ``ok`` also needs every acknowledged batch replayed with its ids on a re-send, no
batch given up, and no row from the bad input.

    python bench/soak.py                # 5 minutes
    python bench/soak.py --seconds 20   # a quick smoke
"""

from __future__ import annotations

import json
import multiprocessing
import os
import queue
import random
import subprocess
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import psycopg
from _common import CLI, READY, base_parser, bench_database, libpq_url, percentile
from _soak_load import (
    BAD_TENANT,
    SEED_TENANT,
    TENANT,
    BadInput,
    Canary,
    Client,
    DriftCaller,
    Probe,
    Recorder,
    Sample,
    Schedule,
    SlowReader,
    StreamReader,
    Writer,
    channel,
    chunks,
    flood,
    ready,
    record,
)
from sqlalchemy.engine import make_url

from costsim.analytics.v1 import analytics_pb2 as pb
from costsim.analytics.v1 import analytics_pb2_grpc as pb_grpc
from costsim_analytics.testing.retry import call_with_retries
from costsim_analytics.testing.tcp_proxy import TcpProxy

PHASES = (
    ("quiet", 0.2),
    ("slow_reader", 0.15),
    ("flood", 0.15),
    ("db_cut", 0.15),
    ("sigkill", 0.15),
    ("recovery", 0.2),
)
STEADY_UNARY = ("WriteProvenanceBatch", "GetDriftStats", "ListGoldenDatasets")
# Not steady load: their own latency is not the target (the bad input's refusals are instant).
APART = ("slow_reader", "flood", "bad_input")
MAX_RATIO = 2.0


class RestartableServer:
    """``costsim-analytics serve`` that can be killed and started again on the same port."""

    def __init__(self, url: str, env: dict[str, str], log_path: Path) -> None:
        self.argv = [CLI, "serve", "--database-url", url]
        self.env = env
        self.log_path = log_path
        self.proc: subprocess.Popen[str] | None = None

    def start(self, listen: str = "127.0.0.1:0", timeout_s: float = 30.0) -> str:
        """Start it; return the address it listens on."""
        with self.log_path.open("a") as log:
            self.proc = subprocess.Popen(
                [*self.argv, "--listen", listen],
                stdout=subprocess.PIPE,
                stderr=log,
                text=True,
                env=self.env,
            )
        proc, lines = self.proc, queue.Queue[str]()
        assert proc.stdout is not None
        out = proc.stdout
        threading.Thread(target=lambda: [lines.put(x) for x in out], daemon=True).start()
        deadline = time.monotonic() + timeout_s
        while (remaining := deadline - time.monotonic()) > 0 and proc.poll() is None:
            try:
                line = lines.get(timeout=min(remaining, 0.5))
            except queue.Empty:
                continue
            if line.startswith(READY):
                return line[len(READY) :].strip()
        raise RuntimeError(f"server did not start (exit {proc.poll()}): see {self.log_path}")

    def kill(self) -> None:
        """SIGKILL, and wait for it to be gone."""
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait()

    def stop(self) -> None:
        """SIGTERM (SIGKILL after 20 s)."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def wait_serving(address: str, timeout_s: float = 30.0) -> float:
    """Seconds until a unary call succeeds again."""
    started = time.monotonic()
    with channel(address) as ch:
        stub = pb_grpc.AnalyticsServiceStub(ch)
        call_with_retries(
            lambda: stub.ListGoldenDatasets(pb.ListGoldenDatasetsRequest(), timeout=5),
            deadline_s=timeout_s,
        )
    return time.monotonic() - started


def seed(address: str, rows: int) -> None:
    """``rows`` records up front, so that a stream has more to send than the buffers hold."""
    rng = random.Random(1)
    with channel(address) as ch:
        stub = pb_grpc.AnalyticsServiceStub(ch)
        for part in chunks(list(range(rows)), 1000):
            request = pb.WriteProvenanceBatchRequest()
            request.records.extend(record(f"seed-{i}", SEED_TENANT, rng) for i in part)
            stub.WriteProvenanceBatch(request, timeout=60)


def run_schedule(
    schedule: Schedule,
    args: Any,
    server: RestartableServer,
    proxy: TcpProxy,
    address: str,
    rec: Recorder,
) -> dict[str, Any]:
    """Drive the phases; return what the faults did."""
    events: dict[str, Any] = {}
    # The flood's own process, started (and its imports done) before the phases begin.
    process = ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"))
    process.submit(ready).result()
    for name, begin, end in schedule.bounds:
        schedule.wait_until(begin)
        end_at = schedule.start + end
        if name == "slow_reader":
            slow = SlowReader(address, rec, args.slow_streams)
            slow.hold(end_at)
            events["slow_streams_opened"] = slow.opened
            events["slow_streams_refused"] = slow.refused
            events["slow_streams_cut"] = slow.cut
        elif name == "flood":
            done = process.submit(flood, address, args.flood_streams, args.flood_unary, end_at)
            result = done.result()
            for rpc, started, ended, code in result.calls:
                rec.add_at("flood", rpc, started, ended, code)
            events["flood_waves"] = result.waves
            events["flood_cancelled_at_phase_end"] = result.cancelled
        elif name == "db_cut":
            cut_s = min(args.cut_seconds, (end - begin) / 2)
            proxy.down()
            time.sleep(cut_s)
            proxy.up()
            events["db_cut_s"] = round(cut_s, 1)
            events["db_back_serving_s"] = round(wait_serving(address), 2)
        elif name == "sigkill":
            killed = time.monotonic()
            server.kill()
            server.start(listen=address)
            wait_serving(address)
            events["sigkill_to_serving_s"] = round(time.monotonic() - killed, 2)
    process.shutdown()
    schedule.wait_until(schedule.seconds)
    return events


def check_replays(address: str, writers: Sequence[Writer], limit: int = 100) -> tuple[int, int]:
    """Re-send every retried batch and a sample of the others: (re-sent, not replayed as first)."""
    acked = [b for w in writers for b in w.batches if b.ids]
    retried = [b for b in acked if b.attempts > 1]
    others = [b for b in acked if b.attempts == 1]
    picked = retried + random.Random(3).sample(
        others, min(len(others), max(0, limit - len(retried)))
    )
    wrong = 0
    with channel(address) as ch:
        stub = pb_grpc.AnalyticsServiceStub(ch)
        for b in picked:
            response = call_with_retries(
                lambda b=b: stub.WriteProvenanceBatch(b.request, timeout=10), deadline_s=30
            )
            wrong += not response.replayed or tuple(response.ids) != b.ids
    return len(picked), wrong


def count_rows(url: str, writers: Sequence[Writer]) -> dict[str, int]:
    """The database itself against what the writers were told."""
    acked = {
        r.run_id: i
        for w in writers
        for b in w.batches
        for r, i in zip(b.request.records, b.ids, strict=False)
    }
    with psycopg.connect(libpq_url(url)) as conn:
        rows = conn.execute(
            "SELECT run_id, id FROM costsim_provenance WHERE tenant_id = %s", (TENANT,)
        ).fetchall()
        (bad,) = conn.execute(
            "SELECT count(*) FROM costsim_provenance WHERE tenant_id = %s", (BAD_TENANT,)
        ).fetchone() or (0,)
    stored = Counter(run_id for run_id, _ in rows)
    id_of = dict(rows)
    return {
        "acknowledged": len(acked),
        "stored": len(rows),
        "lost": sum(1 for r in acked if r not in stored),
        "duplicated": sum(n - 1 for n in stored.values() if n > 1),
        "wrong_ids": sum(1 for r, i in acked.items() if r in id_of and id_of[r] != i),
        "stored_unacknowledged": sum(1 for r in stored if r not in acked),
        "bad_input_rows": int(bad),
    }


def p(samples: Iterable[Sample], q: float) -> float | None:
    values = [s.ms for s in samples]
    return round(percentile(values, q), 1) if values else None


def latency(samples: Sequence[Sample]) -> tuple[dict[str, dict[str, Any]], dict[str, Any]]:
    """p50/p99 (ms) by phase and RPC of the steady clients, pooled "unary" included."""
    steady = [s for s in samples if s.client not in APART]
    table: dict[str, dict[str, Any]] = {}
    for phase, _ in PHASES:
        in_phase = [s for s in steady if s.phase == phase]
        rpcs = sorted({s.rpc for s in in_phase})
        row = {rpc: [s for s in in_phase if s.rpc == rpc] for rpc in rpcs}
        row["unary"] = [s for s in in_phase if s.rpc in STEADY_UNARY]
        table[phase] = {k: (p(v, 50), p(v, 99), len(v)) for k, v in row.items()}
    quiet = table["quiet"]["unary"][1]
    ratios = {
        phase: round(table[phase]["unary"][1] / quiet, 2)
        if quiet and table[phase]["unary"][1] is not None
        else None
        for phase in ("slow_reader", "flood")
    }
    return table, ratios


def errors(samples: Sequence[Sample], key: str) -> dict[str, dict[str, int]]:
    out: dict[str, Counter[str]] = {}
    for s in samples:
        if s.code != "OK":
            out.setdefault(getattr(s, key), Counter())[s.code] += 1
    return {k: dict(v) for k, v in sorted(out.items())}


def print_table(table: dict[str, dict[str, Any]]) -> None:
    rpcs = [*sorted({rpc for row in table.values() for rpc in row if rpc != "unary"}), "unary"]
    print(f"{'p50/p99 ms (calls)':<22}" + "".join(f"{phase:>22}" for phase in table))
    for rpc in rpcs:
        cells = []
        for row in table.values():
            p50, p99, n = row.get(rpc, (None, None, 0))
            cells.append(f"{p50}/{p99} ({n})" if n else "-")
        print(f"{rpc:<22}" + "".join(f"{c:>22}" for c in cells))


def main() -> None:
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=300, help="length of the schedule")
    parser.add_argument("--writers", type=int, default=2)
    parser.add_argument("--batch", type=int, default=20, help="records per batch")
    parser.add_argument("--seed-rows", type=int, default=20_000)
    parser.add_argument("--slow-streams", type=int, default=16)
    parser.add_argument("--flood-streams", type=int, default=40)
    parser.add_argument("--flood-unary", type=int, default=100)
    parser.add_argument("--cut-seconds", type=float, default=5)
    parser.add_argument("--canary-every", type=float, default=5)
    parser.add_argument("--server-log", type=Path, help="keep the server's log here")
    parser.add_argument(
        "--database-name", default="costsim_bench_soak", help="the database it creates and drops"
    )
    args = parser.parse_args()

    with (
        tempfile.TemporaryDirectory() as tmp,
        bench_database(args.database_url, args.database_name) as url,
    ):
        real = make_url(url)
        proxy = TcpProxy((real.host or "127.0.0.1", real.port or 5432))
        through = real.set(host="127.0.0.1", port=proxy.port).render_as_string(hide_password=False)
        env = {
            **os.environ,
            "COSTSIM_LOG_LEVEL": "WARNING",
            "COSTSIM_HTTP_LISTEN": "127.0.0.1:0",
            "COSTSIM_ARTIFACTS_DIR": str(Path(tmp) / "artifacts"),
            "COSTSIM_GRACE_PERIOD_S": "2",
        }
        log_path = args.server_log or Path(tmp) / "server.log"
        server = RestartableServer(through, env, log_path)
        try:
            address = server.start()
            wait_serving(address)
            seed(address, args.seed_rows)
            schedule = Schedule(args.seconds, PHASES)
            rec = Recorder(schedule)
            stop = threading.Event()
            writers = [Writer(i, args.batch, address, rec, stop) for i in range(args.writers)]
            canary = Canary(args.canary_every, address, rec, stop)
            steady: list[Client] = [
                *writers,
                StreamReader(address, rec, stop),
                DriftCaller(address, rec, stop),
                Probe(address, rec, stop),
                canary,
                BadInput(address, rec, stop),
            ]
            schedule.begin()
            for client in steady:
                client.start()
            events = run_schedule(schedule, args, server, proxy, address, rec)
            events["canary_runs"] = canary.statuses
            stop.set()
            for client in steady:
                client.join(120)
            resent, replay_wrong = check_replays(address, writers)
            counts = count_rows(url, writers)
        finally:
            server.stop()
            proxy.close()
        server_log = log_path.read_text()
        internal_logged = server_log.count("internal error")
        if internal_logged:  # the first one's traceback, so that a rare failure can be fixed
            first = server_log.index("internal error")
            print(server_log[server_log.rfind("\n", 0, first) + 1 :][:6000], flush=True)

    samples = list(rec.samples)
    table, ratios = latency(samples)
    codes = Counter(s.code for s in samples)
    internal = codes["INTERNAL"] + codes["UNKNOWN"]
    gave_up = sum(b.gave_up for w in writers for b in w.batches)
    refused_steady = sum(s.code == "RESOURCE_EXHAUSTED" and s.client not in APART for s in samples)
    bad = [s for s in samples if s.client == "bad_input"]
    misanswered = sum(s.code in ("OK", "INTERNAL", "UNKNOWN") for s in bad)
    print(
        f"{args.seconds:.0f} s; phases: "
        + ", ".join(f"{n} {e - b:.0f} s" for n, b, e in schedule.bounds)
    )
    print("faults: " + ", ".join(f"{k} {v}" for k, v in events.items()))
    print_table(table)
    for name, by in (("by RPC", errors(samples, "rpc")), ("by client", errors(samples, "client"))):
        print(f"errors {name}: " + "; ".join(f"{k} {v}" for k, v in by.items()))
    print(
        f"rows acknowledged {counts['acknowledged']}, in the database {counts['stored']},"
        f" lost {counts['lost']}, duplicated {counts['duplicated']},"
        f" wrong ids {counts['wrong_ids']}; batches given up {gave_up};"
        f" {resent} re-sent batches, {replay_wrong} not replayed as first answered"
    )
    print(
        f"INTERNAL/UNKNOWN answered {internal}, logged {internal_logged};"
        f" bad input sent {len(bad)}, misanswered {misanswered},"
        f" rows written {counts['bad_input_rows']};"
        f" RESOURCE_EXHAUSTED {codes['RESOURCE_EXHAUSTED']} ({refused_steady} to steady clients)"
    )
    print(
        f"unary p99 / quiet p99: slow reader {ratios['slow_reader']}, flood {ratios['flood']}"
        f" (target <= {MAX_RATIO})"
    )
    checks = {
        "lost": counts["lost"] == 0,
        "duplicated": counts["duplicated"] == 0,
        "internal": internal == 0 and internal_logged == 0,
        "slow_reader_p99_ratio": (ratios["slow_reader"] or 0) <= MAX_RATIO,
        "flood_p99_ratio": (ratios["flood"] or 0) <= MAX_RATIO,
        "replays": replay_wrong == 0 and counts["wrong_ids"] == 0,
        "gave_up": gave_up == 0,
        "bad_input": misanswered == 0 and counts["bad_input_rows"] == 0,
    }
    missed = [name for name, passed in checks.items() if not passed]
    print("all targets met" if not missed else f"missed: {', '.join(missed)}")
    result = {
        "bench": "soak",
        "seconds": args.seconds,
        **counts,
        "internal": internal,
        "internal_logged": internal_logged,
        "gave_up": gave_up,
        "replays_checked": resent,
        "replay_mismatches": replay_wrong,
        "resource_exhausted": codes["RESOURCE_EXHAUSTED"],
        "resource_exhausted_steady": refused_steady,
        "errors": errors(samples, "rpc"),
        "errors_by_client": errors(samples, "client"),
        "errors_by_phase": {
            phase: errors([s for s in samples if s.phase == phase], "client") for phase, _ in PHASES
        },
        "p50_ms": {ph: {k: v[0] for k, v in row.items()} for ph, row in table.items()},
        "p99_ms": {ph: {k: v[1] for k, v in row.items()} for ph, row in table.items()},
        "slow_reader_p99_ratio": ratios["slow_reader"],
        "flood_p99_ratio": ratios["flood"],
        "target_ratio": MAX_RATIO,
        "faults": events,
        "missed": missed,
        "ok": not missed,
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
