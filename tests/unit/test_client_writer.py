"""ProvenanceWriter against a fake client: backpressure, flush and close, retries, failures."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import grpc
import pytest

from costsim.analytics.v1 import analytics_pb2 as pb
from costsim_analytics.client import (
    FlushTimeoutError,
    InvalidRecordError,
    ProvenanceWriter,
    RetryPolicy,
    WriterClosedError,
    WriterFullError,
    WriterHooks,
)
from costsim_analytics.client.errors import SpoolError
from costsim_analytics.client.spool import Spool
from tests.factories import provenance_json


class Unavailable(grpc.RpcError):
    def code(self) -> grpc.StatusCode:
        return grpc.StatusCode.UNAVAILABLE

    def details(self) -> str:
        return "server restarting"

    def trailing_metadata(self) -> tuple[()]:
        return ()


class FakeFuture:
    """Answers once the fake server is up; fails UNAVAILABLE when it is told to."""

    def __init__(self, server: FakeServer, request: pb.WriteProvenanceBatchRequest) -> None:
        self.server, self.request = server, request

    def result(self, timeout: float) -> pb.WriteProvenanceBatchResponse:
        if not self.server.up.wait(timeout):
            raise grpc.FutureTimeoutError()
        with self.server.lock:
            if self.server.fail_next:
                self.server.fail_next -= 1
                raise Unavailable()
            replayed = self.request.request_id in self.server.stored
            self.server.stored.setdefault(
                self.request.request_id, [r.run_id for r in self.request.records]
            )
        return pb.WriteProvenanceBatchResponse(
            ids=range(len(self.request.records)), replayed=replayed
        )

    def cancel(self) -> bool:
        return True


class FakeServer:
    def __init__(self, up: bool = True) -> None:
        self.up = threading.Event()
        if up:
            self.up.set()
        self.lock = threading.Lock()
        self.stored: dict[str, list[str]] = {}
        self.sent: list[str] = []
        self.fail_next = 0


class FakeClient:
    retry = RetryPolicy(initial_backoff_s=0.01, max_backoff_s=0.02)

    def __init__(self, server: FakeServer) -> None:
        self.server = server

    def send_encoded(self, body: bytes, timeout_s: float) -> FakeFuture:
        request = pb.WriteProvenanceBatchRequest.FromString(body)
        with self.server.lock:
            self.server.sent.append(request.request_id)
        return FakeFuture(self.server, request)


def writer(server: FakeServer, **options: Any) -> ProvenanceWriter:
    return ProvenanceWriter(FakeClient(server), **options)  # type: ignore[arg-type]


def add(w: ProvenanceWriter, n: int, **kw: Any) -> None:
    w.add(**provenance_json(n, run_id=f"r{n}"), **kw)


def test_add_blocks_when_full_or_raises_when_asked_not_to():
    server = FakeServer(up=False)
    w = writer(server, max_batch_records=2, max_buffer_records=4, max_delay_s=0.01)
    for n in range(4):
        add(w, n)
    with pytest.raises(WriterFullError):
        add(w, 4, block=False)
    started = time.monotonic()
    with pytest.raises(WriterFullError):
        add(w, 4, timeout_s=0.2)
    assert time.monotonic() - started >= 0.2
    threading.Timer(0.1, server.up.set).start()
    add(w, 4)  # waits for room, then goes in
    w.close(timeout_s=10)
    assert sorted(r for runs in server.stored.values() for r in runs) == [f"r{n}" for n in range(5)]
    assert w.metrics().records_sent == 5 and w.metrics().queue_depth == 0


def test_a_bad_record_fails_in_add_and_nothing_is_buffered():
    w = writer(FakeServer())
    with pytest.raises(InvalidRecordError) as refused:
        w.add(**provenance_json(1, variant_slug="v7"))
    assert [v.field for v in refused.value.violations] == ["variant_slug"]
    assert w.metrics().records_added == 0
    w.close()


def test_closing_without_a_spool_while_the_server_is_away_raises():
    w = writer(FakeServer(up=False), max_delay_s=0.01)
    for n in range(3):
        add(w, n)
    with pytest.raises(FlushTimeoutError) as timed_out:
        w.close(timeout_s=0.2)
    assert timed_out.value.pending == 3


def test_closing_with_a_spool_keeps_the_records_for_the_next_writer(tmp_path):
    server = FakeServer(up=False)
    w = writer(server, spool=tmp_path, max_batch_records=2, max_delay_s=0.01)
    for n in range(5):
        add(w, n)
    time.sleep(0.1)  # batches sealed and sent, never answered
    w.close(timeout_s=0.2)  # no error: they are in the spool
    first_ids = sorted(set(server.sent))
    assert first_ids
    server.up.set()
    again = writer(server, spool=tmp_path, max_batch_records=2)
    assert again.recovery is not None and again.recovery.records == 5
    again.close(timeout_s=10)
    # The sealed batches went again under their first ids; every record arrived once.
    assert set(first_ids) <= set(server.stored)
    assert sorted(r for runs in server.stored.values() for r in runs) == [f"r{n}" for n in range(5)]
    drained = Spool.open(tmp_path)
    try:
        assert drained.recovery.records == 0
    finally:
        drained.close()


def test_failed_attempts_are_retried_with_the_same_request_id():
    server = FakeServer()
    server.fail_next = 3
    w = writer(server, max_delay_s=0.01)
    add(w, 1)
    w.flush(timeout_s=10)
    metrics = w.metrics()
    w.close()
    assert metrics.retries == 3 and metrics.errors == {"UNAVAILABLE": 3}
    assert len(set(server.sent)) == 1 and len(server.sent) == 4


def test_a_failing_hook_stops_the_writer_and_says_why():
    class Broken(WriterHooks):
        def batch_acked(self, batch: Any, replayed: bool) -> None:
            raise RuntimeError("hook failed")

    w = writer(FakeServer(), hooks=Broken(), max_delay_s=0.01)
    add(w, 1)
    with pytest.raises(WriterClosedError) as stopped:
        w.flush(timeout_s=10)
    assert isinstance(stopped.value.__cause__, RuntimeError)
    with pytest.raises(WriterClosedError):
        add(w, 2)
    with pytest.raises(WriterClosedError):
        w.close()


def test_options_are_checked():
    with pytest.raises(ValueError, match="request_id_prefix"):
        writer(FakeServer(), request_id_prefix="x" * 91)
    with pytest.raises(ValueError, match="max_buffer_records"):
        writer(FakeServer(), max_batch_records=100, max_buffer_records=10)


def test_a_writer_nobody_closed_sends_what_it_holds_at_exit():
    script = """
