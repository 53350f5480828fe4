"""The writer's spool: what survives a reopen, a torn tail, a corrupt record, a second writer."""

from __future__ import annotations

import os
import threading
import time
from typing import Any

import pytest

from costsim_analytics.client.errors import SpoolError, SpoolLockedError
from costsim_analytics.client.spool import Spool
from costsim_analytics.client.spool_format import RECORD, frame, read_frames


def bodies(n: int, tag: str = "r") -> list[bytes]:
    return [f"{tag}-{i}".encode() * 10 for i in range(n)]


def segment_paths(path):
    return sorted(p for p in path.iterdir() if p.name.startswith("segment-"))


def test_what_is_acknowledged_leaves_and_the_rest_comes_back_with_its_batch(tmp_path):
    spool = Spool.open(tmp_path)
    seqs = spool.append(bodies(5))
    acked = spool.seal(seqs[:2])
    spool.ack(acked, seqs[:2])
    in_flight = spool.seal(seqs[2:4])  # sealed, sent, never answered
    spool.close()

    again = Spool.open(tmp_path)
    try:
        recovery = again.recovery
        assert [b.number for b in recovery.batches] == [in_flight]
        assert recovery.batches[0].seqs == tuple(seqs[2:4])
        assert sorted(recovery.pending) == seqs[2:]
        assert recovery.pending[seqs[4]] == bodies(5)[4]
        assert recovery.damage == [] and recovery.lost_records == 0
        # Numbers only grow: a new batch never reuses a request id.
        assert (again.next_seq, again.next_batch) == (5, in_flight + 1)
        assert again.spool_id == spool.spool_id
    finally:
        again.close()


def test_settled_segments_are_deleted_and_the_counters_survive_them(tmp_path):
    spool = Spool.open(tmp_path, segment_bytes=1024)
    for _ in range(20):
        seqs = spool.append(bodies(3))
        spool.ack(spool.seal(seqs), seqs)
    assert len(segment_paths(tmp_path)) == 1  # only the active one
    spool.close()
    again = Spool.open(tmp_path, segment_bytes=1024)
    try:
        assert again.recovery.records == 0
        assert (again.next_seq, again.next_batch) == (60, 20)
        assert len(segment_paths(tmp_path)) == 1
    finally:
        again.close()


def test_a_torn_tail_is_reported_set_aside_and_every_whole_record_kept(tmp_path):
    spool = Spool.open(tmp_path)
    spool.append(bodies(3))
    spool.close()
    [segment] = segment_paths(tmp_path)
    torn = frame(RECORD, (3).to_bytes(8, "little") + b"half a record")[:-5]
    with open(segment, "ab") as out:  # a crash in the middle of the write
        out.write(torn)

    again = Spool.open(tmp_path)
    try:
        [damage] = again.damage
        assert damage.kind == "truncated" and damage.length == len(torn)
        assert (tmp_path / damage.saved_to).read_bytes() == torn
        assert sorted(again.recovery.pending) == [0, 1, 2]
        assert again.recovery.lost_records == 0
    finally:
        again.close()
    # The segment was rewritten whole: the next open finds nothing wrong.
    third = Spool.open(tmp_path)
    try:
        assert third.damage == [] and sorted(third.recovery.pending) == [0, 1, 2]
    finally:
        third.close()


def test_a_corrupt_record_is_reported_and_the_records_after_it_are_kept(tmp_path):
    spool = Spool.open(tmp_path)
    spool.append(bodies(5))
    spool.close()
    [segment] = segment_paths(tmp_path)
    data = bytearray(segment.read_bytes())
    frames, _ = read_frames(bytes(data))
    offset, _kind, payload = frames[3]  # the record numbered 2 (frame 0 is the header)
    data[offset + 11 + len(payload) - 1] ^= 0xFF  # one flipped bit in its body
    segment.write_bytes(bytes(data))

    again = Spool.open(tmp_path)
    try:
        [damage] = again.damage
        assert damage.kind == "corrupt" and damage.offset == offset
        assert sorted(again.recovery.pending) == [0, 1, 3, 4]
        assert again.recovery.lost_records == 1  # counted from the gap in the numbers
    finally:
        again.close()


def test_a_sealed_batch_that_lost_a_record_is_sealed_again_from_what_is_left(tmp_path):
    spool = Spool.open(tmp_path)
    seqs = spool.append(bodies(3))
    spool.seal(seqs)
    spool.close()
    [segment] = segment_paths(tmp_path)
    data = bytearray(segment.read_bytes())
    frames, _ = read_frames(bytes(data))
    data[frames[2][0] + 12] ^= 0xFF  # record 1 damaged
    segment.write_bytes(bytes(data))
    again = Spool.open(tmp_path)
    try:
        assert again.recovery.batches == [] and again.recovery.broken_batches == 1
        assert sorted(again.recovery.pending) == [0, 2]
    finally:
        again.close()
    third = Spool.open(tmp_path)  # the ABANDON was written: it stays settled
    try:
        assert third.recovery.batches == [] and sorted(third.recovery.pending) == [0, 2]
    finally:
        third.close()


