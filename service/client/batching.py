"""The writers' shared state: the buffer, batching, what a refusal means, metrics and hooks.

Both :class:`~costsim_analytics.client.ProvenanceWriter` (threads) and
:class:`~costsim_analytics.client.AsyncProvenanceWriter` (asyncio) keep their records in a
:class:`Buffer`. It knows nothing of threads or event loops: the writers hold its lock, wait
on their own conditions, and call it. A record's life: ``append`` (into the spool when there
is one, then into the buffer), ``next_batch`` (sealed: its batch number is in the spool before
the batch is first sent), then ``acked`` (the spool forgets it), ``rejected`` (the server
refused it for good: ``rejected.jsonl`` and a hook) or ``returned`` (the server stored
nothing: sealed again).
"""

from __future__ import annotations

import logging
import re
import threading
import time
import uuid
from collections import OrderedDict, deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import Enum

import grpc

from costsim.analytics.v1 import analytics_pb2 as pb
from costsim_analytics.client.errors import MESSAGE_TOO_LARGE, RpcError
from costsim_analytics.client.records import batch_bytes
from costsim_analytics.client.spool import Spool

log = logging.getLogger("costsim_analytics.client.writer")

_RECORD_FIELD = re.compile(r"records\[(\d+)\]")
_AT_MOST = re.compile(r"at most (\d+) records")
MAX_PREFIX_CHARS = 90


@dataclass(frozen=True, slots=True)
class WriterOptions:
    """Batching, memory and timing of a writer.

    Attributes:
        max_batch_records: records per batch (the server's ``COSTSIM_MAX_BATCH``, 1000 by
            default; a writer that is told its batches are too large sends smaller ones).
        max_batch_bytes: bytes per batch (well under the server's message limit).
        max_delay_s: the longest a record waits for its batch to fill before it is sent.
        max_buffer_records: records held (not yet acknowledged) before ``add()`` waits.
        max_buffer_bytes: the same in bytes of encoded records.
        max_in_flight: batches sent at once.
        attempt_timeout_s: the deadline of one attempt to send a batch.
        request_id_prefix: put before every batch's request id (``<prefix><spool id>-<n>``).
        source_id: without a spool, the id in the request ids instead of a random one; with
            the same records sent in the same batches again (one ``add_many`` and ``flush`` per
            batch), a second run's batches are replays of the first's.
        max_json_depth: the server's ``COSTSIM_MAX_JSON_DEPTH``.
    """

    max_batch_records: int = 1000
    max_batch_bytes: int = 4 * 1024 * 1024
    max_delay_s: float = 0.2
    max_buffer_records: int = 20_000
    max_buffer_bytes: int = 64 * 1024 * 1024
    max_in_flight: int = 2
    attempt_timeout_s: float = 30.0
    request_id_prefix: str = ""
    source_id: str = ""
    max_json_depth: int = 32

    def __post_init__(self) -> None:
        if self.max_batch_records < 1 or self.max_in_flight < 1:
            raise ValueError("max_batch_records and max_in_flight must be at least 1")
        if self.max_buffer_records < self.max_batch_records:
            raise ValueError("max_buffer_records must hold at least one full batch")
        # A request id is at most 128 characters: the prefix, 16 of the spool id, '-', a number.
        if len(self.request_id_prefix) + max(0, len(self.source_id) - 16) > MAX_PREFIX_CHARS:
            raise ValueError(
                f"request_id_prefix and source_id must be at most {MAX_PREFIX_CHARS + 16} "
                "characters together"
            )


@dataclass(frozen=True, slots=True)
class BatchInfo:
    """A batch as the hooks see it."""

    number: int
    request_id: str
    records: int
    bytes: int
    attempts: int


@dataclass(frozen=True, slots=True)
class RejectedRecord:
    """A record the server refused for good (also in the spool's ``rejected.jsonl``)."""

    record: pb.ProvenanceRecord
    request_id: str
    error: RpcError


@dataclass(frozen=True, slots=True)
class WriterMetrics:
    """A snapshot of a writer's counters.

    ``queue_depth`` and ``queue_bytes``: records added and not yet acknowledged (buffered,
    sealed or in flight); ``errors``: failed attempts by gRPC code name.
    """

    queue_depth: int
    queue_bytes: int
    in_flight: int
    records_added: int
    records_sent: int
    records_rejected: int
    batches_sent: int
    batches_replayed: int
    retries: int
    errors: dict[str, int]
    spool_bytes: int


