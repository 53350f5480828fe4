"""The operation registry: handlers looked up by operation name.

Example:
    >>> registry = OperationRegistry()
    >>> registry.register("analytics.echo", lambda command: command)
    >>> registry.get("analytics.echo")("hi")
    'hi'

"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

Handler = Callable[[Any], Any]

OP_PROVENANCE_BATCH = "analytics.provenance_batch"
OP_PROVENANCE_QUERY = "analytics.provenance_query"
OP_DRIFT_STATS = "analytics.drift_stats"
OP_CANARY_REPORTS = "analytics.canary_reports"
OP_CANARY_REPORT = "analytics.canary_report"
OP_CANARY_RUN = "analytics.canary_run"
OP_CANARY_RECONCILE = "analytics.canary_reconcile"
OP_GOLDEN_CREATE = "analytics.golden_create"
OP_GOLDEN_PROMOTE = "analytics.golden_promote"
OP_GOLDEN_GET = "analytics.golden_get"
OP_GOLDEN_LIST = "analytics.golden_list"
OP_GOLDEN_ACTIVATE = "analytics.golden_activate"
OP_GOLDEN_COMPARE = "analytics.golden_compare"
OP_RETENTION = "analytics.retention"


class OperationRegistry:
    """Maps operation names to handlers; a name is registered once."""

    def __init__(self) -> None:
        self._handlers: dict[str, Handler] = {}

    def register(self, name: str, handler: Handler) -> None:
        """Register ``handler`` under ``name``.

        Raises:
            ValueError: ``name`` is taken.

        """
        if name in self._handlers:
            raise ValueError(f"operation {name!r} is already registered")
        self._handlers[name] = handler

    def get(self, name: str) -> Handler:
        """The handler of ``name``.

        Raises:
            KeyError: no such operation.

        """
        try:
            return self._handlers[name]
        except KeyError:
            raise KeyError(f"no handler registered for operation {name!r}") from None

    def __contains__(self, name: object) -> bool:
        return name in self._handlers

    def names(self) -> list[str]:
        """Registered operation names, sorted."""
        return sorted(self._handlers)
