"""A query result handed out chunk by chunk while its read-only unit of work stays open."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from costsim_analytics.engines.pagination import (
    Cursor,
    decode_token,
    encode_token,
    filter_fingerprint,
    resolve_page_size,
)
from costsim_analytics.handlers.ports import UnitOfWork, UnitOfWorkFactory

T = TypeVar("T")


class ResultStream(Generic[T]):
    """Chunks of ``(item, page_token)``; :meth:`close` ends the query and the transaction.

    The transport pulls one chunk at a time (from a worker thread) and closes the stream in a
    ``finally``, so a cancelled call closes the database cursor too. The stream knows when
    it has handed out its last chunk (the ``limit``-th item, an empty chunk, or chunks that
    say they are ``exhausted``): :attr:`exhausted` then tells the transport it may close the
    stream at once, while the last messages are still being sent, instead of asking for a
    chunk that cannot come.
    """

    def __init__(
        self,
        uow: UnitOfWork,
        chunks: Iterator[list[T]],
        *,
        kind: str,
        fingerprint: str,
        cursor_of: Callable[[T], Cursor],
        limit: int,
    ) -> None:
        self._uow = uow
        self._chunks = chunks
        self._kind = kind
        self._fingerprint = fingerprint
        self._cursor_of = cursor_of
        self._left = limit
        self._exhausted = False
        self._closed = False
        # A cancelled call may close the stream while a worker thread is still fetching a
        # chunk; the lock keeps the two off the connection at the same time.
        self._lock = threading.Lock()

    @property
    def exhausted(self) -> bool:
        """Whether the last chunk has been handed out (the next one would be empty)."""
        return self._exhausted

    def next_chunk(self) -> list[tuple[T, str]]:
        """The next chunk, empty when the result is exhausted."""
        with self._lock:
            if self._closed or self._exhausted:
                return []
            chunk = next(self._chunks, [])
            self._left -= len(chunk)
            self._exhausted = (
                not chunk or self._left <= 0 or getattr(self._chunks, "exhausted", False)
            )
        kind, fp, cursor_of = self._kind, self._fingerprint, self._cursor_of
        return [(item, encode_token(kind, fp, cursor_of(item))) for item in chunk]

    def close(self) -> None:
        """Close the cursor and end the read-only transaction. Safe to call twice."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            try:
                close = getattr(self._chunks, "close", None)
                if close is not None:
                    close()
            finally:
                self._uow.__exit__(None, None, None)

    def __iter__(self) -> Iterator[tuple[T, str]]:
        """Iterate every item (for in-process callers such as the CLI and tests)."""
        try:
            while chunk := self.next_chunk():
                yield from chunk
        finally:
            self.close()


def open_stream(
    uow_factory: UnitOfWorkFactory,
    *,
    kind: str,
    filters: dict[str, object],
    page_size: int,
    page_token: str,
    max_page_size: int,
    query: Callable[[UnitOfWork, Cursor | None, int], Iterator[list[T]]],
    cursor_of: Callable[[T], Cursor],
) -> ResultStream[T]:
    """Resolve paging, then run ``query`` in a new read-only unit of work kept open as a stream.

    Page size and token are checked before any database work, so their errors come before the
    first message.
    """
    limit = resolve_page_size(page_size, maximum=max_page_size)
    fingerprint = filter_fingerprint(kind, filters)
    after = decode_token(page_token, kind, fingerprint) if page_token else None
    uow = uow_factory(read_only=True).__enter__()
    try:
        chunks = query(uow, after, limit)
    except BaseException:
        uow.__exit__(None, None, None)
        raise
    return ResultStream(
        uow, chunks, kind=kind, fingerprint=fingerprint, cursor_of=cursor_of, limit=limit
    )