class WriterHooks:
    """Callbacks a writer makes; subclass and override what you need (all do nothing here).

    They run on the writer's sender thread (or task) and must be quick; an exception in one
    stops the writer. ``batch_acked`` runs after the server acknowledged a batch and before
    the spool forgets it.
    """

    def batch_acked(self, batch: BatchInfo, replayed: bool) -> None:
        """The server stored ``batch`` (``replayed``: an earlier attempt had already)."""

    def retrying(self, batch: BatchInfo, error: RpcError, delay_s: float) -> None:
        """Sending ``batch`` failed with ``error``; it goes again after ``delay_s``."""

    def rejected(self, rejected: RejectedRecord) -> None:
        """The server refused a record for good."""


class Outcome(Enum):
    """What a failed attempt means for its batch."""

    RETRY = "retry"  # the same batch again, later
    SPLIT = "split"  # nothing stored; too large: smaller batches
    RESEAL = "reseal"  # nothing stored; its request id was taken: a new one
    REJECT = "reject"  # nothing stored; some (or all) records refused for good


def judge(error: RpcError, batch_size: int) -> tuple[Outcome, list[int]]:
    """The outcome of a failed attempt, and the refused records' indexes (REJECT).

    Only an explicit refusal rejects a record: INVALID_ARGUMENT, or PERMISSION_DENIED naming
    ``records[i]``. Everything else (the server down, overloaded, restarting, a token not yet
    valid, an internal error) is retried for as long as the writer runs: its records are safe
    in the buffer and the spool, and the request id makes every retry harmless.
    """
    code = error.code
    if error.reason == "BATCH_TOO_LARGE" or (
        code is grpc.StatusCode.RESOURCE_EXHAUSTED and error.reason == MESSAGE_TOO_LARGE
    ):
        return (Outcome.REJECT, [0]) if batch_size == 1 else (Outcome.SPLIT, [])
    if code is grpc.StatusCode.ALREADY_EXISTS:
        return Outcome.RESEAL, []
    named = sorted(
        {
            int(m.group(1))
            for v in error.violations
            if (m := _RECORD_FIELD.match(v.field)) and int(m.group(1)) < batch_size
        }
    )
    if code is grpc.StatusCode.INVALID_ARGUMENT:
        return Outcome.REJECT, named or list(range(batch_size))
    if code is grpc.StatusCode.PERMISSION_DENIED and named:
        return Outcome.REJECT, named
    return Outcome.RETRY, []


@dataclass(eq=False)
class Batch:
    """A sealed batch: its number is in the spool (when there is one) before it is sent."""

    number: int
    request_id: str
    seqs: list[int]
    bodies: list[bytes]
    nbytes: int
    attempts: int = 0

    def info(self) -> BatchInfo:
        """The batch as the hooks see it."""
        return BatchInfo(self.number, self.request_id, len(self.seqs), self.nbytes, self.attempts)


@dataclass
class _Counters:
    added: int = 0
    sent: int = 0
    rejected: int = 0
    batches: int = 0
    replayed: int = 0
    retries: int = 0
    errors: dict[str, int] = field(default_factory=dict)


