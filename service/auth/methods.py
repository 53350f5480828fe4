"""The one table of what each RPC requires, and the authorization decision.

Every AnalyticsService method has an entry (a test walks the service descriptor, so a new RPC
cannot ship unclassified); health and reflection are public; any other method is refused.
:func:`authorize` is the only place a call is allowed or denied.

Example:
    >>> from costsim_analytics.auth.principal import Principal, Role
    >>> writer = Principal("sim", frozenset({Role.WRITER}), frozenset({"acme"}), "token")
    >>> authorize(writer, WRITE, ["acme", "acme"]).role
    <Role.WRITER: 'writer'>

"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Protocol

from costsim_analytics.auth.principal import Principal, Role
from costsim_analytics.engines.errors import FieldViolation, PermissionDenied

SERVICE = "costsim.analytics.v1.AnalyticsService"
# At most this many refused records are listed: the status travels in trailing metadata,
# which clients cap at 8 KiB by default, and a 1,000-record refusal must still arrive.
MAX_VIOLATIONS = 50


class TenantsFrom(Enum):
    """Where a request names the tenants it touches."""

    NONE = "none"  # not per tenant (canary reports, golden datasets)
    RECORDS = "records"  # records[i].tenant_id of a batch
    FILTER = "filter"  # the optional tenant_id filter of a query


@dataclass(frozen=True, slots=True)
class MethodRule:
    """What a method requires; ``role`` None is public (no credentials needed)."""

    role: Role | None
    tenants: TenantsFrom = TenantsFrom.NONE
    mutating: bool = False  # audited on every outcome, not only on denial


def _rpc(name: str) -> str:
    return f"/{SERVICE}/{name}"


WRITE = _rpc("WriteProvenanceBatch")
_PUBLIC = MethodRule(None)

METHODS: dict[str, MethodRule] = {
    WRITE: MethodRule(Role.WRITER, TenantsFrom.RECORDS, mutating=True),
    _rpc("QueryProvenance"): MethodRule(Role.READER, TenantsFrom.FILTER),
    _rpc("GetDriftStats"): MethodRule(Role.READER, TenantsFrom.FILTER),
    _rpc("QueryCanaryReports"): MethodRule(Role.READER),
    _rpc("GetCanaryReport"): MethodRule(Role.READER),
    # Reads a report's artifacts: the same as reading the report.
    _rpc("ExplainCanaryRun"): MethodRule(Role.READER),
    _rpc("RunCanary"): MethodRule(Role.CANARY, mutating=True),
    _rpc("CreateGoldenDataset"): MethodRule(Role.CURATOR, mutating=True),
    _rpc("PromoteCanaryRun"): MethodRule(Role.CURATOR, mutating=True),
    _rpc("GetGoldenDataset"): MethodRule(Role.READER),
    _rpc("ListGoldenDatasets"): MethodRule(Role.READER),
    _rpc("ActivateGoldenDataset"): MethodRule(Role.CURATOR, mutating=True),
    # Runs the models but stores nothing: a read.
    _rpc("CompareGolden"): MethodRule(Role.READER),
    # Probes and `buf curl --list-methods` must work without credentials; they say nothing
    # tenant-specific.
    "/grpc.health.v1.Health/Check": _PUBLIC,
    "/grpc.health.v1.Health/Watch": _PUBLIC,
    "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo": _PUBLIC,
    "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo": _PUBLIC,
}


def rule_for(method: str) -> MethodRule | None:
    """The rule of a full method name (``/package.Service/Method``); None: not classified."""
    return METHODS.get(method)


def is_public(method: str) -> bool:
    """Whether ``method`` needs no credentials."""
    rule = METHODS.get(method)
    return rule is not None and rule.role is None


class _HasTenant(Protocol):
    @property
    def tenant_id(self) -> str: ...


class _Batch(Protocol):
    @property
    def records(self) -> Sequence[_HasTenant]: ...


def requested_tenants(method: str, request: object) -> tuple[str, ...]:
    """The tenant ids a request names, in request order, for :func:`authorize`.

    For a batch, one per record (``records[i].tenant_id``); for a query, its ``tenant_id``
    filter when set. Reads the request by attribute, so this module needs no generated code.
    An empty query filter names no tenant: the handler then limits the query to the
    principal's :meth:`~Principal.tenant_scope`.
    """
    rule = METHODS.get(method)
    if rule is None or rule.tenants is TenantsFrom.NONE:
        return ()
    if rule.tenants is TenantsFrom.RECORDS:
        batch: _Batch = request  # type: ignore[assignment]
        return tuple(record.tenant_id for record in batch.records)
    tenant = getattr(request, "tenant_id", "")
    return (tenant,) if tenant else ()


def _field(rule: MethodRule, index: int) -> str:
    return f"records[{index}].tenant_id" if rule.tenants is TenantsFrom.RECORDS else "tenant_id"


def authorize(principal: Principal, method: str, tenants: Sequence[str] = ()) -> MethodRule:
    """Allow the call or raise; returns the method's rule.

    Args:
        principal: who is calling.
        method: the full method name (``/package.Service/Method``).
        tenants: the tenant ids the request names, from :func:`requested_tenants`.

    Raises:
        PermissionDenied: reason ``METHOD_NOT_ALLOWED`` (metadata ``method``, ``role``) when the
            method is unclassified or the principal lacks its role; ``TENANT_NOT_ALLOWED``
            (metadata ``method``, ``tenant``: the first refused tenant) when a named tenant is
            not granted, with one violation per refused field (``records[3].tenant_id``).
    """
    rule = METHODS.get(method)
    if rule is None:
        # Fail closed: a method nobody classified is nobody's to call.
        raise PermissionDenied(
            f"{method} is not allowed", reason="METHOD_NOT_ALLOWED", metadata={"method": method}
        )
    if rule.role is None:
        return rule
    if not principal.may(rule.role):
        raise PermissionDenied(
            f"{method} needs the {rule.role.value} role",
            reason="METHOD_NOT_ALLOWED",
            metadata={"method": method, "role": rule.role.value},
        )
    # The common case, a batch of granted tenants, is one set operation: no per-record work.
    if principal.all_tenants or principal.tenants.issuperset(tenants):
        return rule
    refused = [(i, t) for i, t in enumerate(tenants) if t not in principal.tenants]
    violations = [
        FieldViolation(_field(rule, i), f"tenant {tenant!r} is not granted to this caller")
        for i, tenant in refused[:MAX_VIOLATIONS]
    ]
    if len(refused) > MAX_VIOLATIONS:
        violations.append(
            FieldViolation("records", f"and {len(refused) - MAX_VIOLATIONS} more refused records")
        )
    first_index, first_tenant = refused[0]
    more = f" (and {len(refused) - 1} more)" if len(refused) > 1 else ""
    raise PermissionDenied(
        f"{_field(rule, first_index)}: tenant {first_tenant!r} is not granted to this caller{more}",
        violations,
        reason="TENANT_NOT_ALLOWED",
        metadata={"method": method, "tenant": first_tenant},
    )
