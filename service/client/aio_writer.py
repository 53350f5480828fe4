"""AsyncProvenanceWriter: :class:`~costsim_analytics.client.ProvenanceWriter` for asyncio.

The same guarantees, spool format and options; ``add()``, ``flush()`` and ``close()`` are
coroutines and the batches are sent by tasks of the running loop. Spool writes happen in the
event loop (one ``write()`` per ``add()``, a few microseconds; with ``fsync=True`` also the
disk's flush: prefer ``add_many`` there).

Example:
    >>> async with AsyncAnalyticsClient("costsim.internal:50051") as client:  # doctest: +SKIP
    ...     async with AsyncProvenanceWriter(client, spool="/var/lib/sim/spool") as writer:
    ...         await writer.add(run_id="run-42", variant_slug="v2", source="sandbox", ...)

"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from collections.abc import Iterable, Mapping, Sequence
from types import TracebackType
from typing import Any, Self

import grpc

from costsim.analytics.v1 import analytics_pb2 as pb
from costsim_analytics.client.aio import AsyncAnalyticsClient
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
    FlushTimeoutError,
    WriterClosedError,
    WriterFullError,
    from_grpc,
)
from costsim_analytics.client.records import PreparedRecord, encode_batch, prepare_record
from costsim_analytics.client.retry import RetryPolicy
from costsim_analytics.client.spool import Spool
from costsim_analytics.client.spool_format import Recovery
from costsim_analytics.client.writer import encode_records


class AsyncProvenanceWriter:
    """Buffers, batches and sends provenance records from asyncio code; durable with a spool.

    The arguments are :class:`~costsim_analytics.client.ProvenanceWriter`'s, with an
    :class:`~costsim_analytics.client.AsyncAnalyticsClient`. Use it as ``async with``, or
    ``start()`` it in the loop and ``await close()``.
    """

    def __init__(
        self,
        client: AsyncAnalyticsClient,
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
        self._work: asyncio.Condition | None = None
        self._progress: asyncio.Condition | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._closing = False
        self._stopped = False
        self._closed = False
        self._failure: BaseException | None = None

    def start(self) -> None:
        """Start sending (in the running loop); ``async with`` does it."""
        if self._tasks:
            return
        self._work, self._progress = asyncio.Condition(), asyncio.Condition()
        self._tasks = [
            asyncio.create_task(self._run(), name=f"costsim-writer-{n}")
            for n in range(self.options.max_in_flight)
        ]

    async def __aenter__(self) -> Self:
        self.start()
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    def _conditions(self) -> tuple[asyncio.Condition, asyncio.Condition]:
        if self._work is None or self._progress is None:
            raise WriterClosedError("the writer was not started: use 'async with' or start()")
        return self._work, self._progress

    # --- adding ----------------------------------------------------------------------------

    async def add(
        self, *, block: bool = True, timeout_s: float | None = None, **fields: Any
    ) -> None:
        """Add one record; see :meth:`ProvenanceWriter.add`."""
        body = prepare_record(max_json_depth=self.options.max_json_depth, **fields).body
        await self._add([body], block, timeout_s)

    async def add_many(
        self,
        records: Iterable[PreparedRecord | Mapping[str, Any]],
        *,
        block: bool = True,
        timeout_s: float | None = None,
    ) -> int:
        """Add records (checked all first); see :meth:`ProvenanceWriter.add_many`."""
        bodies = encode_records(records, self.options.max_json_depth)
        step = self.options.max_batch_records
        for start in range(0, len(bodies), step):
            await self._add(bodies[start : start + step], block, timeout_s)
        return len(bodies)

    async def _add(self, bodies: Sequence[bytes], block: bool, timeout_s: float | None) -> None:
        work, progress = self._conditions()
        nbytes = sum(map(len, bodies))
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        self._check_open()
        if not self._buffer.has_room(len(bodies), nbytes):
            async with progress:
                while not self._buffer.has_room(len(bodies), nbytes):
                    remaining = None if deadline is None else deadline - time.monotonic()
                    if not block or (remaining is not None and remaining <= 0):
                        raise WriterFullError(
                            f"the writer holds {self._buffer.depth} records not yet acknowledged"
                        )
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(progress.wait(), remaining)
                    self._check_open()
        if self._buffer.append(bodies):
            async with work:
                work.notify()

    def _check_open(self) -> None:
        if self._failure is not None:
            raise WriterClosedError(f"the writer stopped: {self._failure!r}") from self._failure
        if self._closing or self._closed:
            raise WriterClosedError("the writer is closed")

    # --- sending ---------------------------------------------------------------------------

    async def _run(self) -> None:
        work, progress = self._conditions()
        try:
            while not self._stopped:
                async with work:
                    batch = self._buffer.next_batch(self._closing)
                    while batch is None and not self._stopped:
                        with contextlib.suppress(TimeoutError):
                            await asyncio.wait_for(work.wait(), self._buffer.due_in(self._closing))
                        batch = self._buffer.next_batch(self._closing)
                    if batch is not None and self._buffer.due_in(self._closing) is not None:
                        work.notify()  # another sender takes what is left
                if batch is not None:
                    await self._send(batch)
        except asyncio.CancelledError:
            raise
        except BaseException as exc:
            log.exception("the provenance writer stopped")
            self._failure = exc
            self._stopped = True
            async with progress:
                progress.notify_all()

    async def _send(self, batch: Batch) -> None:
        _work, progress = self._conditions()
        while not self._stopped:
            batch.attempts += 1
            body = encode_batch(batch.bodies, batch.request_id)
            try:
                response: pb.WriteProvenanceBatchResponse = await self.client.send_encoded(
                    body, self.options.attempt_timeout_s
                )
            except grpc.RpcError as exc:
                if await self._failed_attempt(batch, exc):
                    continue
                return
            self.retry.budget.succeeded()
            self.hooks.batch_acked(batch.info(), response.replayed)
            self._buffer.acked(batch, response.replayed)
            async with progress:
                progress.notify_all()
            return

    async def _failed_attempt(self, batch: Batch, exc: grpc.RpcError) -> bool:
        work, progress = self._conditions()
        error = from_grpc(exc)
        outcome, indexes = judge(error, len(batch.seqs))
        rejected: list[RejectedRecord] = []
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
        for condition in (work, progress):
            async with condition:
                condition.notify_all()
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
        await asyncio.sleep(delay)
        return not self._stopped

    # --- flushing and closing --------------------------------------------------------------

    async def flush(self, timeout_s: float | None = None) -> None:
        """Send everything added so far now and wait for it; see :meth:`ProvenanceWriter.flush`."""
        work, progress = self._conditions()
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        target = self._buffer.last_added()
        self._buffer.flushing += 1
        try:
            async with work:
                work.notify_all()
            async with progress:
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
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(progress.wait(), remaining)
        finally:
            self._buffer.flushing -= 1

    async def close(self, timeout_s: float = 30.0) -> None:
        """Send what is left (at most ``timeout_s``), then stop; see ``ProvenanceWriter.close``."""
        if self._closed:
            return
        self._closing = True
        try:
            if self._failure is None and self._tasks:
                await self.flush(timeout_s)
        except FlushTimeoutError as exc:
            if self._spool is None:
                raise
            log.warning("%d record(s) stay in the spool %s", exc.pending, self._spool.path)
        finally:
            self._stopped = True
            for task in self._tasks:
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
            if self._spool is not None:
                self._spool.close()
            self._closed = True
        if self._failure is not None:
            raise WriterClosedError(f"the writer stopped: {self._failure!r}") from self._failure

    # --- state -----------------------------------------------------------------------------

    def metrics(self) -> WriterMetrics:
        """Queue depth, batches sent, retries, records rejected, ..."""
        return self._buffer.metrics()

    @property
    def recovery(self) -> Recovery | None:
        """What opening the spool found, or None without a spool."""
        return self._spool.recovery if self._spool is not None else None

    @property
    def spool(self) -> Spool | None:
        """The open spool (its ``next_seq``, ``size_bytes()``, ...), or None without one."""
        return self._spool

    @property
    def spool_id(self) -> str:
        """The id in every request id of this writer's batches."""
        return self._buffer.source_id
