"""Reading a query's rows a chunk at a time, for the streaming RPCs."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, TypeVar

from sqlalchemy import Connection, Row, Select

from costsim_analytics.drivers.errors import translated

T = TypeVar("T")


def stream_rows(
    conn: Connection,
    stmt: Select[Any],
    *,
    limit: int,
    chunk_size: int,
    convert: Callable[[Row[Any]], T],
) -> Iterator[list[T]]:
    """Yield converted rows ``chunk_size`` at a time; the result is closed when the generator is.

    Results larger than one chunk are read through a server-side cursor (PostgreSQL), so the
    process never holds the whole result and closing the generator stops the query. A result
    that fits in one chunk is fetched in one round trip instead (DECLARE/FETCH/CLOSE would be
    three).
    """
    options: dict[str, Any] = {}
    if limit > chunk_size:
        options = {"stream_results": True, "yield_per": chunk_size}
    with translated():
        result = conn.execution_options(**options).execute(stmt)
    try:
        while True:
            with translated():
                part = result.fetchmany(chunk_size)
            if not part:
                return
            yield [convert(row) for row in part]
    finally:
        result.close()
