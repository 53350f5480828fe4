"""Who is calling: the principal an authenticated request runs as, and its roles.

A principal is the result of authentication (a certificate or token identity) resolved through
the policy (``auth/policy.py``) into roles and tenants. It knows nothing of transport.

Example:
    >>> p = Principal("spiffe://prod/ns/sim/writer", frozenset({Role.WRITER}),
    ...               frozenset({"acme"}), "mtls")
    >>> p.may(Role.WRITER), p.may(Role.READER), p.may_tenant("acme"), p.tenant_scope()
    (True, False, True, ('acme',))

"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Literal

ALL_TENANTS = "*"

AuthenticatedBy = Literal["mtls", "token", "insecure"]


class Role(StrEnum):
    """What a principal may do; the methods of each are listed in ``auth/methods.py``."""

    WRITER = "writer"  # WriteProvenanceBatch
    READER = "reader"  # queries, drift stats, canary reports, golden reads and comparisons
    CANARY = "canary"  # RunCanary
    CURATOR = "curator"  # create, promote and activate golden datasets
    ADMIN = "admin"  # every role


@dataclass(frozen=True, slots=True)
class Principal:
    """An authenticated caller with the roles and tenants the policy grants it.

    ``tenants`` holds tenant ids, or ``"*"`` for every tenant. ``admin`` implies every role,
    but not every tenant: an admin's tenant data is still limited to its ``tenants`` (an
    admin for all data is granted ``tenants = ["*"]``), so one policy rule covers both.
    """

    id: str
    roles: frozenset[Role]
    tenants: frozenset[str]
    authenticated_by: AuthenticatedBy

    def may(self, role: Role) -> bool:
        """Whether the principal has ``role`` (admins have every role)."""
        return role in self.roles or Role.ADMIN in self.roles

    def may_tenant(self, tenant: str) -> bool:
        """Whether the principal may read or write ``tenant``'s data."""
        return ALL_TENANTS in self.tenants or tenant in self.tenants

    @property
    def all_tenants(self) -> bool:
        """Whether the principal is granted every tenant."""
        return ALL_TENANTS in self.tenants

    def tenant_scope(self) -> tuple[str, ...] | None:
        """The tenant filter a read applies: None for all tenants, else a sorted tuple.

        An empty tuple means no tenant at all: a query under it matches nothing.
        """
        if self.all_tenants:
            return None
        return tuple(sorted(self.tenants))


# The explicit insecure mode (no policy, loopback only unless allowed): every caller is this.
INSECURE_PRINCIPAL = Principal(
    id="insecure",
    roles=frozenset({Role.ADMIN}),
    tenants=frozenset({ALL_TENANTS}),
    authenticated_by="insecure",
)
