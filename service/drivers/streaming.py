"""Reading a query's rows a chunk at a time, for the streaming RPCs."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, Generic, TypeVar

from sqlalchemy import Connection, CursorResult, Row, Select

from costsim_analytics.drivers.errors import translated

T = TypeVar("T")


class RowChunks(Iterator[list[T]], Generic[T]):
    """Converted rows ``chunk_size`` at a time; ``exhausted`` once the last one is handed out.

    A chunk shorter than ``chunk_size``, or the ``limit``-th row, is the last: the result is
    closed then, without the round trip that would only learn that nothing follows, and
    ``exhausted`` tells the stream it may end its transaction at once.
    """

    def __init__(
        self,
        run: Callable[[], CursorResult[Any]],
        *,
        limit: int,
        chunk_size: int,
        convert: Callable[[Row[Any]], T],
    ) -> None:
        self._run = run
        self._result: CursorResult[Any] | None = None
        self._left = limit
        self._chunk_size = chunk_size
        self._convert = convert
        self.exhausted = False

    def __next__(self) -> list[T]:
        if self.exhausted:
            raise StopIteration
        try:
            with translated():
                if self._result is None:  # the statement runs at the first chunk
                    self._result = self._run()
                part = self._result.fetchmany(min(self._chunk_size, self._left))
        except BaseException:
            self.close()
            raise
        self._left -= len(part)
        if len(part) < self._chunk_size or self._left <= 0:
            self.close()
        if not part:
            raise StopIteration
        convert = self._convert
        return [convert(row) for row in part]

    def close(self) -> None:
        """Close the result (and its server-side cursor). Safe to call twice."""
        self.exhausted = True
        if self._result is not None:
            self._result.close()


def stream_rows(
    conn: Connection,
    stmt: Select[Any],
    *,
    limit: int,
    chunk_size: int,
    convert: Callable[[Row[Any]], T],
) -> RowChunks[T]:
    """Converted rows ``chunk_size`` at a time; the result is closed when the chunks are.

    Results larger than one chunk are read through a server-side cursor (PostgreSQL), so the
    process never holds the whole result and closing the chunks stops the query. A result
    that fits in one chunk is fetched in one round trip instead (DECLARE/FETCH/CLOSE would be
    three). The statement runs when the first chunk is asked for.
    """
    options: dict[str, Any] = {}
    if limit > chunk_size:
        options = {"stream_results": True, "yield_per": chunk_size}
    return RowChunks(
        lambda: conn.execution_options(**options).execute(stmt),
        limit=limit,
        chunk_size=chunk_size,
        convert=convert,
    )
