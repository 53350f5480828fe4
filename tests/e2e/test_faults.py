"""Faults under load against the real server process: the database cut, SIGKILL, SIGTERM.

Writers send WriteProvenanceBatch with a request id per batch and retry each batch with the same
id (``costsim_analytics.testing.retry``) for as long as a fault lasts. Afterwards the database
itself is counted: every batch a writer started is stored exactly once (no loss, no duplicate,
the ids it was answered with), and re-sending a batch is answered ``replayed`` with those ids.
Each fault lasts a few seconds.
"""

from __future__ import annotations

import signal
import subprocess
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field

import grpc
import pytest
from google.protobuf import json_format
from grpc_health.v1 import health_pb2
from sqlalchemy import text
from sqlalchemy.engine import make_url

from costsim.analytics.v1 import analytics_pb2 as pb
from costsim.analytics.v1.analytics_pb2_grpc import AnalyticsServiceStub as pb_stub
from costsim_analytics.drivers import schema
from costsim_analytics.drivers.database import make_engine
from costsim_analytics.testing.retry import RECONNECT_OPTIONS, call_with_retries
from costsim_analytics.testing.tcp_proxy import TcpProxy
from tests.e2e.rpc_errors import details
from tests.e2e.server import ServerProcess
from tests.factories import provenance_json

SERVING = health_pb2.HealthCheckResponse.SERVING
WRITERS = 4
BATCH = 10
FAULT_S = 3.0


@dataclass
class Batch:
    """One batch of one writer: its request, the ids it was answered with, its attempts."""

    request: pb.WriteProvenanceBatchRequest
    ids: tuple[int, ...] = ()
    replayed: bool = False
    # (monotonic start, code) of every failed attempt
    failures: list[tuple[float, grpc.StatusCode]] = field(default_factory=list)

    @property
    def request_id(self) -> str:
        return self.request.request_id

    @property
    def run_ids(self) -> list[str]:
        return [r.run_id for r in self.request.records]


def make_batch(tag: str, writer: int, n: int) -> Batch:
    request = pb.WriteProvenanceBatchRequest(request_id=f"{tag}-w{writer}-b{n}")
    for k in range(BATCH):
        record = provenance_json(k, run_id=f"{tag}-w{writer}-b{n}-r{k}", tenant_id=tag)
        json_format.ParseDict(record, request.records.add())
    return Batch(request)


class Writers:
    """``WRITERS`` threads, each writing its own batches until stopped; a batch is retried
    with its request id until it is acknowledged (or 30 s pass: a failure)."""

    def __init__(self, address: str, tag: str) -> None:
        self.tag = tag
        self.batches: list[list[Batch]] = [[] for _ in range(WRITERS)]
        self.failures: list[str] = []
        self.codes: Counter[grpc.StatusCode] = Counter()
        self.in_flight = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._channels = [
            grpc.insecure_channel(address, options=list(RECONNECT_OPTIONS)) for _ in range(WRITERS)
        ]
        self._threads = [
            threading.Thread(target=self._write, args=(w,), daemon=True) for w in range(WRITERS)
        ]

    def __enter__(self) -> Writers:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _write(self, w: int) -> None:
        stub = pb_stub(self._channels[w])
        n = 0
        while not self._stop.is_set():
            batch = make_batch(self.tag, w, n)
            self.batches[w].append(batch)
            n += 1

            def attempt(batch: Batch = batch) -> pb.WriteProvenanceBatchResponse:
                started = time.monotonic()
                with self._lock:
                    self.in_flight += 1
                try:
                    return stub.WriteProvenanceBatch(batch.request, timeout=5)
                except grpc.RpcError as exc:
                    batch.failures.append((started, exc.code()))
                    raise
                finally:
                    with self._lock:
                        self.in_flight -= 1

            try:
                response = call_with_retries(attempt, deadline_s=30, on_error=self._count)
            except grpc.RpcError as exc:
                self.failures.append(f"{batch.request_id}: {exc.code()} {exc.details()}")
                return
            batch.ids, batch.replayed = tuple(response.ids), response.replayed
            time.sleep(0.02)

    def _count(self, exc: grpc.RpcError) -> None:
        with self._lock:
            self.codes[exc.code()] += 1

    def acked(self) -> list[int]:
        """Acknowledged batches per writer."""
        return [sum(1 for b in batches if b.ids) for batches in self.batches]

    def wait_progress(self, more: int, timeout_s: float = 20.0) -> None:
        """Wait until every writer has ``more`` acknowledged batches than now."""
        target = [a + more for a in self.acked()]
        deadline = time.monotonic() + timeout_s
        while any(a < t for a, t in zip(self.acked(), target, strict=True)):
            assert not self.failures, self.failures
            assert time.monotonic() < deadline, f"writers stuck at {self.acked()} < {target}"
            time.sleep(0.02)

    def wait_in_flight(self, timeout_s: float = 10.0) -> None:
        """Wait until at least two writers have a call in flight (so the fault hits one)."""
        deadline = time.monotonic() + timeout_s
        while self.in_flight < 2:
            assert time.monotonic() < deadline, "no writes in flight"
            time.sleep(0.0005)

    def stop(self) -> None:
        """Stop starting batches; wait for the ones begun to be acknowledged."""
        self._stop.set()
        for t in self._threads:
            t.join(60)
        for ch in self._channels:
            ch.close()

    def all(self) -> list[Batch]:
        return [b for batches in self.batches for b in batches]


