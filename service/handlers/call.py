"""What every handler receives beside its command: the call's context, and the clock.

Example:
    >>> Call().claim is None
    True

"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from costsim_analytics.auth.principal import Principal
from costsim_analytics.engines.errors import DeadlineExceeded

if TYPE_CHECKING:
    from costsim_analytics.handlers.idempotency import Claim

Clock = Callable[[], datetime]

# The deadline of the call a worker thread is running (``time.monotonic()`` seconds), for the
# unit of work: it bounds each PostgreSQL statement by the time the call has left.
_DEADLINE: ContextVar[float | None] = ContextVar("costsim_deadline", default=None)


@contextmanager
def deadline_scope(deadline: float | None) -> Iterator[None]:
    """Run the block as the work of a call with ``deadline``."""
    token = _DEADLINE.set(deadline)
    try:
        yield
    finally:
        _DEADLINE.reset(token)


def current_deadline() -> float | None:
    """The deadline of the call this thread works for (None: none, or not in a call)."""
    return _DEADLINE.get()


def utc_now() -> datetime:
    """The server clock (the one every handler uses unless a test passes its own)."""
    return datetime.now(UTC)


@dataclass(frozen=True, slots=True)
class Call:
    """One call's context, filled by the transport and by the middleware.

    Attributes:
        principal: the authenticated caller (set by the transport); None for in-process
            callers (the CLI's local commands, tests), which the server never produces.
        claim: the idempotency key the handler must take in its write transaction; set by
            the idempotency middleware when the command carries a ``request_id``.
        deadline: when the caller stops waiting (``time.monotonic()`` seconds); None: never.
            Long handlers call :meth:`check_deadline` between their stages.
    """

    principal: Principal | None = None
    claim: Claim | None = None
    deadline: float | None = None

    def check_deadline(self, doing: str) -> None:
        """Give up when the deadline has passed (before ``doing``, a stage of the work).

        Raises:
            DeadlineExceeded: the caller has stopped waiting; nothing of ``doing`` was done.
        """
        if self.deadline is not None and time.monotonic() >= self.deadline:
            raise DeadlineExceeded(f"the call's deadline passed before {doing}")

    def tenant_scope(self) -> tuple[str, ...] | None:
        """The tenants this call may read (None: all)."""
        return None if self.principal is None else self.principal.tenant_scope()
