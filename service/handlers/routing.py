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
is opened before its rows are read, so a replica lost in the middle of a stream ends that
stream (UNAVAILABLE, resumable with the last page token, which is a keyset and so valid on
any server).
"""

from __future__ import annotations

from contextvars import ContextVar
from dataclasses import dataclass
from typing import TypeVar

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

C = TypeVar("C")
R = TypeVar("R")

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
            try:
                return _run(handler, command, call, route)
            except (NotFound, DatabaseUnavailable):
                if not route.served_by_replica:
                    raise
            # A replica had not replayed the row yet, or went away: ask the primary.
            return _run(handler, command, call, Route(replica_allowed=False))

        return routed

    return wrap