class Buffer:
    """Records not yet acknowledged, and the batches they leave in. Not locked itself."""

    def __init__(self, spool: Spool | None, options: WriterOptions) -> None:
        self.spool = spool
        self.options = options
        self.lock = threading.Lock()
        if spool is not None and options.source_id:
            raise ValueError("source_id is the spool's own when there is a spool")
        self.source_id = (
            spool.spool_id if spool is not None else options.source_id or uuid.uuid4().hex[:16]
        )
        self._pending: deque[tuple[int, bytes]] = deque()
        self._pending_bytes = 0
        self._oldest = 0.0
        self._ready: deque[Batch] = deque()
        self._unsettled: OrderedDict[int, int] = OrderedDict()  # seq -> bytes
        self._bytes = 0
        self._next_seq = 0
        self._next_batch = 0
        self._batch_cap = options.max_batch_records
        self.in_flight = 0
        self.flushing = 0
        self.counters = _Counters()
        if spool is not None:
            self._restore(spool)

    def _restore(self, spool: Spool) -> None:
        recovery = spool.recovery
        now = time.monotonic()
        sealed: set[int] = set()
        for sealed_batch in recovery.batches:
            bodies = [recovery.pending[seq] for seq in sealed_batch.seqs]
            sealed.update(sealed_batch.seqs)
            self._ready.append(
                Batch(
                    sealed_batch.number,
                    self.request_id(sealed_batch.number),
                    list(sealed_batch.seqs),
                    bodies,
                    sum(map(batch_bytes, bodies)),
                )
            )
        for seq, body in recovery.pending.items():
            self._unsettled[seq] = len(body)
            self._bytes += len(body)
            if seq not in sealed:
                self._pending.append((seq, body))
                self._pending_bytes += batch_bytes(body)
        self._oldest = now
        self._unsettled = OrderedDict(sorted(self._unsettled.items()))
        if recovery.records:
            log.info(
                "spool %s: %d record(s) to send, %d batch(es) to send again",
                spool.path,
                recovery.records,
                len(recovery.batches),
            )

    def request_id(self, number: int) -> str:
        """The request id of batch ``number``: the same whenever the batch is sent."""
        return f"{self.options.request_id_prefix}{self.source_id}-{number}"

    # --- adding ----------------------------------------------------------------------------

    def has_room(self, records: int, nbytes: int) -> bool:
        """Whether ``records`` more fit (one batch's worth always fits an empty buffer)."""
        if not self._unsettled:
            return True
        return (
            len(self._unsettled) + records <= self.options.max_buffer_records
            and self._bytes + nbytes <= self.options.max_buffer_bytes
        )

    def append(self, bodies: Sequence[bytes], *, sync: bool = True) -> bool:
        """Keep encoded records: in the spool first (when there is one), then here.

        Returns whether a sender must be woken: the first pending record starts the batch's
        delay, and a full batch is due at once; otherwise the senders' timed waits suffice.
        ``sync=False``: the spool's flush is left to the caller (``Spool.flush_through``).
        """
        if self.spool is not None:
            seqs = self.spool.append(bodies, sync=sync)
        else:
            seqs = list(range(self._next_seq, self._next_seq + len(bodies)))
            self._next_seq += len(bodies)
        was_empty = not self._pending
        if was_empty:
            self._oldest = time.monotonic()
        for seq, body in zip(seqs, bodies, strict=True):
            self._pending.append((seq, body))
            self._pending_bytes += batch_bytes(body)
            self._unsettled[seq] = len(body)
            self._bytes += len(body)
        self.counters.added += len(bodies)
        return (
            was_empty
            or len(self._pending) >= self._batch_cap
            or self._pending_bytes >= self.options.max_batch_bytes
        )

    # --- batching --------------------------------------------------------------------------

    def due_in(self, closing: bool) -> float | None:
        """Seconds until the pending records make a batch (0: now), None with nothing pending."""
        if self._ready:
            return 0.0
        if not self._pending:
            return None
        if (
            closing
            or self.flushing
            or len(self._pending) >= self._batch_cap
            or self._pending_bytes >= self.options.max_batch_bytes
        ):
            return 0.0
        return max(0.0, self._oldest + self.options.max_delay_s - time.monotonic())

    def next_batch(self, closing: bool) -> Batch | None:
        """The next batch to send, sealing one from the pending records when it is due."""
        if self._ready:
            batch = self._ready.popleft()
        elif self.due_in(closing) == 0.0:
            batch = self._seal()
        else:
            return None
        self.in_flight += 1
        return batch

    def _seal(self) -> Batch:
        seqs: list[int] = []
        bodies: list[bytes] = []
        size = 0
        while self._pending and len(seqs) < self._batch_cap:
            seq, body = self._pending[0]
            cost = batch_bytes(body)
            if seqs and size + cost > self.options.max_batch_bytes:
                break
            self._pending.popleft()
            self._pending_bytes -= cost
            seqs.append(seq)
            bodies.append(body)
            size += cost
        if self._pending:
            self._oldest = time.monotonic()
        if self.spool is not None:
            number = self.spool.seal(seqs)
        else:
            number, self._next_batch = self._next_batch, self._next_batch + 1
        return Batch(number, self.request_id(number), seqs, bodies, size)

    # --- settling --------------------------------------------------------------------------

    def acked(self, batch: Batch, replayed: bool) -> None:
        """The server stored the batch: the spool and the buffer forget it."""
        if self.spool is not None:
            self.spool.ack(batch.number, batch.seqs)
        self._settle(batch.seqs)
        self.in_flight -= 1
        self.counters.sent += len(batch.seqs)
        self.counters.batches += 1
        self.counters.replayed += int(replayed)

    def returned(self, batch: Batch) -> None:
        """Nothing of the batch was stored: its records go back, to be sealed again first."""
        if self.spool is not None:
            self.spool.abandon(batch.number)
        for seq, body in reversed(list(zip(batch.seqs, batch.bodies, strict=True))):
            self._pending.appendleft((seq, body))
            self._pending_bytes += batch_bytes(body)
        self._oldest = time.monotonic() - self.options.max_delay_s  # due at once
        self.in_flight -= 1

    def shrink(self, batch: Batch, error: RpcError) -> None:
        """The batch was too large: the next ones are smaller (the server's limit, if named)."""
        named = [
            int(match.group(1))
            for violation in error.violations
            if (match := _AT_MOST.search(violation.description))
        ]
        size = named[0] if named and named[0] < len(batch.seqs) else len(batch.seqs) // 2
        self._batch_cap = max(1, min(self._batch_cap, size))
        log.warning(
            "batch %s refused as too large (%s): batches of at most %d records from now on",
            batch.request_id,
            error.reason,
            self._batch_cap,
        )
        self.returned(batch)

    def rejected(
        self, batch: Batch, indexes: Sequence[int], error: RpcError
    ) -> list[RejectedRecord]:
        """Refused records leave for good (``rejected.jsonl``); the others are sealed again."""
        refused = set(indexes)
        why = {
            "request_id": batch.request_id,
            "code": error.code.name,
            "reason": error.reason,
            "message": error.message,
        }
        entries = []
        for i in sorted(refused):
            own = [v for v in error.violations if v.field.startswith(f"records[{i}]")]
            violations = [{"field": v.field, "description": v.description} for v in own]
            entries.append((batch.seqs[i], batch.bodies[i], {**why, "violations": violations}))
        if self.spool is not None:
            self.spool.reject(entries)
        self._settle([seq for seq, _body, _why in entries])
        self.counters.rejected += len(entries)
        keep = [i for i in range(len(batch.seqs)) if i not in refused]
        rest = Batch(
            batch.number,
            batch.request_id,
            [batch.seqs[i] for i in keep],
            [batch.bodies[i] for i in keep],
            0,
        )
        self.returned(rest)
        return [
            RejectedRecord(pb.ProvenanceRecord.FromString(body), batch.request_id, error)
            for _seq, body, _why in entries
        ]

    def _settle(self, seqs: Sequence[int]) -> None:
        for seq in seqs:
            self._bytes -= self._unsettled.pop(seq, 0)

    def failed_attempt(self, error: RpcError) -> None:
        """Count a failed attempt by its code."""
        name = error.code.name
        self.counters.errors[name] = self.counters.errors.get(name, 0) + 1

    # --- state -----------------------------------------------------------------------------

    @property
    def depth(self) -> int:
        """Records not yet settled."""
        return len(self._unsettled)

    def oldest_unsettled(self) -> int | None:
        """The lowest record number not yet settled."""
        return next(iter(self._unsettled), None)

    def last_added(self) -> int:
        """The number the next record will get, minus one."""
        return (self.spool.next_seq if self.spool is not None else self._next_seq) - 1

    def metrics(self) -> WriterMetrics:
        """The counters now."""
        c = self.counters
        return WriterMetrics(
            queue_depth=len(self._unsettled),
            queue_bytes=self._bytes,
            in_flight=self.in_flight,
            records_added=c.added,
            records_sent=c.sent,
            records_rejected=c.rejected,
            batches_sent=c.batches,
            batches_replayed=c.replayed,
            retries=c.retries,
            errors=dict(c.errors),
            spool_bytes=self.spool.size_bytes() if self.spool is not None else 0,
        )
