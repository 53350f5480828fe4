"""The dashboard's authentication: 401/403/200 by token, cookie and certificate; sign-in and
sign-out; COSTSIM_METRICS_AUTH; refusals counted and audited."""

from __future__ import annotations

import asyncio
import json
import logging
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlencode

import pytest

from costsim_analytics.api.dashboard.access import Access, session_cookie
from costsim_analytics.api.dashboard.app import Dashboard
from costsim_analytics.api.dashboard.httpserver import Request, Response
from costsim_analytics.api.metrics import ServiceMetrics
from costsim_analytics.auth.audit import AUDIT_LOGGER
from costsim_analytics.auth.authn import Authenticator
from costsim_analytics.auth.policy import PolicyStore
from costsim_analytics.auth.tokens import StaticSecret, TokenVerifier
from costsim_analytics.engines.errors import Unauthenticated
from costsim_analytics.handlers.registry import OP_CANARY_REPORT, OperationRegistry
from tests.factories import canary_report
from tests.security import AUDIENCE, HS_SECRET, claims, sign, tamper
from tests.unit.test_dashboard import fake_registry

POLICY = """
[[principal]]
id = "oncall"
roles = ["reader"]
tenants = ["*"]

[[principal]]
id = "boss"
roles = ["admin"]

[[principal]]
id = "sim"
roles = ["writer"]
tenants = ["acme"]

[[principal]]
id = "spiffe://test/ns/ops/viewer"
roles = ["reader"]
"""
FORM = "application/x-www-form-urlencoded"


def token(sub: str = "oncall", **extra) -> str:
    return sign(claims(sub, **extra), HS_SECRET, "HS256")


@pytest.fixture
def authenticator(tmp_path) -> Authenticator:
    path = tmp_path / "policy.toml"
    path.write_text(POLICY)
    return Authenticator(
        PolicyStore(path), TokenVerifier(StaticSecret(HS_SECRET), audience=AUDIENCE)
    )


@pytest.fixture
def metrics() -> ServiceMetrics:
    return ServiceMetrics()


@pytest.fixture
def pool():
    with ThreadPoolExecutor(2) as executor:
        yield executor


def make_app(authenticator, metrics, pool, *, metrics_auth="open", tls=True) -> Dashboard:
    access = Access(authenticator, metrics, metrics_auth=metrics_auth, tls=tls)
    return Dashboard(fake_registry([canary_report(0)]), pool, metrics, lambda: True, access)


@pytest.fixture
def app(authenticator, metrics, pool) -> Dashboard:
    return make_app(authenticator, metrics, pool)


def request(
    target: str,
    *headers: tuple[str, str],
    method: str = "GET",
    body: bytes = b"",
    peer: str | None = None,
) -> Request:
    path, _, _query = target.partition("?")
    return Request(
        method=method,
        path=path,
        raw_path=path,
        headers=tuple((k.lower(), v) for k, v in headers),
        body=body,
        peer_identity=peer,
        secure=True,
    )


def get(app: Dashboard, target: str, *headers: tuple[str, str], peer: str | None = None):
    return asyncio.run(app(request(target, *headers, peer=peer)))


def bearer(value: str) -> tuple[str, str]:
    return ("Authorization", f"Bearer {value}")


def login(app: Dashboard, value: str, *headers: tuple[str, str], content_type: str = FORM):
    body = urlencode({"token": value}).encode()
    posted = request("/login", ("Content-Type", content_type), *headers, method="POST", body=body)
    return asyncio.run(app(posted))


def cookie_of(response: Response) -> str:
    return dict(response.headers)["Set-Cookie"]


def failures(metrics: ServiceMetrics, reason: str) -> float:
    value = metrics.registry.get_sample_value("costsim_auth_failures_total", {"reason": reason})
    return value or 0.0


def audit_lines(caplog) -> list[dict[str, object]]:
    return [json.loads(r.getMessage()) for r in caplog.records if r.name == AUDIT_LOGGER]


# --- pages -----------------------------------------------------------------------------------


@pytest.mark.parametrize("target", ["/", "/reports/run-0", "/golden"])
def test_every_page_needs_credentials(app, metrics, target, caplog):
    caplog.set_level(logging.INFO, logger=AUDIT_LOGGER)
    refused = get(app, target)
    assert refused.status == 401 and refused.content_type.startswith("text/html")
    assert b'href="/login"' in refused.body and b"credentials required" in refused.body
    assert dict(refused.headers)["WWW-Authenticate"].startswith("Bearer")
    assert failures(metrics, "CREDENTIALS_MISSING") == 1
    route = "/reports/{run_id}" if target.startswith("/reports/") else target
    [line] = audit_lines(caplog)
    assert (line["method"], line["outcome"], line["reason"], line["principal"]) == (
        f"GET {route}",
        "UNAUTHENTICATED",
        "CREDENTIALS_MISSING",
        None,
    )


