"""The writer's durable spool: an append-only, checksummed log of records and batches.

A spool is a directory. ``add()`` returns once its record is in the log; a batch leaves it
only after the server acknowledged it; a writer opened on the same directory after a crash
sends again what is left, with the same request ids. The format (docs/client.md, "The spool"):

* ``segment-00000001.log``, ``segment-00000002.log``, ...: frames, each
  ``magic (2 bytes "CS") | type (1) | length (u32 LE) | CRC-32 of type, length and payload
  (u32 LE) | payload``. Every segment starts with a HEADER frame (JSON: the spool id, the
  segment number, the next record and batch numbers). RECORD frames carry a record's number
  (u64) and its encoded ``ProvenanceRecord``; SEAL a batch's number and its records' numbers
  (as ranges), written before the batch is first sent, so that it is re-sent with the same
  records under the same request id ``<spool id>-<batch number>``; ACK the same once the
  server answered; REJECT records the server refused (also appended to ``rejected.jsonl``);
  ABANDON a batch the server never stored (too large, or its request id taken), whose records
  are sealed again.
* A new segment is begun on every open and when the active one passes ``segment_bytes``;
  the oldest segments are deleted once every record and batch in them is settled.
* ``spool.lock``: held (``flock``) by the one writer that has the spool open.

On open every segment is read and every frame's checksum checked. A torn tail (the last
frame cut short by a crash during a write: its ``add()`` never returned) and a corrupt
region (checksums that do not match, with whole frames after it) are reported
(:attr:`Spool.damage`, and a warning in the log), their bytes are kept aside in
``damaged-<segment>-<offset>.bin``, and the segment is rewritten with its whole frames: no
whole record beyond the damage is ever dropped, and the numbers of records lost inside it
are counted from the gaps in the record numbers.

``add()`` writes its frame with one ``write()``: that survives the process being killed at
any point. With ``fsync=True`` each write is also flushed to the disk before it returns, which
survives a power loss too, at the disk's flush latency (docs/client.md has the figures).
Records added from several threads at once share their flushes (group commit): a record is
written at once, and :meth:`Spool.flush_through` then waits for one ``fdatasync`` that began
after the write, the first waiter flushing for everyone written by then (the writer's
``add()`` returns only after it).
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import threading
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from google.protobuf import json_format

from costsim.analytics.v1 import analytics_pb2 as pb
from costsim_analytics.client.errors import SpoolError, SpoolLockedError
from costsim_analytics.client.spool_format import (
    ABANDON,
    ACK,
    FORMAT,
    FRAME,
    HEADER,
    REJECT,
    SEAL,
    U64,
    Recovery,
    Replay,
    SpoolDamage,
    frame,
    ranges,
    read_frames,
    record_frame,
)

log = logging.getLogger(__name__)

DEFAULT_SEGMENT_BYTES = 64 * 1024 * 1024
LOCK_FILE = "spool.lock"
REJECTED_FILE = "rejected.jsonl"


@dataclass
class _Segment:
    number: int
    path: Path
    size: int = 0
    open_records: int = 0
    open_seals: int = 0


class Spool:
    """An open spool directory (one writer at a time). Thread-safe.

    Example:
        >>> spool = Spool.open("/var/lib/sim/costsim-spool")  # doctest: +SKIP
        >>> [seq] = spool.append([record.body])  # doctest: +SKIP
        >>> batch = spool.seal([seq])  # doctest: +SKIP
        >>> spool.ack(batch, [seq])  # doctest: +SKIP
    """

    def __init__(
        self, path: Path, *, fsync: bool, segment_bytes: int, lock_fd: int, spool_id: str
    ) -> None:
        self.path = path
        self.fsync = fsync
        self.segment_bytes = segment_bytes
        self.spool_id = spool_id
        self.recovery = Recovery()
        self._lock_fd = lock_fd
        self._lock = threading.Lock()
        self._segments: list[_Segment] = []
        self._seq_segment: dict[int, _Segment] = {}
        self._seal_segment: dict[int, _Segment] = {}
        self._fd = -1
        self.next_seq = 0
        self.next_batch = 0
        # Bytes written by this open (all segments), and how many of them are on the disk.
        self._written = 0
        self._durable = 0
        self._flush_lock = threading.Lock()  # one fdatasync of records at a time

    # --- opening -------------------------------------------------------------------------

    @classmethod
    def open(
        cls,
        path: str | os.PathLike[str],
        *,
        fsync: bool = False,
        segment_bytes: int = DEFAULT_SEGMENT_BYTES,
    ) -> Spool:
        """Open (or create) the spool at ``path``: lock it, read it back, begin a new segment.

        Raises:
            SpoolLockedError: another writer has it open.
            SpoolError: it cannot be read or written.
        """
        root = Path(path)
        try:
            root.mkdir(parents=True, exist_ok=True)
            lock_fd = os.open(root / LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            raise SpoolError(f"cannot open the spool {root}: {exc}") from exc
        try:
            fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(lock_fd)
            raise SpoolLockedError(f"the spool {root} is open in another writer") from None
        try:
            spool = cls(
                root, fsync=fsync, segment_bytes=segment_bytes, lock_fd=lock_fd, spool_id=""
            )
            spool._recover()
        except BaseException:
            os.close(lock_fd)
            raise
        return spool

    def _segment_files(self) -> list[tuple[int, Path]]:
        found = []
        for entry in self.path.glob("segment-*.log"):
            number = entry.stem.removeprefix("segment-")
            if number.isdigit():
                found.append((int(number), entry))
        return sorted(found)

    def _recover(self) -> None:
        try:
            files = self._segment_files()
            parsed = [(n, p, *read_frames(p.read_bytes())) for n, p in files]
        except OSError as exc:
            raise SpoolError(f"cannot read the spool {self.path}: {exc}") from exc
        state: Replay[_Segment] = Replay()
        for number, seg_path, frames, damage in parsed:
            segment = _Segment(number, seg_path)
            self._segments.append(segment)
            for _offset, kind, payload in frames:
                state.apply(segment, kind, payload)
            if damage:
                self._repair(seg_path, frames, damage)
            segment.size = sum(FRAME.size + len(p) for _o, _k, p in frames)
        if parsed and not state.spool_id:
            raise SpoolError(f"no segment of the spool {self.path} has a readable header")
        self.spool_id = state.spool_id or uuid.uuid4().hex[:16]
        self.next_seq, self.next_batch = state.next_seq, state.next_batch
        self._begin_segment()
        broken = state.settle(self.recovery)
        for number in broken:  # a sealed batch that lost a record: its records go again
            self._write(ABANDON, U64.pack(number))
        self.recovery.broken_batches = len(broken)
        for seq in self.recovery.pending:
            segment = state.record_segment[seq]
            segment.open_records += 1
            self._seq_segment[seq] = segment
        for batch in self.recovery.batches:
            segment = state.seal_segment[batch.number]
            segment.open_seals += 1
            self._seal_segment[batch.number] = segment
        self._trim()
        if self.recovery.damage or self.recovery.lost_records:
            log.warning(
                "spool %s: %d damaged stretch(es) set aside, %d record(s) lost, "
                "%d batch(es) sealed again",
                self.path,
                len(self.recovery.damage),
                self.recovery.lost_records,
                len(broken),
            )

    def _repair(
        self,
        seg_path: Path,
        frames: list[tuple[int, int, bytes]],
        damage: list[tuple[int, int, str]],
    ) -> None:
        data = seg_path.read_bytes()
        for offset, length, kind in damage:
            saved = self.path / f"damaged-{seg_path.stem}-{offset}.bin"
            saved.write_bytes(data[offset : offset + length])
            self.recovery.damage.append(
                SpoolDamage(seg_path.name, offset, length, kind, saved.name)
            )
            log.warning(
                "spool %s: %s stretch of %d bytes at offset %d of %s, kept in %s",
                self.path,
                kind,
                length,
                offset,
                seg_path.name,
                saved.name,
            )
        whole = b"".join(frame(kind, payload) for _o, kind, payload in frames)
        tmp = seg_path.with_suffix(".tmp")
        with open(tmp, "wb") as out:
            out.write(whole)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, seg_path)
        self._sync_dir()

    # --- writing ---------------------------------------------------------------------------

    def _sync_dir(self) -> None:
        fd = os.open(self.path, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def _begin_segment(self) -> None:
        number = self._segments[-1].number + 1 if self._segments else 1
        seg_path = self.path / f"segment-{number:08d}.log"
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND | os.O_CLOEXEC
        try:
            fd = os.open(seg_path, flags, 0o600)
        except OSError as exc:
            raise SpoolError(f"cannot create {seg_path}: {exc}") from exc
        if self._fd >= 0:
            if self.fsync and self._durable < self._written:  # records waiting on this file
                os.fdatasync(self._fd)
                self._durable = self._written
            os.close(self._fd)
        self._fd = fd
        self._segments.append(_Segment(number, seg_path))
        header = {
            "format": FORMAT,
            "spool_id": self.spool_id,
            "segment": number,
            "next_seq": self.next_seq,
            "next_batch": self.next_batch,
            "created_at": datetime.now(UTC).isoformat(),
        }
        self._write_now(frame(HEADER, json.dumps(header).encode()))
        self._sync_dir()

    def _write(self, kind: int, payload: bytes) -> None:
        data = frame(kind, payload)
        self._roll(len(data))
        self._write_now(data)

    def _roll(self, size: int) -> None:
        """Begin a new segment when ``size`` more bytes would take the active one too far."""
        active = self._segments[-1]
        if active.size + size > self.segment_bytes and active.size > 512:
            self._begin_segment()
            self._trim()

    def _write_now(self, data: bytes, *, sync: bool = True) -> None:
        active = self._segments[-1]
        view = memoryview(data)
        try:
            while view:
                view = view[os.write(self._fd, view) :]
            self._written += len(data)
            if self.fsync and sync:
                os.fdatasync(self._fd)
                self._durable = self._written
        except OSError as exc:
            try:  # take back a frame written in part, so the log stays whole
                os.ftruncate(self._fd, active.size)
            except OSError:
                log.exception("spool %s: cannot truncate %s", self.path, active.path.name)
            raise SpoolError(f"cannot write the spool {self.path}: {exc}") from exc
        active.size += len(data)

    def append(self, bodies: Sequence[bytes], *, sync: bool = True) -> list[int]:
        """Add encoded records (one write for all); their record numbers.

        With ``fsync`` and ``sync=False`` the records are written but not yet flushed: the
        caller then waits in :meth:`flush_through` for :attr:`written` as it was on return.
        """
        with self._lock:
            first = self.next_seq
            data = b"".join(record_frame(first + i, body) for i, body in enumerate(bodies))
            self._roll(len(data))
            active = self._segments[-1]
            self._write_now(data, sync=sync)
            self.next_seq = first + len(bodies)
            seqs = list(range(first, self.next_seq))
            for seq in seqs:
                self._seq_segment[seq] = active
            active.open_records += len(seqs)
            return seqs

    @property
    def written(self) -> int:
        """Bytes written by this open so far (a mark for :meth:`flush_through`)."""
        with self._lock:
            return self._written

    def flush_through(self, mark: int) -> None:
        """Return once every byte up to ``mark`` is on the disk (at once without ``fsync``).

        Group commit: one caller at a time flushes, and whoever waited meanwhile finds its
        bytes flushed already, or flushes once for all that were written by then.

        Raises:
            SpoolError: the flush failed (what was written may not be on the disk).
        """
        if not self.fsync:
            return
        with self._flush_lock:
            with self._lock:
                if self._durable >= mark:
                    return
                target = self._written
                # A file of its own: a segment begun meanwhile closes the active one, having
                # flushed it first.
                fd = os.dup(self._fd)
            try:
                os.fdatasync(fd)
            except OSError as exc:
                raise SpoolError(f"cannot flush the spool {self.path}: {exc}") from exc
            finally:
                os.close(fd)
            with self._lock:
                self._durable = max(self._durable, target)

    def seal(self, seqs: Sequence[int]) -> int:
        """Seal a batch of records before it is sent; its number (in its request id)."""
        with self._lock:
            number = self.next_batch
            self._write(SEAL, U64.pack(number) + ranges(seqs))
            self.next_batch = number + 1
            segment = self._segments[-1]
            self._seal_segment[number] = segment
            segment.open_seals += 1
            return number

    def ack(self, number: int, seqs: Iterable[int]) -> None:
        """The server stored batch ``number``: its records leave the spool."""
        seqs = list(seqs)
        with self._lock:
            self._write(ACK, U64.pack(number) + ranges(seqs))
            self._settle_seal(number)
            self._settle_records(seqs)
            self._trim()

    def abandon(self, number: int) -> None:
        """Batch ``number`` was never stored: its records are to be sealed again."""
        with self._lock:
            self._write(ABANDON, U64.pack(number))
            self._settle_seal(number)
            self._trim()

    def reject(self, entries: Sequence[tuple[int, bytes, dict[str, Any]]]) -> None:
        """The server refused these records for good: (number, record, why) each.

        Each goes to ``rejected.jsonl`` (the record in the proto's JSON form, with the reason)
        before the spool forgets it.
        """
        lines = []
        for seq, body, why in entries:
            record = json_format.MessageToDict(
                pb.ProvenanceRecord.FromString(body), preserving_proto_field_name=True
            )
            lines.append(json.dumps({"seq": seq, **why, "record": record}) + "\n")
        with self._lock:
            try:
                with open(self.path / REJECTED_FILE, "a", encoding="utf-8") as out:
                    out.writelines(lines)
                    out.flush()
                    if self.fsync:
                        os.fsync(out.fileno())
            except OSError as exc:
                raise SpoolError(f"cannot write {REJECTED_FILE}: {exc}") from exc
            seqs = [seq for seq, _b, _w in entries]
            self._write(REJECT, ranges(seqs))
            self._settle_records(seqs)
            self._trim()

    def _settle_seal(self, number: int) -> None:
        segment = self._seal_segment.pop(number, None)
        if segment is not None:
            segment.open_seals -= 1

    def _settle_records(self, seqs: Iterable[int]) -> None:
        for seq in seqs:
            segment = self._seq_segment.pop(seq, None)
            if segment is not None:
                segment.open_records -= 1

    def _trim(self) -> None:
        """Delete the oldest segments while everything in them is settled (never the active)."""
        removed = False
        while len(self._segments) > 1:
            oldest = self._segments[0]
            if oldest.open_records or oldest.open_seals:
                break
            try:
                oldest.path.unlink()
            except FileNotFoundError:
                pass
            except OSError as exc:
                raise SpoolError(f"cannot delete {oldest.path}: {exc}") from exc
            self._segments.pop(0)
            removed = True
        if removed and self.fsync:
            self._sync_dir()

    # --- state -----------------------------------------------------------------------------

    @property
    def damage(self) -> list[SpoolDamage]:
        """The damage the last open found (and set aside)."""
        return self.recovery.damage

    def size_bytes(self) -> int:
        """Bytes of the segments on disk."""
        with self._lock:
            return sum(s.size for s in self._segments)

    def segments(self) -> list[str]:
        """The segment files, oldest first."""
        with self._lock:
            return [s.path.name for s in self._segments]

    def close(self) -> None:
        """Close the files and release the lock (idempotent)."""
        with self._lock:
            if self._fd >= 0:
                if self.fsync:
                    os.fsync(self._fd)
                os.close(self._fd)
                self._fd = -1
            if self._lock_fd >= 0:
                os.close(self._lock_fd)  # releases the flock
                self._lock_fd = -1
