"""The typed operation registry: each operation key carries its command and result types.

An :class:`Operation` is a name (the seed's ``analytics.canary_reports``) with two type
parameters, so that ``registry.get(OP_CANARY_REPORTS)`` is a
``Handler[ReportQuery, ResultStream[CanaryReport]]`` to the type checker, and a servicer
method that feeds it the wrong command does not type-check.

Example:
    >>> echo: Operation[str, str] = Operation("analytics.echo")
    >>> registry = OperationRegistry()
    >>> registry.register(echo, lambda command, call: command.upper())
    >>> registry.get(echo)("hi", Call())
    'HI'

Cross-cutting concerns (metrics, idempotency, request-id checks, and later the principal and
admission control) are :data:`Middleware`: functions from one handler to another, applied
once by :meth:`OperationRegistry.wrap` in ``bootstrap.py``, in the order written there.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Generic, Never, Protocol, TypeVar, cast

from costsim_analytics.engines.canary.command import RunCanary, RunCanaryResult
from costsim_analytics.engines.canary.explain import ExplainRun, Explanation
from costsim_analytics.engines.drift import DriftStats, DriftStatsQuery
from costsim_analytics.engines.golden.commands import (
    ActivateGoldenDataset,
    CompareGolden,
    CreateGoldenDataset,
    GetGoldenDataset,
    ListGoldenDatasets,
    PromoteCanaryRun,
    StoredVersion,
)
from costsim_analytics.engines.golden.datasets import GoldenDataset
from costsim_analytics.engines.golden.results import GoldenComparison
from costsim_analytics.engines.maintenance import Reconcile, ReconcileResult, UpkeepResult
from costsim_analytics.engines.provenance import (
    ProvenanceQuery,
    ProvenanceRecord,
    WriteBatch,
    WriteBatchResult,
)
from costsim_analytics.engines.reports import CanaryReport, GetReport, ReportQuery
from costsim_analytics.engines.retention import RetentionPolicy, RetentionResult
from costsim_analytics.handlers.call import Call
from costsim_analytics.handlers.streams import ResultStream

C = TypeVar("C")
R = TypeVar("R")
C_contra = TypeVar("C_contra", contravariant=True)
R_co = TypeVar("R_co", covariant=True)
# An operation is only a typed name, so it may be covariant in both (nothing reads a C or R).
OpC = TypeVar("OpC", covariant=True)
OpR = TypeVar("OpR", covariant=True)


class Handler(Protocol[C_contra, R_co]):
    """Runs one operation: a command and the call's context in, a result out."""

    def __call__(self, command: C_contra, call: Call, /) -> R_co:
        """Run the operation (raising the domain errors of ``engines/errors.py``)."""


@dataclass(frozen=True)  # no slots: Operation[C, R](name) sets __orig_class__, frozen ignores it
class Operation(Generic[OpC, OpR]):
    """The key of one operation; its type parameters are its command and result types."""

    name: str


class Middleware(Protocol):
    """Wraps one operation's handler (metrics, idempotency, ...); returns it unchanged to skip."""

    def __call__(self, op: Operation[C, R], handler: Handler[C, R], /) -> Handler[C, R]:
        """The wrapped handler."""


OP_PROVENANCE_BATCH = Operation[WriteBatch, WriteBatchResult]("analytics.provenance_batch")
OP_PROVENANCE_QUERY = Operation[ProvenanceQuery, ResultStream[ProvenanceRecord]](
    "analytics.provenance_query"
)
OP_DRIFT_STATS = Operation[DriftStatsQuery, DriftStats]("analytics.drift_stats")
OP_CANARY_REPORTS = Operation[ReportQuery, ResultStream[CanaryReport]]("analytics.canary_reports")
OP_CANARY_REPORT = Operation[GetReport, CanaryReport]("analytics.canary_report")
OP_CANARY_RUN = Operation[RunCanary, RunCanaryResult]("analytics.canary_run")
OP_CANARY_EXPLAIN = Operation[ExplainRun, Explanation]("analytics.canary_explain")
OP_CANARY_RECONCILE = Operation[Reconcile, ReconcileResult]("analytics.canary_reconcile")
OP_GOLDEN_CREATE = Operation[CreateGoldenDataset, StoredVersion]("analytics.golden_create")
OP_GOLDEN_PROMOTE = Operation[PromoteCanaryRun, StoredVersion]("analytics.golden_promote")
OP_GOLDEN_GET = Operation[GetGoldenDataset, GoldenDataset]("analytics.golden_get")
OP_GOLDEN_LIST = Operation[ListGoldenDatasets, list[GoldenDataset]]("analytics.golden_list")
OP_GOLDEN_ACTIVATE = Operation[ActivateGoldenDataset, GoldenDataset]("analytics.golden_activate")
OP_GOLDEN_COMPARE = Operation[CompareGolden, GoldenComparison]("analytics.golden_compare")
OP_RETENTION = Operation[RetentionPolicy, RetentionResult]("analytics.retention")
OP_PARTITION_UPKEEP = Operation[None, UpkeepResult]("analytics.partition_upkeep")


class OperationRegistry:
    """Maps operations to handlers; an operation is registered once."""

    def __init__(self) -> None:
        # Keyed by name, types erased; get() restores them, since a name is registered once,
        # with a handler of its operation's own types.
        self._handlers: dict[str, tuple[Operation[object, object], Handler[Never, object]]] = {}

    def register(self, op: Operation[C, R], handler: Handler[C, R]) -> None:
        """Register ``handler`` for ``op``.

        Raises:
            ValueError: the operation's name is taken.

        """
        if op.name in self._handlers:
            raise ValueError(f"operation {op.name!r} is already registered")
        self._handlers[op.name] = (op, handler)

    def get(self, op: Operation[C, R]) -> Handler[C, R]:
        """The handler of ``op``.

        Raises:
            KeyError: no such operation.

        """
        try:
            _, handler = self._handlers[op.name]
        except KeyError:
            raise KeyError(f"no handler registered for operation {op.name!r}") from None
        return cast("Handler[C, R]", handler)

    def wrap(self, *middleware: Middleware) -> None:
        """Wrap every handler in ``middleware``, the first given outermost."""
        for name, (op, handler) in self._handlers.items():
            typed = cast("Handler[object, object]", handler)
            for layer in reversed(middleware):
                typed = layer(op, typed)
            self._handlers[name] = (op, typed)

    def __contains__(self, op: object) -> bool:
        return isinstance(op, Operation) and op.name in self._handlers

    def names(self) -> list[str]:
        """Registered operation names, sorted."""
        return sorted(self._handlers)