def test_rejected_records_go_to_rejected_jsonl_and_leave_the_spool(tmp_path):
    from costsim.analytics.v1 import analytics_pb2 as pb

    record = pb.ProvenanceRecord(run_id="r1", variant_slug="v2").SerializeToString()
    spool = Spool.open(tmp_path)
    [seq] = spool.append([record])
    spool.reject([(seq, record, {"reason": "TENANT_NOT_ALLOWED"})])
    spool.close()
    line = (tmp_path / "rejected.jsonl").read_text()
    assert '"reason": "TENANT_NOT_ALLOWED"' in line and '"run_id": "r1"' in line
    again = Spool.open(tmp_path)
    try:
        assert again.recovery.records == 0
    finally:
        again.close()


def test_one_writer_at_a_time(tmp_path):
    spool = Spool.open(tmp_path)
    try:
        with pytest.raises(SpoolLockedError):
            Spool.open(tmp_path)
    finally:
        spool.close()
    Spool.open(tmp_path).close()  # free again once closed


def test_concurrent_appends_get_distinct_numbers(tmp_path):
    spool = Spool.open(tmp_path, segment_bytes=4096)
    got: list[int] = []
    lock = threading.Lock()

    def add() -> None:
        for _ in range(50):
            seqs = spool.append(bodies(2))
            with lock:
                got.extend(seqs)

    threads = [threading.Thread(target=add) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    spool.close()
    assert sorted(got) == list(range(400))
    again = Spool.open(tmp_path, segment_bytes=4096)
    try:
        assert sorted(again.recovery.pending) == list(range(400))
    finally:
        again.close()


def test_fsync_mode_writes_the_same_log(tmp_path):
    spool = Spool.open(tmp_path, fsync=True)
    seqs = spool.append(bodies(2))
    spool.ack(spool.seal(seqs), seqs)
    spool.close()
    assert os.path.getsize(segment_paths(tmp_path)[-1]) > 0
    again = Spool.open(tmp_path)
    try:
        assert again.recovery.records == 0 and again.next_batch == 1
    finally:
        again.close()


class SlowFlushes:
    """os.fdatasync that takes a while and notes how large the file was when each began."""

    def __init__(self, real: Any) -> None:
        self.real = real
        self.lock = threading.Lock()
        self.done: list[int] = []  # file sizes at the start of each finished flush

    def __call__(self, fd: int) -> None:
        size = os.fstat(fd).st_size
        time.sleep(0.01)
        self.real(fd)
        with self.lock:
            self.done.append(size)


def test_records_added_at_once_share_a_flush_and_each_waits_for_one_after_it(tmp_path, monkeypatch):
    spool = Spool.open(tmp_path / "s", fsync=True)
    flushes = SlowFlushes(os.fdatasync)
    monkeypatch.setattr(os, "fdatasync", flushes)
    start = threading.Barrier(8)
    late: list[int] = []

    def add(n: int) -> None:
        start.wait()
        for body in bodies(5, f"t{n}-"):
            spool.append([body], sync=False)
            mark = spool.written  # a fresh spool's one segment: its size
            spool.flush_through(mark)
            with flushes.lock:
                if not any(size >= mark for size in flushes.done):
                    late.append(mark)

    threads = [threading.Thread(target=add, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert late == []  # every flush_through returned after a flush that covered its record
    assert len(flushes.done) < 40  # one flush a record would be 40: flushes were shared
    spool.close()
    assert Spool.open(tmp_path / "s").recovery.records == 40


def test_a_flush_that_fails_raises_and_nothing_later_claims_it(tmp_path, monkeypatch):
    spool = Spool.open(tmp_path / "s", fsync=True)

    def broken(fd: int) -> None:
        raise OSError(5, "Input/output error")

    spool.append(bodies(1), sync=False)
    mark = spool.written
    monkeypatch.setattr(os, "fdatasync", broken)
    with pytest.raises(SpoolError, match="cannot flush"):
        spool.flush_through(mark)
    with pytest.raises(SpoolError, match="cannot flush"):  # still not on the disk
        spool.flush_through(mark)
    monkeypatch.undo()
    spool.flush_through(mark)
    spool.close()


def test_without_fsync_flush_through_returns_at_once(tmp_path, monkeypatch):
    spool = Spool.open(tmp_path / "s")
    monkeypatch.setattr(os, "fdatasync", lambda fd: pytest.fail("flushed without fsync"))
    spool.append(bodies(2), sync=False)
    spool.flush_through(spool.written)
    spool.close()
