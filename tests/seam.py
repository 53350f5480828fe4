"""Handlers called the way the server calls them: behind the middleware of ``bootstrap.py``."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from costsim_analytics.bootstrap import IDEMPOTENT
from costsim_analytics.handlers.call import Call
from costsim_analytics.handlers.idempotency import idempotency, request_ids
from costsim_analytics.handlers.ports import UnitOfWorkFactory
from costsim_analytics.handlers.registry import Handler, Operation, OperationRegistry

C = TypeVar("C")
R = TypeVar("R")


def served(
    op: Operation[C, R], handler: Handler[C, R], uow_factory: UnitOfWorkFactory
) -> Callable[[C], R]:
    """``handler`` behind the request-id and idempotency middleware, as one-argument callable."""
    registry = OperationRegistry()
    registry.register(op, handler)
    registry.wrap(request_ids(IDEMPOTENT), idempotency(uow_factory, IDEMPOTENT))
    wrapped = registry.get(op)
    return lambda command: wrapped(command, Call())
