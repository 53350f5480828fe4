"""Idempotent claim and replay: one implementation for every idempotent operation.

Applied as middleware in ``bootstrap.py`` to the operations listed in a :class:`ReplayTable`.
For a command with a ``request_id``:

1. A read-only look-up of the key. Answered before with the same digest: the earlier answer
   again, marked replayed. Used by a different request: :class:`RequestIdReused`.
2. Otherwise the handler runs with ``call.claim`` set. Inside its write transaction it calls
   :meth:`Claim.take` before the work and :meth:`Claim.complete` after it, so the key and the
   work commit together or not at all.
3. A concurrent retry that took the key first makes ``take`` wait for that transaction and
   then raise :class:`ClaimTaken`; the middleware answers as in 1.

The digest is computed only when needed (a key seen before, or the handler taking it after
its own validation), so a first attempt pays for it once. A digest formula can change: the
new one's digests start with a version tag (``v2...``), and a stored digest without it is
compared with the operation's ``legacy_digest``, so keys stored before still replay.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any, Generic, TypeVar, cast

from costsim_analytics.engines.errors import RequestIdReused
from costsim_analytics.engines.idempotency import validate_request_id
from costsim_analytics.handlers.call import Call
from costsim_analytics.handlers.ports import UnitOfWork, UnitOfWorkFactory
from costsim_analytics.handlers.registry import Handler, Middleware, Operation

C = TypeVar("C")
R = TypeVar("R")


class ClaimTaken(Exception):
    """Another call holds this key (raised by :class:`Claim`, caught by the middleware)."""


@dataclass(frozen=True, slots=True)
class Claim:
    """An idempotency key a handler takes in its own write transaction."""

    operation: str
    request_id: str
    digest: Callable[[], str]
    legacy_digest: Callable[[], str] | None = None

    def matches(self, stored_hash: str) -> bool:
        """Whether a stored digest is this request's (of the current or the legacy formula)."""
        current = self.digest()
        if stored_hash == current:
            return True
        # Untagged: a digest of the formula before the current one (64 hex digits).
        legacy = self.legacy_digest
        return legacy is not None and not _is_tagged(stored_hash) and stored_hash == legacy()

    def take(self, uow: UnitOfWork, now: datetime) -> None:
        """Claim the key in ``uow``'s transaction, or raise :class:`ClaimTaken`."""
        if uow.idempotency.claim(self.operation, self.request_id, self.digest(), now) is not None:
            raise ClaimTaken(self.request_id)

    def complete(self, uow: UnitOfWork, response: dict[str, Any]) -> None:
        """Store the answer under the taken key (same transaction as the work)."""
        uow.idempotency.complete(self.operation, self.request_id, response)

    def check_free(self, uow: UnitOfWork) -> None:
        """Raise :class:`ClaimTaken` when another call has answered this key meanwhile."""
        if uow.idempotency.get(self.operation, self.request_id) is not None:
            raise ClaimTaken(self.request_id)


@dataclass(frozen=True, slots=True)
class Replay(Generic[C, R]):
    """How one operation is made idempotent: its key, its digest, its replayed answer."""

    request_id: Callable[[C], str]
    digest: Callable[[C], str]
    replay: Callable[[UnitOfWork, Mapping[str, Any]], R]
    # The formula whose digests carry no version tag, when ``digest`` is a newer one.
    legacy_digest: Callable[[C], str] | None = None


def _is_tagged(digest: str) -> bool:
    """A versioned digest (``v2...``); the first formula's are 64 lowercase hex digits."""
    return digest[:1] == "v"


class ReplayTable:
    """The idempotent operations and their :class:`Replay` specs."""

    def __init__(self) -> None:
        self._specs: dict[str, object] = {}

    def add(self, op: Operation[C, R], spec: Replay[C, R]) -> ReplayTable:
        """Make ``op`` idempotent by ``spec``; returns the table for chaining."""
        self._specs[op.name] = spec
        return self

    def get(self, op: Operation[C, R]) -> Replay[C, R] | None:
        """The spec of ``op``, or None when it is not idempotent."""
        return cast("Replay[C, R] | None", self._specs.get(op.name))

    def __contains__(self, op: object) -> bool:
        return isinstance(op, Operation) and op.name in self._specs


def request_ids(table: ReplayTable) -> Middleware:
    """Middleware: the one request-id rule, checked before anything else of an idempotent call."""

    def wrap(op: Operation[C, R], handler: Handler[C, R]) -> Handler[C, R]:
        spec = table.get(op)
        if spec is None:
            return handler
        key = spec.request_id

        def checked(command: C, call: Call, /) -> R:
            validate_request_id(key(command))
            return handler(command, call)

        return checked

    return wrap


def idempotency(uow_factory: UnitOfWorkFactory, table: ReplayTable) -> Middleware:
    """Middleware: claim and replay for the operations in ``table``."""

    def wrap(op: Operation[C, R], handler: Handler[C, R]) -> Handler[C, R]:
        spec = table.get(op)
        return handler if spec is None else _Idempotent(op.name, spec, handler, uow_factory)

    return wrap


@dataclass(frozen=True, slots=True)
class _Idempotent(Generic[C, R]):
    operation: str
    spec: Replay[C, R]
    handler: Handler[C, R]
    uow_factory: UnitOfWorkFactory

    def __call__(self, command: C, call: Call, /) -> R:
        request_id = self.spec.request_id(command)
        if not request_id:
            return self.handler(command, call)
        legacy = self.spec.legacy_digest
        claim = Claim(
            self.operation,
            request_id,
            functools.cache(lambda: self.spec.digest(command)),
            None if legacy is None else functools.cache(lambda: legacy(command)),
        )
        try:
            earlier = self._earlier(claim)
        except ValueError:
            # The content cannot even be digested (the handler's validation names the field).
            earlier = None
        if earlier is not None:
            return earlier
        try:
            return self.handler(command, replace(call, claim=claim))
        except ClaimTaken:
            earlier = self._earlier(claim)
            if earlier is None:
                raise RequestIdReused(
                    f"request_id {request_id!r} is held by another request"
                ) from None
            return earlier

    def _earlier(self, claim: Claim) -> R | None:
        with self.uow_factory(read_only=True) as uow:
            stored = uow.idempotency.get(claim.operation, claim.request_id)
            if stored is None:
                return None
            if not claim.matches(stored.request_hash) or stored.response is None:
                raise RequestIdReused(
                    f"request_id {claim.request_id!r} was used for a different request"
                )
            return self.spec.replay(uow, stored.response)
