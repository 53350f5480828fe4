"""The spool's log format: frames and their checksums, and the state a log replays to.

``spool.py`` writes and trims the log; this module says what its bytes are (the format is
described there and in docs/client.md, "The spool") and what a sequence of frames means.
"""

from __future__ import annotations

import json
import struct
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

S = TypeVar("S")

FORMAT = 1
MAGIC = b"CS"
FRAME = struct.Struct("<2sBII")
U64 = struct.Struct("<Q")
_RANGE = struct.Struct("<QI")
_RECORD_LENGTH = struct.Struct("<BI")  # what a frame's CRC covers before its payload
HEADER, RECORD, SEAL, ACK, REJECT, ABANDON = 1, 2, 3, 4, 5, 6
_TYPES = frozenset({HEADER, RECORD, SEAL, ACK, REJECT, ABANDON})


@dataclass(frozen=True, slots=True)
class SpoolDamage:
    """A damaged stretch of a segment found on open.

    ``kind`` is ``truncated`` (a last frame cut short: a write a crash interrupted) or
    ``corrupt`` (bytes whose checksum fails, whole frames after them). ``saved_to`` is the file
    that keeps the bytes.
    """

    segment: str
    offset: int
    length: int
    kind: str
    saved_to: str


@dataclass(frozen=True, slots=True)
class SealedBatch:
    """A batch sealed before a crash and not yet acknowledged: re-sent as it was."""

    number: int
    seqs: tuple[int, ...]


@dataclass
class Recovery:
    """What an open found: records to send, batches to re-send, and any damage."""

    pending: dict[int, bytes] = field(default_factory=dict)
    batches: list[SealedBatch] = field(default_factory=list)
    damage: list[SpoolDamage] = field(default_factory=list)
    lost_records: int = 0
    broken_batches: int = 0

    @property
    def records(self) -> int:
        """Records found not yet acknowledged."""
        return len(self.pending)


def _crc(kind: int, payload: bytes | memoryview) -> int:
    return zlib.crc32(payload, zlib.crc32(bytes((kind,)) + struct.pack("<I", len(payload))))


def frame(kind: int, payload: bytes) -> bytes:
    """One frame of the log."""
    return FRAME.pack(MAGIC, kind, len(payload), _crc(kind, payload)) + payload


def record_frame(seq: int, body: bytes) -> bytes:
    """``frame(RECORD, U64.pack(seq) + body)``, without building the payload first."""
    number = U64.pack(seq)
    size = U64.size + len(body)
    crc = zlib.crc32(body, zlib.crc32(number, zlib.crc32(_RECORD_LENGTH.pack(RECORD, size))))
    return b"".join((FRAME.pack(MAGIC, RECORD, size, crc), number, body))


def ranges(seqs: Sequence[int]) -> bytes:
    """Record numbers as (first, count) runs: how SEAL, ACK and REJECT carry them."""
    out: list[bytes] = []
    start = prev = -2
    count = 0
    for seq in sorted(seqs):
        if seq == prev + 1:
            count += 1
        else:
            if count:
                out.append(_RANGE.pack(start, count))
            start, count = seq, 1
        prev = seq
    if count:
        out.append(_RANGE.pack(start, count))
    return b"".join(out)


def seqs_in(data: bytes | memoryview) -> list[int]:
    """The record numbers of :func:`ranges`' runs."""
    seqs: list[int] = []
    for start, count in _RANGE.iter_unpack(data):
        seqs.extend(range(start, start + count))
    return seqs


def _valid_at(data: bytes, offset: int) -> int | None:
    """The end of a whole, valid frame at ``offset``, else None."""
    if len(data) - offset < FRAME.size:
        return None
    magic, kind, length, crc = FRAME.unpack_from(data, offset)
    end = offset + FRAME.size + length
    if magic != MAGIC or kind not in _TYPES or end > len(data):
        return None
    if _crc(kind, memoryview(data)[offset + FRAME.size : end]) != crc:
        return None
    return int(end)


