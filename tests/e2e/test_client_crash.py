"""The crash test: a writer process killed with SIGKILL at random points, again and again.

Each round starts ``tests/e2e/crash_writer.py`` on the same spool, adding new records, and
kills it: at a random moment, in the middle of a spool write (a torn record, seal or
acknowledgement), while a batch is on the wire, or after the server acknowledged a batch and
before the spool forgot it. A last round only drains the spool. Then the database must hold
every record whose ``add()`` returned exactly once, the record a kill interrupted at most
once, and nothing else. ``COSTSIM_CRASH_ROUNDS`` (default 12) sets the number of kills.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from pathlib import Path

from grpc_health.v1 import health_pb2
from sqlalchemy import text

from costsim_analytics.client.spool import Spool
from costsim_analytics.drivers.database import make_engine
from tests.e2e.server import ServerProcess

REPO = Path(__file__).resolve().parents[2]
ROUNDS = int(os.environ.get("COSTSIM_CRASH_ROUNDS", "12"))
PER_ROUND = 120
MODES = ("none", "torn", "mid_batch", "after_ack")


class Child:
    """One writer process and the run ids it printed as added."""

    def __init__(
        self, address: str, spool: Path, tag: str, first: int, mode: str, n: int, seed: int
    ):
        args = [address, str(spool), tag, str(first), str(PER_ROUND), mode, str(n), str(seed)]
        self.log = spool.parent / f"writer-{first}.log"
        with self.log.open("w") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "tests.e2e.crash_writer", *args],
                cwd=REPO,
                stdout=subprocess.PIPE,
                stderr=log,
                text=True,
            )
        self.added: list[str] = []
        self.closed = False
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            if line.startswith("ADDED "):
                self.added.append(line.split()[1])
            elif line.startswith("CLOSED"):
                self.closed = True

    def wait(self, timeout_s: float = 60) -> int:
        code = self.proc.wait(timeout_s)
        self._reader.join(5)
        assert self.proc.stdout is not None
        self.proc.stdout.close()
        return code


def stored(database_url: str, tag: str) -> Counter[str]:
    engine = make_engine(database_url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(
                text("SELECT run_id FROM costsim_provenance WHERE run_id LIKE :p"),
                {"p": f"{tag}-%"},
            ).all()
    finally:
        engine.dispose()
    return Counter(run_id for (run_id,) in rows)


def test_sigkill_at_random_points_loses_and_duplicates_nothing(database_url, tmp_path):
    tag = f"crash-{uuid.uuid4().hex[:8]}"
    rng = random.Random(int(os.environ.get("COSTSIM_CRASH_SEED", "7")))
    spool = tmp_path / "spool"
    server = ServerProcess(database_url, tmp_path / "server.log").start()
    try:
        server.wait_health(health_pb2.HealthCheckResponse.SERVING)
        added: list[str] = []
        interrupted: set[str] = set()
        killed: Counter[str] = Counter()
        for round_ in range(ROUNDS):
            mode = MODES[round_ % len(MODES)]
            first = round_ * PER_ROUND
            n = rng.randint(1, 4) if mode != "torn" else rng.randint(2, 60)
            child = Child(server.address, spool, tag, first, mode, n, rng.randrange(1 << 30))
            if mode == "none":  # the parent kills it once it has added some records
                target = rng.randint(1, PER_ROUND - 10)
                deadline = time.monotonic() + 30
                while len(child.added) < target and child.proc.poll() is None:
                    assert time.monotonic() < deadline, "the writer added nothing"
                    time.sleep(0.002)
                time.sleep(rng.uniform(0, 0.03))
                child.proc.send_signal(signal.SIGKILL)
            code = child.wait()
            if code == -signal.SIGKILL:
                killed[mode] += 1
            else:
                assert code == 0 and child.closed, child.log.read_text()
            added += child.added
            # The one record being added when the kill came may or may not be there.
            interrupted |= {f"{tag}-{i}" for i in range(first, first + PER_ROUND)} - set(added)
        drain = Child(server.address, spool, tag, ROUNDS * PER_ROUND, "none", 0, 0)
        assert drain.wait() == 0 and drain.closed
        added += drain.added
    finally:
        server.stop()
    if len(MODES) <= ROUNDS:
        assert all(killed[mode] for mode in MODES), killed
    counts = stored(database_url, tag)
    duplicated = sorted(r for r, c in counts.items() if c > 1)
    lost = sorted(set(added) - set(counts))
    stray = sorted(set(counts) - set(added) - interrupted)
    assert not duplicated, f"stored twice: {duplicated[:5]} (kills: {dict(killed)})"
    assert not lost, f"add() returned but not stored: {lost[:5]} (kills: {dict(killed)})"
    assert not stray, f"stored but never added: {stray[:5]}"
    assert len(added) > ROUNDS * 10
    # Everything acknowledged: the spool is empty (and free: the last writer closed it).
    left = Spool.open(spool)
    try:
        assert left.recovery.records == 0 and left.recovery.batches == []
    finally:
        left.close()
