"""The client library's ProvenanceWriter end to end, against a plain COPY of the same rows.

What is measured: records/s from the first ``writer.add()`` to the last row committed (the
writer's ``flush()`` returns once the server acknowledged every batch), through a real
``costsim-analytics serve`` subprocess into PostgreSQL, with and without the durable spool;
and, in the same run, rows/s of psycopg ``COPY`` of the same rows into the same table (the
baseline of ``bench/ingest.py``, before and after the writer phases, their mean). The writer
does everything a caller's process would: each record is checked by the server's rules,
hashed, encoded with its payload as JSON text, spooled (or not), batched and sent with a
request id. Targets: at least 0.5x COPY without the spool and 0.4x with it.

Also measured, for the choice of the spool's format, outside any server: appending records
one at a time to the checksummed log (the spool as built) against a SQLite database in WAL
mode with one transaction per record (what ``add()`` returning after each record needs),
records/s and bytes per record, both as a process crash leaves them (no fsync) and flushed to
the disk on every record (``fsync=True``; SQLite ``synchronous=FULL``).
"""

from __future__ import annotations

import json
import os
import random
import sqlite3
import statistics
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
from _common import base_parser, bench_database, client_cpu_s, libpq_url, service_server
from ingest import copy_row, make_record, reset, run_copy

from costsim_analytics.client import AnalyticsClient, ProvenanceWriter, prepare_record
from costsim_analytics.client.spool import Spool


def run_writer(address: str, records: list[dict[str, Any]], spool: Path | None) -> float:
    """Seconds from the first add() to the last acknowledged batch."""
    with AnalyticsClient(address) as client:
        writer = ProvenanceWriter(client, spool=spool, max_batch_records=1000)
        try:
            start = time.perf_counter()
            for record in records:
                writer.add(**record)
            writer.flush()
            seconds = time.perf_counter() - start
        finally:
            writer.close()
        metrics = writer.metrics()
        if metrics.records_sent != len(records) or metrics.records_rejected:
            raise RuntimeError(f"writer did not send everything: {metrics}")
        return seconds


def add_only(records: list[dict[str, Any]]) -> float:
    """Microseconds per record of what add() does before the spool: check, hash, encode."""
    start = time.perf_counter()
    for record in records:
        prepare_record(**record)
    return (time.perf_counter() - start) * 1e6 / len(records)


def spool_choice(bodies: list[bytes], synced: int) -> dict[str, dict[str, float]]:
    """Records/s and bytes per record of the two candidate formats (``synced``: fsync runs)."""
    results: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory() as folder:
        for fsync, count in ((False, len(bodies)), (True, synced)):
            path = Path(folder) / f"log-{fsync}"
            spool = Spool.open(path, fsync=fsync)
            start = time.perf_counter()
            for body in bodies[:count]:
                spool.append([body])
            seconds = time.perf_counter() - start
            size = spool.size_bytes()
            spool.close()
            results[f"log{'+fsync' if fsync else ''}"] = {
                "records_s": count / seconds,
                "bytes_per_record": size / count,
            }
        for mode, count in (("NORMAL", len(bodies)), ("FULL", synced)):
            db = Path(folder) / f"spool-{mode}.db"
            conn = sqlite3.connect(db, isolation_level=None)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute(f"PRAGMA synchronous={mode}")
            conn.execute("CREATE TABLE records (seq INTEGER PRIMARY KEY, body BLOB NOT NULL)")
            start = time.perf_counter()
            for seq, body in enumerate(bodies[:count]):
                conn.execute("BEGIN")
                conn.execute("INSERT INTO records VALUES (?, ?)", (seq, body))
                conn.execute("COMMIT")
            seconds = time.perf_counter() - start
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            conn.close()
            size = sum(p.stat().st_size for p in Path(folder).glob(f"spool-{mode}.db*"))
            name = "sqlite_wal" if mode == "NORMAL" else "sqlite_wal+fsync"
            results[name] = {"records_s": count / seconds, "bytes_per_record": size / count}
    return results