def test_a_reader_token_an_admin_token_and_a_reader_certificate_see_the_pages(app):
    assert get(app, "/", bearer(token("oncall"))).status == 200
    assert get(app, "/reports/canary-00000", bearer(token("boss"))).status == 200
    assert get(app, "/golden", peer="spiffe://test/ns/ops/viewer").status == 200


def test_a_writer_is_forbidden(app, metrics, caplog):
    caplog.set_level(logging.INFO, logger=AUDIT_LOGGER)
    for refused in (get(app, "/", bearer(token("sim"))), get(app, "/golden", peer="sim")):
        assert refused.status == 403 and b"needs the reader role" in refused.body
    assert failures(metrics, "METHOD_NOT_ALLOWED") == 2
    first = audit_lines(caplog)[0]
    assert (first["principal"], first["outcome"], first["method"]) == (
        "sim",
        "PERMISSION_DENIED",
        "GET /",
    )


def test_unknown_identities_bad_tokens_and_other_schemes_are_refused(app, metrics):
    assert get(app, "/", bearer(token("stranger"))).status == 403
    assert get(app, "/", peer="spiffe://elsewhere").status == 403
    assert failures(metrics, "PRINCIPAL_UNKNOWN") == 2
    assert get(app, "/", bearer(tamper(token()))).status == 401
    assert get(app, "/", ("Authorization", "Basic b25jYWxsOng=")).status == 401
    assert get(app, "/", bearer(token(ttl_s=-3600))).status == 401
    assert failures(metrics, "TOKEN_EXPIRED") == 1 and failures(metrics, "TOKEN_INVALID") == 2


def test_a_bad_token_is_not_skipped_for_a_good_certificate(app):
    refused = get(app, "/", bearer(tamper(token())), peer="spiffe://test/ns/ops/viewer")
    assert refused.status == 401


def test_refusals_do_not_reach_the_handlers(authenticator, metrics, pool):
    def boom(command, call):
        raise AssertionError("a refused request ran the handler")

    registry = OperationRegistry()
    registry.register(OP_CANARY_REPORT, boom)
    app = Dashboard(registry, pool, metrics, lambda: True, Access(authenticator, metrics))
    assert get(app, "/reports/x").status == 401


# --- sign-in ---------------------------------------------------------------------------------


def test_login_form_is_offline_html_with_the_same_headers(app):
    form = get(app, "/login")
    assert form.status == 200 and b'<form method="post" action="/login"' in form.body
    assert b'name="token"' in form.body and b"<script" not in form.body
    assert b"http://" not in form.body and b"https://" not in form.body  # nothing external


def test_login_sets_a_strict_http_only_cookie_and_the_cookie_opens_the_pages(app, caplog):
    caplog.set_level(logging.INFO, logger=AUDIT_LOGGER)
    value = token()
    signed_in = login(app, value, ("Origin", "https://dash.example"), ("Host", "dash.example"))
    assert signed_in.status == 303 and dict(signed_in.headers)["Location"] == "/"
    cookie = cookie_of(signed_in)
    attributes = [part.strip() for part in cookie.split(";")]
    assert attributes[0] == f"costsim_session={value}"
    assert {"HttpOnly", "Secure", "SameSite=Strict", "Path=/"} <= set(attributes)
    assert not any(a.lower().startswith(("max-age", "expires", "domain")) for a in attributes)
    [line] = audit_lines(caplog)
    assert (line["method"], line["outcome"], line["principal"]) == ("POST /login", "OK", "oncall")

    page = get(app, "/", ("Cookie", f"theme=dark; costsim_session={value}"))
    assert page.status == 200 and b"Canary reports" in page.body


def test_no_secure_attribute_over_plain_http(authenticator, metrics, pool):
    app = make_app(authenticator, metrics, pool, tls=False)
    assert "Secure" not in cookie_of(login(app, token()))


