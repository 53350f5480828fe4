"""What every handler receives beside its command: the call's context, and the clock.

Example:
    >>> Call().claim is None
    True

"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from costsim_analytics.auth.principal import Principal

if TYPE_CHECKING:
    from costsim_analytics.handlers.idempotency import Claim

Clock = Callable[[], datetime]


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
    """

    principal: Principal | None = None
    claim: Claim | None = None

    def tenant_scope(self) -> tuple[str, ...] | None:
        """The tenants this call may read (None: all)."""
        return None if self.principal is None else self.principal.tenant_scope()