def main() -> None:
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=20_000, help="timed records per phase")
    parser.add_argument("--warmup", type=int, default=2_000, help="untimed records first")
    parser.add_argument("--synced", type=int, default=300, help="records of the fsync phases")
    args = parser.parse_args()

    rng = random.Random(42)
    total = args.warmup + args.records
    records = [make_record(rng, n) for n in range(total)]
    warmup, timed = records[: args.warmup], records[args.warmup :]
    now = datetime.now(UTC)
    copy_batches = [
        [copy_row(r, now) for r in records[i : i + 1000]] for i in range(0, total, 1000)
    ]
    copy_warmup = -(-args.warmup // 1000)
    timed_copy_rows = sum(len(b) for b in copy_batches[copy_warmup:])
    add_us = add_only(timed[:5000])
    bodies = [prepare_record(**r).body for r in timed[:10_000]]
    print(f"{args.records} timed records; encoded ~{statistics.mean(map(len, bodies)):.0f} bytes")

    copy_rates: list[float] = []
    rates: dict[str, float] = {}
    cpu_us: dict[str, dict[str, float]] = {}
    with (
        bench_database(args.database_url, "costsim_bench_client") as url,
        psycopg.connect(libpq_url(url), autocommit=True) as conn,
    ):
        for timed_run in (False, True):
            reset(conn)
            rate = timed_copy_rows / run_copy(conn, copy_batches, copy_warmup)
            copy_rates += [rate] if timed_run else []
        reset(conn, expect=total)
        with service_server(url) as server, tempfile.TemporaryDirectory() as folder:
            for name in ("writer", "writer+spool"):
                spool = Path(folder) / name if name.endswith("spool") else None
                run_writer(server.address, warmup, spool)
                server_cpu, own_cpu = server.cpu_s(), client_cpu_s()
                rates[name] = len(timed) / run_writer(server.address, timed, spool)
                cpu_us[name] = {
                    "client": (client_cpu_s() - own_cpu) * 1e6 / len(timed),
                    "server": (server.cpu_s() - server_cpu) * 1e6 / len(timed),
                }
                print(
                    f"{name:>13}: {rates[name]:>9,.0f} records/s (add() to committed rows);"
                    f" CPU per record: writer process {cpu_us[name]['client']:.0f} us,"
                    f" server process {cpu_us[name]['server']:.0f} us"
                )
                reset(conn, expect=total)
        copy_rates.append(timed_copy_rows / run_copy(conn, copy_batches, copy_warmup))
        reset(conn, expect=total)
    copy_rate = statistics.mean(copy_rates)
    ratio, spool_ratio = rates["writer"] / copy_rate, rates["writer+spool"] / copy_rate
    spool_us = (1 / rates["writer+spool"] - 1 / rates["writer"]) * 1e6
    runs = " and ".join(f"{r:,.0f}" for r in copy_rates)
    print(f"COPY (psycopg write_row): {copy_rate:>9,.0f} rows/s (mean of {runs})")
    print(f"ratio writer/COPY: {ratio:.2f} (target 0.5); with the spool: {spool_ratio:.2f} (0.4)")
    print(f"the spool costs {spool_us:.1f} us per record end to end")
    print(f"add() before the spool (check, hash, encode): {add_us:.1f} us per record")

    choice = spool_choice(bodies, args.synced)
    print("spool format, one record per append:")
    for name, figures in choice.items():
        print(
            f"  {name:>17}: {figures['records_s']:>10,.0f} records/s,"
            f" {figures['bytes_per_record']:>6.0f} bytes per record"
        )
    result = {
        "bench": "client",
        "ratio": round(ratio, 3),
        "spool_ratio": round(spool_ratio, 3),
        "targets": {"ratio": 0.5, "spool_ratio": 0.4},
        "copy_rows_s": round(copy_rate),
        "writer_rows_s": round(rates["writer"]),
        "spool_writer_rows_s": round(rates["writer+spool"]),
        "spool_us_per_record": round(spool_us, 1),
        "add_us_per_record": round(add_us, 1),
        "cpu_us_per_record": {
            name: {k: round(v, 1) for k, v in figures.items()} for name, figures in cpu_us.items()
        },
        "spool_choice": {
            name: {k: round(v) for k, v in figures.items()} for name, figures in choice.items()
        },
        "records": args.records,
        "cpus": os.cpu_count(),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
