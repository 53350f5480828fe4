"""Who is calling, and may they: the one place the server decides (a grpc.aio interceptor).

For every AnalyticsService call (health and reflection are public and pass untouched):

1. **authenticate**: a bearer token or the verified client certificate becomes a
   :class:`~costsim_analytics.auth.principal.Principal` (``auth/authn.py``);
2. **authorize**: the method's role and every tenant the request names
   (``auth/methods.py``: one table, one rule for all RPCs); a batch with one foreign-tenant
   record is refused whole, before any conversion or database work;
3. the principal rides with the call (:data:`PRINCIPAL`, read by the servicer into
   ``Call.principal``), so read handlers limit an unfiltered query to its tenants;
4. **audit**: one JSON line per mutating call and per refusal (``auth/audit.py``), with the
   status code the call ended with; refusals also count in
   ``costsim_auth_failures_total{reason}``.
"""

from __future__ import annotations

from contextvars import ContextVar
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import grpc

from costsim_analytics.api.errors import abort, request_id_of
from costsim_analytics.api.intercepting import Method, WrappingInterceptor, rebuilt, writing
from costsim_analytics.api.metrics import ServiceMetrics, code_name
from costsim_analytics.auth import audit, methods
from costsim_analytics.auth.authn import Authenticator
from costsim_analytics.auth.policy import PolicyStore
from costsim_analytics.auth.principal import Principal
from costsim_analytics.auth.tls import ReloadingTls, identity_from_auth_context
from costsim_analytics.engines.errors import CostsimError
from costsim_analytics.settings import MetricsAuth

# The principal of the call being served (set around the servicer's method by the interceptor).
PRINCIPAL: ContextVar[Principal | None] = ContextVar("costsim_principal", default=None)

if TYPE_CHECKING:  # generic in grpc-stubs only
    _Handler = grpc.RpcMethodHandler[Any, Any]
else:
    _Handler = grpc.RpcMethodHandler

Context = grpc.aio.ServicerContext[Any, Any]


class AuthInterceptor(WrappingInterceptor):
    """Authenticates, authorizes and audits every non-public call (see the module docstring)."""

    def __init__(self, authenticator: Authenticator, metrics: ServiceMetrics) -> None:
        super().__init__()
        self._authenticator = authenticator
        self._metrics = metrics

    def wrap(self, method: Method, handler: _Handler) -> _Handler:
        """``handler``, its behaviour run only for an allowed caller."""
        if methods.is_public(method.full):
            return handler
        if handler.unary_unary is not None:
            return rebuilt(handler, self._unary(method.full, handler.unary_unary))
        if handler.unary_stream is not None:
            behavior = writing(handler.unary_stream)
            if behavior is not None:
                return rebuilt(handler, self._stream(method.full, behavior))
        return handler  # no client-streaming RPC exists; methods.authorize would refuse it

    async def _admit(
        self, method: str, request: object, context: Context
    ) -> tuple[Principal, tuple[str, ...]]:
        """The caller's principal and the tenants the request names; or abort the call."""
        principal: Principal | None = None
        tenants = methods.requested_tenants(method, request)
        try:
            peer = identity_from_auth_context(context.auth_context())
            principal = self._authenticator.authenticate(context.invocation_metadata() or (), peer)
            methods.authorize(principal, method, tenants)
        except CostsimError as exc:
            self._metrics.auth_failures.labels(reason=exc.reason).inc()
            self._audit(method, tenants, context, principal, exc)
            await abort(exc, method, context)
            raise AssertionError("abort_with_status returned") from exc
        # Each call is its own asyncio task with its own context: no reset needed.
        PRINCIPAL.set(principal)
        return principal, tenants

    def _audit(
        self,
        method: str,
        tenants: tuple[str, ...],
        context: Context,
        principal: Principal | None,
        exc: BaseException | None,
    ) -> None:
        audit.audit(
            principal=principal.id if principal else None,
            authenticated_by=principal.authenticated_by if principal else "",
            method=method,
            tenants=tenants,
            request_id=request_id_of(context),
            outcome=code_name(context, exc),
            reason=exc.reason if isinstance(exc, CostsimError) else "",
        )

    def _unary(self, method: str, behavior: Any) -> Any:
        async def call(request: object, context: Context) -> object:
            principal, tenants = await self._admit(method, request, context)
            try:
                response = await behavior(request, context)
            except BaseException as exc:
                self._audit(method, tenants, context, principal, exc)
                raise
            self._audit(method, tenants, context, principal, None)
            return response

        return call

    def _stream(self, method: str, behavior: Any) -> Any:
        """``behavior`` (a writer: ``intercepting.writing``) run once the caller is admitted."""

        async def call(request: object, context: Context) -> None:
            await self._admit(method, request, context)
            await behavior(request, context)

        return call


@dataclass(frozen=True)
class Security:
    """What the server needs to know its callers: built by ``bootstrap.build_security``."""

    authenticator: Authenticator
    tls: ReloadingTls | None = None
    policy: PolicyStore | None = None
    # Which of /metrics, /healthz and /readyz need a reader (COSTSIM_METRICS_AUTH).
    metrics_auth: MetricsAuth = "open"

    def reload(self) -> None:
        """Re-read the policy and the certificates (SIGHUP); a bad file keeps the old one."""
        if self.policy is not None:
            self.policy.reload()
        if self.tls is not None:
            self.tls.reload()