import atexit
from tests.unit.test_client_writer import FakeServer, add, writer
server = FakeServer()
atexit.register(lambda: print(sorted(r for runs in server.stored.values() for r in runs)))
w = writer(server, max_delay_s=60)  # nothing is due before the exit
for n in range(3):
    add(w, n)
"""
    repo = Path(__file__).resolve().parents[2]
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=repo, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "['r0', 'r1', 'r2']"
    assert "was not closed" in done.stderr


def test_adds_from_several_threads_share_their_flushes(tmp_path, monkeypatch):
    real = os.fdatasync
    flushes: list[int] = []

    def slow(fd: int) -> None:
        time.sleep(0.005)
        real(fd)
        flushes.append(fd)

    server = FakeServer()
    w = writer(server, spool=tmp_path / "spool", fsync=True, max_batch_records=50)
    monkeypatch.setattr(os, "fdatasync", slow)
    start = threading.Barrier(6)

    def add_some(t: int) -> None:
        start.wait()
        for n in range(20):
            add(w, t * 100 + n)

    threads = [threading.Thread(target=add_some, args=(t,)) for t in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    record_flushes = len(flushes)
    w.flush(timeout_s=10)
    w.close(timeout_s=10)
    stored = sorted(run for runs in server.stored.values() for run in runs)
    assert stored == sorted(f"r{t * 100 + n}" for t in range(6) for n in range(20))
    # One flush a record would be 120, and seals and acks flush too: records shared flushes.
    assert record_flushes < 120


def test_a_failed_flush_raises_in_add_and_stops_the_writer(tmp_path, monkeypatch):
    server = FakeServer()
    w = writer(server, spool=tmp_path / "spool", fsync=True)
    add(w, 0)

    def broken(fd: int) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(os, "fdatasync", broken)
    with pytest.raises(SpoolError, match="cannot flush"):
        add(w, 1)
    monkeypatch.undo()
    with pytest.raises(WriterClosedError, match="cannot flush"):
        add(w, 2)
    with pytest.raises(WriterClosedError):
        w.close(timeout_s=5)