def assert_stored_exactly_once(database_url: str, writers: Writers) -> None:
    """Count the database directly: each batch's rows once, with the ids it was answered."""
    assert not writers.failures, writers.failures
    batches = writers.all()
    assert batches and all(b.ids for b in batches), "a batch was never acknowledged"
    engine = make_engine(database_url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(
                text("SELECT run_id, id FROM costsim_provenance WHERE tenant_id = :t"),
                {"t": writers.tag},
            ).all()
            keys = conn.execute(
                text(
                    "SELECT request_id FROM costsim_idempotency_keys "
                    "WHERE request_id LIKE :p AND response_json IS NOT NULL"
                ),
                {"p": f"{writers.tag}-%"},
            ).all()
    finally:
        engine.dispose()
    stored = Counter(run_id for run_id, _ in rows)
    sent = {run_id for b in batches for run_id in b.run_ids}
    duplicated = sorted(r for r, n in stored.items() if n > 1)
    lost = sorted(sent - set(stored))
    assert not duplicated, f"{len(duplicated)} records stored twice: {duplicated[:5]}"
    assert not lost, f"{len(lost)} acknowledged records missing: {lost[:5]}"
    assert set(stored) == sent, "rows nobody sent"
    id_of: dict[str, int] = {run_id: id_ for run_id, id_ in rows}
    for b in batches:
        assert tuple(id_of[r] for r in b.run_ids) == b.ids, b.request_id
    assert sorted(k for (k,) in keys) == sorted(b.request_id for b in batches)


def assert_replays(address: str, writers: Writers) -> None:
    """Re-sending a batch (each retried one, and each writer's first and last) is a replay."""
    retried = [b for b in writers.all() if b.failures]
    ends = [b for batches in writers.batches for b in (batches[0], batches[-1])]
    with grpc.insecure_channel(address) as ch:
        stub = pb_stub(ch)
        for b in {b.request_id: b for b in retried + ends}.values():
            response = stub.WriteProvenanceBatch(b.request, timeout=10)
            assert response.replayed, b.request_id
            assert tuple(response.ids) == b.ids, b.request_id


def assert_no_internal(server: ServerProcess, writers: Writers) -> None:
    seen = set(writers.codes)
    assert not seen & {grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN}, writers.codes
    assert "internal error" not in server.log()


@pytest.fixture
def tag() -> str:
    return f"fault-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def proxied(postgres_migrated_url: str) -> Iterator[tuple[TcpProxy, str]]:
    """A TCP proxy in front of the test PostgreSQL, and the database URL through it."""
    real = make_url(postgres_migrated_url)
    proxy = TcpProxy((real.host or "127.0.0.1", real.port or 5432))
    try:
        yield (
            proxy,
            real.set(host="127.0.0.1", port=proxy.port).render_as_string(hide_password=False),
        )
    finally:
        proxy.close()


def test_database_cut_loses_and_duplicates_no_batch(proxied, postgres_migrated_url, tmp_path, tag):
    proxy, url = proxied
    server = ServerProcess(url, tmp_path / "server.log").start()
    try:
        server.wait_health(SERVING)
        with Writers(server.address, tag) as writers:
            writers.wait_progress(3)
            writers.wait_in_flight()
            cut_at = time.monotonic()
            proxy.down()
            time.sleep(FAULT_S)
            proxy.up()
            writers.wait_progress(3)
        # The cut hit calls in flight and the calls made meanwhile; all were retried.
        failed = [t for b in writers.all() for t, code in b.failures if t < cut_at]
        assert failed, "no write was in flight when the database went away"
        assert writers.codes[grpc.StatusCode.UNAVAILABLE] > 0
        assert_stored_exactly_once(postgres_migrated_url, writers)
        assert_replays(server.address, writers)
        assert_no_internal(server, writers)
    finally:
        server.stop()


def test_sigkill_and_restart_lose_and_duplicate_no_batch(database_url, tmp_path, tag):
    server = ServerProcess(database_url, tmp_path / "server.log").start()
    try:
        server.wait_health(SERVING)
        address = server.address
        with Writers(address, tag) as writers:
            writers.wait_progress(3)
            writers.wait_in_flight()
            killed_at = time.monotonic()
            assert server.stop(signal.SIGKILL) == -signal.SIGKILL
            server.start(listen=address)  # same port, same database
            assert server.address == address
            writers.wait_progress(3)
        failed = [t for b in writers.all() for t, code in b.failures if t < killed_at]
        assert failed, "no write was in flight when the server was killed"
        assert_stored_exactly_once(database_url, writers)
        assert_replays(address, writers)
        assert_no_internal(server, writers)
    finally:
        server.stop()


def seed(address: str, tag: str, n: int) -> None:
    with grpc.insecure_channel(address) as ch:
        stub = pb_stub(ch)
        for start in range(0, n, 1000):
            request = pb.WriteProvenanceBatchRequest()
            for i in range(start, min(n, start + 1000)):
                json_format.ParseDict(
                    provenance_json(i, run_id=f"{tag}-{i}", tenant_id=tag), request.records.add()
                )
            stub.WriteProvenanceBatch(request, timeout=30)


def read_all(address: str, request: pb.QueryProvenanceRequest) -> list[int]:
    with grpc.insecure_channel(address) as ch:
        return [m.record.id for m in pb_stub(ch).QueryProvenance(request, timeout=30)]


GRACE_S = 1.0
RECORDS = 4000


class ExitClock:
    """Sends SIGTERM to a process and notes, in a thread, when it has exited."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.proc = proc
        self.sent_at = 0.0
        self.exited_at: float | None = None
        self._waiter = threading.Thread(target=self._wait, daemon=True)

    def _wait(self) -> None:
        self.proc.wait()
        self.exited_at = time.monotonic()

    def terminate(self) -> None:
        self.sent_at = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        self._waiter.start()

    def took_s(self) -> float:
        self._waiter.join(30)
        assert self.exited_at is not None, "the server did not exit"
        return self.exited_at - self.sent_at


def test_sigterm_mid_stream_then_resume_by_token(database_url, tmp_path, tag):
    server = ServerProcess(
        database_url, tmp_path / "server.log", COSTSIM_GRACE_PERIOD_S=str(GRACE_S)
    ).start()
    try:
        server.wait_health(SERVING)
        address = server.address
        seed(address, tag, RECORDS)
        query = pb.QueryProvenanceRequest(tenant_id=tag, page_size=RECORDS)
        assert server.proc is not None
        clock = ExitClock(server.proc)
        received: list[int] = []
        token = ""
        with grpc.insecure_channel(address) as ch, pytest.raises(grpc.RpcError) as ended:
            for message in pb_stub(ch).QueryProvenance(query, timeout=60):
                received.append(message.record.id)
                token = message.page_token
                if len(received) == 100:
                    clock.terminate()
                if clock.exited_at is None:  # a slow reader: the stream outlives the grace
                    time.sleep(0.002)
        # The stream ends with a status (the server cancels it when the grace is over) ...
        assert ended.value.code() == grpc.StatusCode.UNAVAILABLE, ended.value
        assert 100 <= len(received) < RECORDS
        # ... and the server is gone within its grace period (plus the exit itself).
        took = clock.took_s()
        assert took < GRACE_S + 1.5, f"exited {took:.1f} s after SIGTERM (grace {GRACE_S} s)"
        assert server.stop() == 0
        server.start(listen=address)
        server.wait_health(SERVING)
        resumed = pb.QueryProvenanceRequest(tenant_id=tag, page_size=RECORDS, page_token=token)
        rest = read_all(address, resumed)
        full = read_all(address, query)
        assert len(full) == RECORDS
        assert received + rest == full  # no gap, no duplicate, the same order
        # (What the server logs at that shutdown: test_sigterm_closes_a_stream_open_past_the_grace.)
    finally:
        server.stop()


def test_sigterm_closes_a_stream_open_past_the_grace(tmp_path, tag):
    url = f"sqlite:///{tmp_path / 'costsim.db'}"
    schema.upgrade(url)
    server = ServerProcess(url, tmp_path / "server.log", COSTSIM_GRACE_PERIOD_S="0.5").start()
    try:
        server.wait_health(SERVING)
        seed(server.address, tag, RECORDS)
        with grpc.insecure_channel(server.address) as ch:
            stream = pb_stub(ch).QueryProvenance(pb.QueryProvenanceRequest(page_size=RECORDS))
            next(iter(stream))  # then read nothing: the stream is open when the grace ends
            assert server.stop(signal.SIGTERM) == 0
    finally:
        server.stop()
    log = server.log()
    assert "stopped" in log
    assert "internal error" not in log and "Traceback" not in log, log


def test_streams_their_clients_cancel_mid_send_are_no_server_error(database_url, tmp_path, tag):
    server = ServerProcess(database_url, tmp_path / "server.log").start()
    try:
        server.wait_health(SERVING)
        seed(server.address, tag, RECORDS)
        query = pb.QueryProvenanceRequest(tenant_id=tag, page_size=RECORDS)
        with grpc.insecure_channel(server.address) as ch:
            stub = pb_stub(ch)
            # More cancels than one caller may hold streams: each one's slot comes back.
            for _ in range(10):
                stream = stub.QueryProvenance(query, timeout=30)
                next(iter(stream))
                time.sleep(0.05)  # the server is blocked writing to a client that reads nothing
                stream.cancel()
            assert len(list(stub.QueryProvenance(query, timeout=30))) == RECORDS
    finally:
        server.stop()
    assert "internal error" not in server.log()


def test_database_cut_mid_stream_then_resume_by_token(proxied, tmp_path, tag):
    proxy, url = proxied
    server = ServerProcess(url, tmp_path / "server.log").start()
    try:
        server.wait_health(SERVING)
        seed(server.address, tag, RECORDS)
        query = pb.QueryProvenanceRequest(tenant_id=tag, page_size=RECORDS)
        received: list[int] = []
        token = ""
        with grpc.insecure_channel(server.address) as ch, pytest.raises(grpc.RpcError) as ended:
            for message in pb_stub(ch).QueryProvenance(query, timeout=30):
                received.append(message.record.id)
                token = message.page_token
                if len(received) == 100:
                    proxy.down()
                time.sleep(0.001)
        # A failure after the first message is mapped like any other: retry later, resume.
        assert details(ended.value)[:2] == (grpc.StatusCode.UNAVAILABLE, "DATABASE_UNAVAILABLE")
        assert 100 <= len(received) < RECORDS
        proxy.up()
        server.wait_health(SERVING)
        resumed = pb.QueryProvenanceRequest(tenant_id=tag, page_size=RECORDS, page_token=token)
        assert received + read_all(server.address, resumed) == read_all(server.address, query)
        assert "internal error" not in server.log()
    finally:
        server.stop()