def read_frames(data: bytes) -> tuple[list[tuple[int, int, bytes]], list[tuple[int, int, str]]]:
    """Every whole frame of a segment (offset, type, payload), and its damaged stretches.

    A damaged stretch is (offset, length, kind): ``truncated`` when nothing whole follows it
    and it looks like the start of a frame cut short, else ``corrupt``.
    """
    frames: list[tuple[int, int, bytes]] = []
    damage: list[tuple[int, int, str]] = []
    offset = 0
    while offset < len(data):
        end = _valid_at(data, offset)
        if end is not None:
            kind = data[offset + 2]
            frames.append((offset, kind, data[offset + FRAME.size : end]))
            offset = end
            continue
        resume = data.find(MAGIC, offset + 1)
        while resume != -1 and _valid_at(data, resume) is None:
            resume = data.find(MAGIC, resume + 1)
        if resume == -1:
            damage.append((offset, len(data) - offset, _tail_kind(data, offset)))
            break
        damage.append((offset, resume - offset, "corrupt"))
        offset = resume
    return frames, damage


def _tail_kind(data: bytes, offset: int) -> str:
    if len(data) - offset < FRAME.size:
        return "truncated" if data[offset:].startswith(MAGIC[: len(data) - offset]) else "corrupt"
    magic, kind, length, _ = FRAME.unpack_from(data, offset)
    cut_short = offset + FRAME.size + length > len(data)
    return "truncated" if magic == MAGIC and kind in _TYPES and cut_short else "corrupt"


class Replay(Generic[S]):
    """The spool's state rebuilt frame by frame."""

    def __init__(self) -> None:
        self.spool_id = ""
        self.next_seq = 0
        self.next_batch = 0
        self.first_seq: int | None = None
        self.records: dict[int, bytes] = {}
        self.record_segment: dict[int, S] = {}
        self.seals: dict[int, tuple[int, ...]] = {}
        self.seal_segment: dict[int, S] = {}
        self.settled: set[int] = set()

    def apply(self, segment: S, kind: int, payload: bytes) -> None:
        """Take one frame of ``segment`` into the state."""
        if kind == HEADER:
            header = json.loads(payload)
            self.spool_id = self.spool_id or str(header["spool_id"])
            if self.first_seq is None:
                self.first_seq = int(header["next_seq"])
            self.next_seq = max(self.next_seq, int(header["next_seq"]))
            self.next_batch = max(self.next_batch, int(header["next_batch"]))
        elif kind == RECORD:
            (seq,) = U64.unpack_from(payload)
            self.records[seq] = payload[U64.size :]
            self.record_segment[seq] = segment
            self.next_seq = max(self.next_seq, seq + 1)
        elif kind in (SEAL, ACK, ABANDON):
            (number,) = U64.unpack_from(payload)
            self.next_batch = max(self.next_batch, number + 1)
            if kind == SEAL:
                self.seals[number] = tuple(seqs_in(payload[U64.size :]))
                self.seal_segment[number] = segment
            else:
                self.seals.pop(number, None)
                if kind == ACK:
                    self.settled.update(seqs_in(payload[U64.size :]))
        elif kind == REJECT:
            self.settled.update(seqs_in(payload))

    def settle(self, recovery: Recovery) -> list[int]:
        """Fill ``recovery``; the numbers of sealed batches that lost a record."""
        recovery.pending = {
            seq: body for seq, body in sorted(self.records.items()) if seq not in self.settled
        }
        first = self.first_seq if self.first_seq is not None else self.next_seq
        present = set(self.records) | self.settled
        recovery.lost_records = sum(1 for seq in range(first, self.next_seq) if seq not in present)
        broken = []
        for number, seqs in sorted(self.seals.items()):
            if all(seq in recovery.pending for seq in seqs):
                recovery.batches.append(SealedBatch(number, seqs))
            elif any(seq in recovery.pending or seq not in self.settled for seq in seqs):
                broken.append(number)
        return broken
