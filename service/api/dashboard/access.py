"""Who may see the side port's pages: the dashboard's authentication, sign-in and sign-out.

The same :class:`~costsim_analytics.auth.authn.Authenticator` as the gRPC port decides, from

1. an ``Authorization: Bearer <JWT>`` header, else
2. the ``costsim_session`` cookie (a token the browser posted once to ``/login``), else
3. the verified client certificate of the HTTPS connection.

A present token must verify (a bad one is refused, never skipped for the certificate). Every
dashboard page needs the ``reader`` role (``admin`` has it); ``/metrics`` and the probes
follow ``COSTSIM_METRICS_AUTH`` (``open``, ``metrics``, ``all``). In the insecure mode nothing
is checked and ``/login`` does not exist.

A refusal is 401 (no usable credentials; pages link to ``/login``) or 403 (known, but not a
reader), by the one error table (``api/errors.py``); it counts in
``costsim_auth_failures_total{reason}`` and is one audit line whose method is the route
(``GET /reports/{run_id}``) and whose outcome is ``UNAUTHENTICATED`` or ``PERMISSION_DENIED``.

The cookie is the token itself, ``HttpOnly`` (no script can read it), ``SameSite=Strict``
(never sent on a cross-site request, so no other site can use it) and ``Secure`` over HTTPS,
without ``Max-Age`` (it ends with the browser session; an expired token is refused and the
cookie cleared). A sign-in post whose ``Origin`` is another site is refused (login CSRF).
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from urllib.parse import parse_qs, urlsplit

from costsim_analytics.api.dashboard.httpserver import Request, Response, plain
from costsim_analytics.api.dashboard.pages import error_page, login_page, sign_in_required_page
from costsim_analytics.api.errors import http_status_of
from costsim_analytics.api.metrics import ServiceMetrics
from costsim_analytics.auth import audit
from costsim_analytics.auth.authn import Authenticator
from costsim_analytics.auth.principal import Principal, Role
from costsim_analytics.auth.tokens import invalid
from costsim_analytics.engines.errors import CostsimError, PermissionDenied, Unauthenticated
from costsim_analytics.settings import MetricsAuth

SESSION_COOKIE = "costsim_session"
LOGIN = "/login"
LOGOUT = "/logout"
FORM_TYPE = "application/x-www-form-urlencoded"
PAGE_ROUTES = frozenset({"/", "/reports/{run_id}", "/golden"})
PROBE_ROUTES = frozenset({"/healthz", "/readyz"})
METRICS_ROUTE = "/metrics"
MAX_REQUEST_ID = 128


def session_cookie(request: Request) -> str | None:
    """The ``costsim_session`` cookie's value; None when there is none.

    Raises:
        Unauthenticated: ``TOKEN_INVALID`` when several different values are sent (a cookie
            planted beside ours must not choose which token counts).
    """
    values = set()
    for header in request.header_values("cookie"):
        for pair in header.split(";"):
            name, eq, value = pair.strip().partition("=")
            if eq and name == SESSION_COOKIE and value:
                values.add(value.strip('"'))
    if len(values) > 1:
        raise invalid()
    return values.pop() if values else None


def _html(status: int, text: str, headers: tuple[tuple[str, str], ...] = ()) -> Response:
    return Response(status, text.encode("utf-8"), headers=headers)


class Access:
    """The side port's authentication and its sign-in routes (see the module docstring)."""

    def __init__(
        self,
        authenticator: Authenticator,
        metrics: ServiceMetrics,
        *,
        metrics_auth: MetricsAuth = "open",
        tls: bool = False,
    ) -> None:
        self._authenticator = authenticator
        self._metrics = metrics
        self._metrics_auth = metrics_auth
        self._tls = tls

    @classmethod
    def open(cls, metrics: ServiceMetrics) -> Access:
        """No checks at all (the insecure mode)."""
        return cls(Authenticator.insecure(), metrics)

    @property
    def enabled(self) -> bool:
        """Whether requests are checked (not the insecure mode)."""
        return not self._authenticator.is_insecure

    def protects(self, route: str) -> bool:
        """Whether ``route`` needs a reader."""
        if not self.enabled:
            return False
        if route in PAGE_ROUTES:
            return True
        if route == METRICS_ROUTE:
            return self._metrics_auth in ("metrics", "all")
        return route in PROBE_ROUTES and self._metrics_auth == "all"

    def refusal(self, request: Request, route: str) -> Response | None:
        """None when ``request`` may see ``route``; else the 401 or 403 answer."""
        if not self.protects(route):
            return None
        from_cookie = False
        principal: Principal | None = None
        try:
            metadata, from_cookie = self._credentials(request)
            principal = self._authenticator.authenticate(metadata, request.peer_identity)
            _require_reader(principal, route)
        except CostsimError as exc:
            self._refused(request, route, principal, exc)
            return self._refusal_response(route, exc, clear_cookie=from_cookie)
        return None

    def _credentials(self, request: Request) -> tuple[list[tuple[str, str]], bool]:
        """The ``authorization`` metadata to authenticate with, and whether it is the cookie."""
        headers = request.header_values("authorization")
        if headers:
            return [("authorization", value) for value in headers], False
        token = session_cookie(request)
        if token is not None:
            return [("authorization", f"Bearer {token}")], True
        return [], False

    def _refused(
        self, request: Request, route: str, principal: Principal | None, exc: CostsimError
    ) -> None:
        self._metrics.auth_failures.labels(reason=exc.reason).inc()
        self._audit(request, route, principal, exc)

    def _audit(
        self,
        request: Request,
        route: str,
        principal: Principal | None,
        exc: CostsimError | None,
    ) -> None:
        outcome = "OK"
        if isinstance(exc, Unauthenticated):
            outcome = "UNAUTHENTICATED"
        elif isinstance(exc, PermissionDenied):
            outcome = "PERMISSION_DENIED"
        audit.audit(
            principal=principal.id if principal else None,
            authenticated_by=principal.authenticated_by if principal else "",
            method=f"{request.method} {route}",
            tenants=(),
            request_id=(request.header("x-request-id") or uuid.uuid4().hex)[:MAX_REQUEST_ID],
            outcome=outcome,
            reason=exc.reason if exc is not None else "",
        )

    def _refusal_response(self, route: str, exc: CostsimError, *, clear_cookie: bool) -> Response:
        status, title = http_status_of(exc)
        headers: tuple[tuple[str, str], ...] = ()
        if status == 401:
            headers = (("WWW-Authenticate", 'Bearer realm="costsim-analytics"'),)
            if clear_cookie:  # a stale session (expired token): forget it, offer to sign in
                headers += (("Set-Cookie", self._cookie("", clear=True)),)
        if route not in PAGE_ROUTES:  # /metrics and probes: for machines
            response = plain(status, f"{exc.message}\n")
            return Response(response.status, response.body, response.content_type, headers)
        if status == 401:
            return _html(status, sign_in_required_page(exc.message), headers)
        return _html(status, error_page(status, title, exc.message), headers)

    # --- sign-in and sign-out ----------------------------------------------------------------

    def _cookie(self, token: str, *, clear: bool = False) -> str:
        parts = [f"{SESSION_COOKIE}={token}", "HttpOnly"]
        if self._tls:
            parts.append("Secure")
        parts += ["SameSite=Strict", "Path=/"]
        if clear:
            parts.append("Max-Age=0")
        return "; ".join(parts)

    def session(self, request: Request) -> Response:
        """Answer ``/login`` and ``/logout``.

        ``GET /login`` is the form; ``POST /login`` checks the posted token and keeps it in
        the session cookie (303 to ``/``); ``/logout`` (GET or POST) clears the cookie.
        """
        if not self.enabled:
            return _html(404, error_page(404, "Not found", "No sign-in: this server is open."))
        if request.path == LOGOUT:
            headers = (("Location", LOGIN), ("Set-Cookie", self._cookie("", clear=True)))
            return Response(303, b"", "text/plain; charset=utf-8", headers)
        if request.method != "POST":
            return _html(200, login_page())
        return self._login(request)

    def _login(self, request: Request) -> Response:
        content_type = (request.header("content-type") or "").split(";", 1)[0].strip().lower()
        if content_type != FORM_TYPE:
            return plain(415, f"sign-in takes {FORM_TYPE}\n")
        if not _same_origin(request):
            exc = PermissionDenied("sign-in from another site", reason="CROSS_ORIGIN")
            self._refused(request, LOGIN, None, exc)
            return _html(403, error_page(403, "Forbidden", exc.message))
        tokens = _form_tokens(request.body)
        if tokens is None or len(tokens) != 1 or not tokens[0].strip():
            return _html(400, login_page("Paste one token."))
        principal: Principal | None = None
        try:
            principal = self._authenticator.authenticate(
                [("authorization", f"Bearer {tokens[0].strip()}")], None
            )
            _require_reader(principal, "the dashboard")
        except CostsimError as exc:
            self._refused(request, LOGIN, principal, exc)
            status, _title = http_status_of(exc)
            return _html(status, login_page(exc.message))
        self._audit(request, LOGIN, principal, None)  # a new session is worth a line
        headers = (("Location", "/"), ("Set-Cookie", self._cookie(tokens[0].strip())))
        return Response(303, b"", "text/plain; charset=utf-8", headers)


def _require_reader(principal: Principal, route: str) -> None:
    if not principal.may(Role.READER):
        raise PermissionDenied(
            f"{route} needs the reader role",
            reason="METHOD_NOT_ALLOWED",
            metadata={"method": route, "role": Role.READER.value},
        )


def _form_tokens(body: bytes) -> Sequence[str] | None:
    """The ``token`` values of an urlencoded body; None when it is not one."""
    try:
        fields = parse_qs(body.decode("ascii"), max_num_fields=8, strict_parsing=bool(body))
    except (UnicodeDecodeError, ValueError):
        return None
    return fields.get("token", [])


def _same_origin(request: Request) -> bool:
    """False when the browser says the post comes from another origin than this server."""
    origin = request.header("origin")
    if origin is None:
        return True  # not a browser, or an old one: SameSite still guards the cookie
    scheme = "https" if request.secure else "http"
    parts = urlsplit(origin)
    return parts.scheme == scheme and parts.netloc == (request.header("host") or "")