def test_login_refuses_bad_tokens_and_non_readers(app, metrics, caplog):
    caplog.set_level(logging.INFO, logger=AUDIT_LOGGER)
    bad = login(app, tamper(token()))
    assert bad.status == 401 and "Set-Cookie" not in dict(bad.headers)
    assert b"bearer token is not valid" in bad.body and b'name="token"' in bad.body
    writer = login(app, token("sim"))
    assert writer.status == 403 and "Set-Cookie" not in dict(writer.headers)
    assert failures(metrics, "TOKEN_INVALID") == 1 and failures(metrics, "METHOD_NOT_ALLOWED") == 1
    assert [line["outcome"] for line in audit_lines(caplog)] == [
        "UNAUTHENTICATED",
        "PERMISSION_DENIED",
    ]


def test_login_needs_a_form_body_with_one_token(app):
    assert login(app, token(), content_type="application/json").status == 415
    assert login(app, token(), content_type=f"{FORM}; charset=utf-8").status == 303
    empty = request("/login", ("Content-Type", FORM), method="POST", body=b"")
    assert asyncio.run(app(empty)).status == 400
    two = request("/login", ("Content-Type", FORM), method="POST", body=b"token=a.b.c&token=d.e.f")
    assert asyncio.run(app(two)).status == 400
    binary = request("/login", ("Content-Type", FORM), method="POST", body=b"token=\xff")
    assert asyncio.run(app(binary)).status == 400


def test_login_from_another_site_is_refused(app, metrics):
    refused = login(app, token(), ("Origin", "https://evil.example"), ("Host", "dash.example"))
    assert refused.status == 403 and "Set-Cookie" not in dict(refused.headers)
    assert failures(metrics, "CROSS_ORIGIN") == 1


def test_a_forged_or_expired_cookie_is_401_and_cleared(app, metrics):
    for value in (tamper(token()), token(ttl_s=-3600), "not-a-jwt"):
        refused = get(app, "/", ("Cookie", f"costsim_session={value}"))
        assert refused.status == 401 and b'href="/login"' in refused.body
        cleared = cookie_of(refused)
        assert cleared.startswith("costsim_session=;") and "Max-Age=0" in cleared
    # A bearer header is used before the cookie, and is not cleared as one.
    refused = get(app, "/", bearer("x"), ("Cookie", f"costsim_session={token()}"))
    assert refused.status == 401 and "Set-Cookie" not in dict(refused.headers)


def test_two_different_session_cookies_are_refused():
    planted = request("/", ("Cookie", "costsim_session=a.b.c; costsim_session=d.e.f"))
    with pytest.raises(Unauthenticated):
        session_cookie(planted)
    same = request("/", ("Cookie", "costsim_session=a.b.c"), ("Cookie", 'costsim_session="a.b.c"'))
    assert session_cookie(same) == "a.b.c"


@pytest.mark.parametrize("method", ["GET", "POST"])
def test_logout_clears_the_cookie(app, method):
    out = asyncio.run(app(request("/logout", method=method)))
    assert out.status == 303 and dict(out.headers)["Location"] == "/login"
    cleared = cookie_of(out)
    assert cleared.startswith("costsim_session=;") and "Max-Age=0" in cleared
    assert "HttpOnly" in cleared and "SameSite=Strict" in cleared


def test_insecure_mode_checks_nothing_and_has_no_sign_in(metrics, pool):
    app = Dashboard(fake_registry([]), pool, metrics, lambda: True)
    assert get(app, "/").status == 200 and get(app, "/metrics").status == 200
    assert get(app, "/login").status == 404
    assert failures(metrics, "CREDENTIALS_MISSING") == 0


# --- /metrics and probes ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("mode", "metrics_needs", "probes_need"),
    [("open", False, False), ("metrics", True, False), ("all", True, True)],
)
def test_metrics_auth_modes(authenticator, metrics, pool, mode, metrics_needs, probes_need):
    app = make_app(authenticator, metrics, pool, metrics_auth=mode)
    for target, needs in (("/metrics", metrics_needs), ("/healthz", probes_need)):
        for target_ in (target, "/readyz") if target == "/healthz" else (target,):
            anonymous = get(app, target_)
            assert anonymous.status == (401 if needs else 200), (mode, target_)
            if needs:
                assert anonymous.content_type.startswith("text/plain")  # for machines
                assert get(app, target_, bearer(token("sim"))).status == 403
            assert get(app, target_, bearer(token("oncall"))).status == 200
            assert get(app, target_, peer="spiffe://test/ns/ops/viewer").status == 200


def test_refused_requests_are_counted_by_route_and_status(app, metrics):
    get(app, "/golden")
    exposition = get(app, "/metrics").body
    assert b'costsim_http_requests_total{code="401",route="/golden"} 1.0' in exposition
    assert b'costsim_auth_failures_total{reason="CREDENTIALS_MISSING"} 1.0' in exposition
