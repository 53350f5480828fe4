"""Which operations may read from a replica, and the fallback to the primary.

:data:`READS` names them: the streaming queries, the report lookup, drift statistics, the
golden reads (and so the dashboard pages, which run these operations). Everything else stays
on the primary: writes and idempotency keys, canary runs (their lock and their snapshot of
provenance), promotion, comparison and explanation (which pair a report row with its
artifacts, and so must see the row the run just wrote), retention and upkeep.

:func:`route_reads` wraps each of them: while it runs, its read-only units of work connect
through the replicas (``SqlAlchemyUnitOfWorkFactory`` asks :func:`current_route`), and when
an answer from a replica was NOT_FOUND (a replica may not have replayed a row just written)
or the replica dropped the connection, the operation runs once more on the primary. A stream
is opened before its rows are read: one whose replica fails before its first chunk is
reopened on the primary; one that loses its replica later ends UNAVAILABLE, resumable with
its last page token (a keyset, valid on any server).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Generic, TypeVar, cast

from costsim_analytics.engines.errors import DatabaseUnavailable, NotFound
from costsim_analytics.handlers.call import Call
from costsim_analytics.handlers.registry import (
    OP_CANARY_REPORT,
    OP_CANARY_REPORTS,
    OP_DRIFT_STATS,
    OP_GOLDEN_GET,
    OP_GOLDEN_LIST,
    OP_PROVENANCE_QUERY,
    Handler,
    Middleware,
    Operation,
)
from costsim_analytics.handlers.streams import ResultStream

C = TypeVar("C")
R = TypeVar("R")
T = TypeVar("T")

# The operations whose reads may be served by a replica (by operation name).
READS = frozenset(
    op.name
    for op in (
        OP_PROVENANCE_QUERY,
        OP_CANARY_REPORTS,
        OP_CANARY_REPORT,
        OP_DRIFT_STATS,
        OP_GOLDEN_GET,
        OP_GOLDEN_LIST,
    )
)


@dataclass(slots=True)
class Route:
    """Where the running operation's reads may go, and whether a replica answered one."""

    replica_allowed: bool
    served_by_replica: bool = False


_ROUTE: ContextVar[Route | None] = ContextVar("costsim_read_route", default=None)


def current_route() -> Route | None:
    """The route of the operation this thread runs; None: not a routed operation."""
    return _ROUTE.get()


def _run(handler: Handler[C, R], command: C, call: Call, route: Route) -> R:
    token = _ROUTE.set(route)
    try:
        return handler(command, call)
    finally:
        _ROUTE.reset(token)


def route_reads(reads: frozenset[str] = READS) -> Middleware:
    """Middleware: the operations in ``reads`` read from a replica, else from the primary."""

    def wrap(op: Operation[C, R], handler: Handler[C, R]) -> Handler[C, R]:
        if op.name not in reads:
            return handler

        def routed(command: C, call: Call, /) -> R:
            route = Route(replica_allowed=True)

            def on_primary() -> R:
                return _run(handler, command, call, Route(replica_allowed=False))

            try:
                result = _run(handler, command, call, route)
            except (NotFound, DatabaseUnavailable):
                if not route.served_by_replica:
                    raise
                # A replica had not replayed the row yet, or went away: ask the primary.
                return on_primary()
            if route.served_by_replica and isinstance(result, ResultStream):
                return cast("R", _ReopeningStream(result, on_primary))
            return result

        return routed

    return wrap


class _ReopeningStream(Generic[T]):
    """A stream opened on a replica that reopens on the primary if the replica fails first.

    Only before its first chunk: once items are out, the caller resumes with its last page
    token instead (the stream ends UNAVAILABLE), so no item is ever sent twice.
    """

    def __init__(self, stream: ResultStream[T], reopen: Callable[[], object]) -> None:
        self._stream = stream
        self._reopen = reopen
        self._started = False
        self._closed = False
        # A cancelled call closes the stream from another thread, maybe while it reopens.
        self._lock = threading.Lock()

    @property
    def exhausted(self) -> bool:
        """Whether the stream in use has handed out its last chunk."""
        return self._stream.exhausted

    def next_chunk(self) -> list[tuple[T, str]]:
        """The next chunk (the first one from the primary if the replica failed it)."""
        if self._started:
            return self._stream.next_chunk()
        try:
            chunk = self._stream.next_chunk()
        except DatabaseUnavailable:
            self._stream.close()
            if self._closed:
                return []
            fresh = cast("ResultStream[T]", self._reopen())
            with self._lock:
                if self._closed:
                    fresh.close()
                    return []
                self._stream = fresh
            chunk = fresh.next_chunk()
        self._started = True
        return chunk

    def close(self) -> None:
        """Close the stream in use. Safe to call twice."""
        with self._lock:
            self._closed = True
            stream = self._stream
        stream.close()

    def __iter__(self) -> Iterator[tuple[T, str]]:
        """Iterate every item (for in-process callers)."""
        try:
            while chunk := self.next_chunk():
                yield from chunk
        finally:
            self.close()
