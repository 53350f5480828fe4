"""ProvenanceWriter: a durable, batching writer of provenance records (threads).

Once ``add()`` has returned, the record reaches the database exactly once: it is checked by
the server's rules (a bad record fails in ``add()``), written to the spool, sent in a batch
whose request id comes from the spool, retried until the server acknowledges it, and only
then forgotten. A writer opened on the same spool after a crash sends what is left, with the
same request ids, so a batch the server had already stored is answered ``replayed`` and not
stored again.

Example:
    >>> client = AnalyticsClient("costsim.internal:50051", token_file="token")  # doctest: +SKIP
    >>> with ProvenanceWriter(client, spool="/var/lib/sim/spool") as writer:  # doctest: +SKIP
    ...     writer.add(run_id="run-42", tenant_id="acme", variant_slug="v2", source="sandbox",
    ...                v1_cost=120.0, v2_cost=131.5, payload={"input": {...}, "output": {...}})

"""

from __future__ import annotations

import atexit
import dataclasses
import threading
import time
import weakref
from collections.abc import Iterable, Mapping, Sequence
from types import TracebackType
from typing import Any, Self

import grpc

from costsim.analytics.v1 import analytics_pb2 as pb
from costsim_analytics.client.batching import (
    Batch,
    Buffer,
    Outcome,
    RejectedRecord,
    WriterHooks,
    WriterMetrics,
    WriterOptions,
    judge,
    log,
)
from costsim_analytics.client.channel import StrPath
from costsim_analytics.client.errors import (
    ClientError,
    FlushTimeoutError,
    SpoolError,
    WriterClosedError,
    WriterFullError,
    from_grpc,
)
from costsim_analytics.client.records import PreparedRecord, encode_batch, prepare_record
from costsim_analytics.client.retry import RetryPolicy
from costsim_analytics.client.spool import Spool
from costsim_analytics.client.spool_format import Recovery
from costsim_analytics.client.sync import AnalyticsClient

_POLL_S = 0.05
# At exit a writer nobody closed gets this long to send what it holds (like logging.shutdown).
EXIT_TIMEOUT_S = 10.0
_open_writers: weakref.WeakSet[ProvenanceWriter] = weakref.WeakSet()
_exit_hook: list[bool] = []


def _close_at_exit() -> None:
    for writer in list(_open_writers):
        log.warning("a ProvenanceWriter was not closed; closing it at exit")
        try:
            writer.close(timeout_s=EXIT_TIMEOUT_S)
        except ClientError as exc:  # nobody is left to raise to: say what is lost
            log.error("closing a ProvenanceWriter at exit: %s", exc)


def encode_records(
    records: Iterable[PreparedRecord | Mapping[str, Any]], max_json_depth: int
) -> list[bytes]:
    """Every record checked and encoded (the first bad one raises ``InvalidRecordError``)."""
    return [
        r.body
        if isinstance(r, PreparedRecord)
        else prepare_record(max_json_depth=max_json_depth, **r).body
        for r in records
    ]


class ProvenanceWriter:
    """Buffers, batches and sends provenance records; durable with a spool.

    Args:
        client: the client to send with (the writer does not close it).
        spool: a directory for the durable spool; None keeps records in memory only (a crash
            loses what was not yet acknowledged).
        fsync: flush every spool write to the disk before ``add()`` returns (survives a power
            loss, not only the process dying; slower).
        options: batching and memory bounds; keyword arguments override single fields
            (``max_delay_s=1.0``).
        hooks: callbacks on acknowledged batches, retries and rejected records.
        retry: backoff between attempts (default: the client's policy). The writer never gives
            up on a batch while it runs; the budget only slows it down.
        **overrides: fields of :class:`WriterOptions`.
    """

    def __init__(
        self,
        client: AnalyticsClient,
        *,
        spool: StrPath | None = None,
        fsync: bool = False,
        options: WriterOptions | None = None,
        hooks: WriterHooks | None = None,
        retry: RetryPolicy | None = None,
        **overrides: Any,
    ) -> None:
        self.options = dataclasses.replace(options or WriterOptions(), **overrides)
        self.client = client
        self.hooks = hooks or WriterHooks()
        self.retry = retry or client.retry
        if spool is not None and self.options.source_id:
            raise ValueError("source_id is the spool's own when there is a spool")
        self._spool = Spool.open(spool, fsync=fsync) if spool is not None else None
        self._buffer = Buffer(self._spool, self.options)
        self._lock = self._buffer.lock
        self._work = threading.Condition(self._lock)
        self._progress = threading.Condition(self._lock)
        self._closing = False
        self._stopped = threading.Event()
        self._closed = False
        self._failure: BaseException | None = None
        self._threads = [
            threading.Thread(target=self._run, name=f"costsim-writer-{n}", daemon=True)
            for n in range(self.options.max_in_flight)
        ]
        for thread in self._threads:
            thread.start()
        _open_writers.add(self)
        if not _exit_hook:
            atexit.register(_close_at_exit)
            _exit_hook.append(True)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # --- adding ----------------------------------------------------------------------------

    def add(self, *, block: bool = True, timeout_s: float | None = None, **fields: Any) -> None:
        """Add one record (the arguments of :func:`~costsim_analytics.client.prepare_record`).

        Returns once the record is in the spool (with one) or the buffer. When the buffer is
        full it waits for room (``block``, at most ``timeout_s``), or raises at once.

        Raises:
            InvalidRecordError: the server's rules refuse the record; nothing was added.
            WriterFullError: no room, and not blocking (or ``timeout_s`` ran out).
            WriterClosedError: the writer is closed or failed.
            SpoolError: the spool cannot be written; the record was not added.
        """
        body = prepare_record(max_json_depth=self.options.max_json_depth, **fields).body
        self._add([body], block, timeout_s)

    def add_many(
        self,
        records: Iterable[PreparedRecord | Mapping[str, Any]],
        *,
        block: bool = True,
        timeout_s: float | None = None,
    ) -> int:
        """Add records (checked all first: one bad record adds none); how many were added.

        The spool takes them a batch at a time, with one write each.
        """
        bodies = encode_records(records, self.options.max_json_depth)
        step = self.options.max_batch_records
        for start in range(0, len(bodies), step):
            self._add(bodies[start : start + step], block, timeout_s)
        return len(bodies)

    def _add(self, bodies: Sequence[bytes], block: bool, timeout_s: float | None) -> None:
        nbytes = sum(map(len, bodies))
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        # With fsync the records are flushed after the lock is let go, so that the add()
        # calls of several threads share one flush (Spool.flush_through).
        spool = self._spool if self._spool is not None and self._spool.fsync else None
        with self._lock:
            self._check_open()
            while not self._buffer.has_room(len(bodies), nbytes):
                remaining = None if deadline is None else deadline - time.monotonic()
                if not block or (remaining is not None and remaining <= 0):
                    raise WriterFullError(
                        f"the writer holds {self._buffer.depth} records not yet acknowledged"
                    )
                self._progress.wait(remaining)
                self._check_open()
            if self._buffer.append(bodies, sync=spool is None):
                self._work.notify()
            mark = spool.written if spool is not None else 0
        if spool is not None:
            try:
                spool.flush_through(mark)
            except SpoolError as exc:
                # Written but perhaps not on the disk, and perhaps sent already: nothing more
                # can be promised of this spool, so the writer stops (add() raises).
                with self._lock:
                    self._failure = exc
                    self._stopped.set()
                    self._progress.notify_all()
                    self._work.notify_all()
                raise

    def _check_open(self) -> None:
        if self._failure is not None:
            raise WriterClosedError(f"the writer stopped: {self._failure!r}") from self._failure
        if self._closing or self._closed:
            raise WriterClosedError("the writer is closed")

    # --- sending ---------------------------------------------------------------------------

    def _run(self) -> None:
        try:
            while True:
                with self._lock:
                    while True:
                        if self._stopped.is_set():
                            return
                        batch = self._buffer.next_batch(self._closing)
                        if batch is not None:
                            if self._buffer.due_in(self._closing) is not None:
                                self._work.notify()  # another sender takes what is left
                            break
                        self._work.wait(self._buffer.due_in(self._closing))
                self._send(batch)
        except BaseException as exc:
            log.exception("the provenance writer stopped")
            with self._lock:
                self._failure = exc
                self._stopped.set()
                self._progress.notify_all()
                self._work.notify_all()

    def _send(self, batch: Batch) -> None:
        while True:
            batch.attempts += 1
            body = encode_batch(batch.bodies, batch.request_id)
            future = self.client.send_encoded(body, self.options.attempt_timeout_s)
            try:
                response = self._result(future)
            except grpc.RpcError as exc:
                if self._failed_attempt(batch, exc):
                    continue
                return
            if response is None:  # stopped: the batch stays in the spool
                return
            self.retry.budget.succeeded()
            self.hooks.batch_acked(batch.info(), response.replayed)
            with self._lock:
                self._buffer.acked(batch, response.replayed)
                self._progress.notify_all()
            return

    def _result(
        self, future: grpc.Future[pb.WriteProvenanceBatchResponse]
    ) -> pb.WriteProvenanceBatchResponse | None:
        while True:
            try:
                response: pb.WriteProvenanceBatchResponse = future.result(timeout=_POLL_S)
                return response
            except grpc.FutureTimeoutError:
                if self._stopped.is_set():
                    future.cancel()
                    return None

    def _failed_attempt(self, batch: Batch, exc: grpc.RpcError) -> bool:
        """Deal with a failed attempt; whether to send the same batch again."""
        error = from_grpc(exc)
        outcome, indexes = judge(error, len(batch.seqs))
        rejected: list[RejectedRecord] = []
        with self._lock:
            self._buffer.failed_attempt(error)
            if outcome is Outcome.RETRY:
                self._buffer.counters.retries += 1
            elif outcome is Outcome.SPLIT:
                self._buffer.shrink(batch, error)
            elif outcome is Outcome.RESEAL:
                log.warning("batch %s: %s; sealed again", batch.request_id, error)
                self._buffer.returned(batch)
            else:
                rejected = self._buffer.rejected(batch, indexes, error)
            self._progress.notify_all()
            self._work.notify_all()
        for record in rejected:
            log.warning("record %s refused: %s", record.record.run_id, error)
            self.hooks.rejected(record)
        if outcome is not Outcome.RETRY:
            return False
        allowed = self.retry.budget.allow_retry()
        delay = self.retry.delay_s(error, batch.attempts) if allowed else self.retry.max_backoff_s
        level = log.warning if batch.attempts in (1, 10) or batch.attempts % 100 == 0 else log.debug
        level(
            "batch %s, attempt %d: %s; again in %.2f s",
            batch.request_id,
            batch.attempts,
            error,
            delay,
        )
        self.hooks.retrying(batch.info(), error, delay)
        return not self._stopped.wait(delay)

    # --- flushing and closing --------------------------------------------------------------

    def flush(self, timeout_s: float | None = None) -> None:
        """Send every record added so far now, and wait until the server has them all.

        Raises:
            FlushTimeoutError: ``timeout_s`` ran out first (they stay buffered, or spooled).
            WriterClosedError: the writer failed.
        """
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        with self._lock:
            target = self._buffer.last_added()
            self._buffer.flushing += 1
            self._work.notify_all()
            try:
                while (oldest := self._buffer.oldest_unsettled()) is not None and oldest <= target:
                    if self._failure is not None:
                        raise WriterClosedError(
                            f"the writer stopped: {self._failure!r}"
                        ) from self._failure
                    remaining = None if deadline is None else deadline - time.monotonic()
                    if remaining is not None and remaining <= 0:
                        raise FlushTimeoutError(
                            f"{self._buffer.depth} records not acknowledged in time",
                            self._buffer.depth,
                        )
                    if self._stopped.is_set():
                        raise WriterClosedError("the writer is closed")
                    self._progress.wait(remaining)
            finally:
                self._buffer.flushing -= 1

    def close(self, timeout_s: float = 30.0) -> None:
        """Stop taking records, send what is left (for at most ``timeout_s``), stop.

        With a spool, records still unacknowledged then stay in it for the next writer (a
        warning says how many). Without one they would be lost: that raises.

        Raises:
            FlushTimeoutError: without a spool, records were left unsent.
            WriterClosedError: the writer had failed (the cause attached).
        """
        with self._lock:
            if self._closed:
                return
            self._closing = True
            self._work.notify_all()
        try:
            if self._failure is None:
                self.flush(timeout_s)
        except FlushTimeoutError as exc:
            if self._spool is None:
                raise
            log.warning("%d record(s) stay in the spool %s", exc.pending, self._spool.path)
        finally:
            with self._lock:
                self._stopped.set()
                self._work.notify_all()
                self._progress.notify_all()
            for thread in self._threads:
                thread.join(self.options.attempt_timeout_s)
            if self._spool is not None:
                self._spool.close()
            self._closed = True
            _open_writers.discard(self)
        if self._failure is not None:
            raise WriterClosedError(f"the writer stopped: {self._failure!r}") from self._failure

    # --- state -----------------------------------------------------------------------------

    def metrics(self) -> WriterMetrics:
        """Queue depth, batches sent, retries, records rejected, ..."""
        with self._lock:
            return self._buffer.metrics()

    @property
    def recovery(self) -> Recovery | None:
        """What opening the spool found (records left, damage), or None without a spool."""
        return self._spool.recovery if self._spool is not None else None

    @property
    def spool(self) -> Spool | None:
        """The open spool (its ``next_seq``, ``size_bytes()``, ...), or None without one."""
        return self._spool

    @property
    def spool_id(self) -> str:
        """The id in every request id of this writer's batches."""
        return self._buffer.source_id
