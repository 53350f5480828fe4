"""The HTTP side port of the real server process in the secure mode, over real TLS (mTLS on
the gRPC port; a client certificate optional on the HTTP one): tokens, client certificates,
the sign-in cookie, open probes. SQLite: the side port does not depend on the backend."""

from __future__ import annotations

import http.client
import json
import ssl
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from http.cookiejar import CookieJar
from pathlib import Path
from urllib.parse import urlencode, urlsplit

import grpc
import pytest
from grpc_health.v1 import health_pb2

from costsim_analytics.drivers import schema
from tests.e2e.server import ServerProcess
from tests.security import HS_SECRET, CertificateAuthority, Issued, claims, sign, tamper

POLICY = """
[[principal]]
id = "oncall"
roles = ["reader"]
tenants = ["*"]

[[principal]]
id = "sim"
roles = ["writer"]
tenants = ["acme"]

[[principal]]
id = "spiffe://test/ns/ops/viewer"
roles = ["reader"]
"""


@dataclass
class Secure:
    server: ServerProcess
    ca: CertificateAuthority
    viewer: Issued
    folder: Path

    def context(self, certificate: Issued | None = None) -> ssl.SSLContext:
        """A client context trusting the test CA (with a client certificate when given)."""
        context = ssl.create_default_context(cadata=self.ca.pem.decode())
        if certificate is not None:
            cert, key = certificate.write(self.folder, "client")
            context.load_cert_chain(cert, key)
        return context

    def get(
        self, path: str, *, token: str = "", certificate: Issued | None = None
    ) -> tuple[int, dict[str, str], str]:
        request = urllib.request.Request(self.server.http_url + path)
        if token:
            request.add_header("Authorization", f"Bearer {token}")
        try:
            with urllib.request.urlopen(
                request, timeout=10, context=self.context(certificate)
            ) as response:
                return response.status, dict(response.headers), response.read().decode()
        except urllib.error.HTTPError as exc:
            with exc:
                return exc.code, dict(exc.headers), exc.read().decode()


def token(sub: str) -> str:
    return sign(claims(sub), HS_SECRET, "HS256")


@pytest.fixture
def secure(tmp_path: Path) -> Iterator[Secure]:
    ca = CertificateAuthority()
    cert, key = ca.issue_server().write(tmp_path, "server")
    (tmp_path / "policy.toml").write_text(POLICY)
    (tmp_path / "jwt.secret").write_bytes(HS_SECRET + b"\n")
    viewer = ca.issue_client("spiffe://test/ns/ops/viewer")
    url = f"sqlite:///{tmp_path / 'costsim.db'}"
    schema.upgrade(url)
    credentials = grpc.ssl_channel_credentials(
        root_certificates=ca.pem, private_key=viewer.key_pem, certificate_chain=viewer.cert_pem
    )
    server = ServerProcess(
        url,
        tmp_path / "server.log",
        COSTSIM_TLS_CERT=str(cert),
        COSTSIM_TLS_KEY=str(key),
        COSTSIM_TLS_CLIENT_CA=str(ca.write(tmp_path, "clients-ca")),
        COSTSIM_POLICY_FILE=str(tmp_path / "policy.toml"),
        COSTSIM_JWT_HS256_SECRET_FILE=str(tmp_path / "jwt.secret"),
    )
    server.credentials = credentials
    server.start()
    try:
        server.wait_health(health_pb2.HealthCheckResponse.SERVING)
        yield Secure(server, ca, viewer, tmp_path)
    finally:
        server.stop()


def test_https_dashboard_needs_a_reader_and_the_sign_in_cookie_works(secure: Secure):
    assert secure.server.http_url.startswith("https://127.0.0.1:")

    # No token, no certificate: the TLS handshake works (a browser must reach /login) but the
    # page is refused, with a way to sign in.
    status, headers, page = secure.get("/")
    assert status == 401 and 'href="/login"' in page
    assert headers["WWW-Authenticate"].startswith("Bearer")
    assert secure.get("/golden", token=tamper(token("oncall")))[0] == 401
    assert secure.get("/", token=token("sim"))[0] == 403

    # A reader's bearer token, or a reader's client certificate.
    status, _, page = secure.get("/", token=token("oncall"))
    assert status == 200 and "Canary reports" in page
    status, _, page = secure.get("/golden", certificate=secure.viewer)
    assert status == 200 and "Golden datasets" in page

    # Probes and /metrics are open in the default mode (COSTSIM_METRICS_AUTH=open).
    assert secure.get("/healthz")[::2] == (200, "ok\n")
    assert secure.get("/readyz")[0] == 200
    status, _, metrics = secure.get("/metrics")
    assert status == 200
    assert 'costsim_auth_failures_total{reason="CREDENTIALS_MISSING"} 1.0' in metrics
    assert 'costsim_auth_failures_total{reason="METHOD_NOT_ALLOWED"} 1.0' in metrics

    # The browser flow: the form, then a POST that sets the cookie and redirects to /.
    status, _, form = secure.get("/login")
    assert status == 200 and 'action="/login"' in form
    set_cookie = raw_login(secure, token("oncall"))
    attributes = {part.strip() for part in set_cookie.split(";")}
    assert {"HttpOnly", "Secure", "SameSite=Strict", "Path=/"} <= attributes

    jar = CookieJar()
    browser = urllib.request.build_opener(
        urllib.request.HTTPSHandler(context=secure.context()),
        urllib.request.HTTPCookieProcessor(jar),
    )
    form_body = urlencode({"token": token("oncall")}).encode()
    with browser.open(secure.server.http_url + "/login", data=form_body, timeout=10) as landed:
        # urllib followed the 303 to / with the cookie the server had just set.
        assert landed.status == 200 and landed.url == secure.server.http_url + "/"
        assert "Canary reports" in landed.read().decode()
    [cookie] = list(jar)
    assert cookie.name == "costsim_session" and cookie.secure
    with browser.open(secure.server.http_url + "/golden", timeout=10) as page_with_cookie:
        assert page_with_cookie.status == 200

    # Signing out clears the cookie: the next page is refused again.
    with browser.open(secure.server.http_url + "/logout", timeout=10) as signed_out:
        assert signed_out.url == secure.server.http_url + "/login"  # after the 303
    assert list(jar) == []
    with pytest.raises(urllib.error.HTTPError) as refused:
        browser.open(secure.server.http_url + "/", timeout=10)
    with refused.value:
        assert refused.value.code == 401

    # Every refusal is one audit line in the server log, the route as its method.
    lines = [json.loads(line.split(": ", 1)[1]) for line in audit_lines(secure.server)]
    assert {"method": "GET /", "outcome": "UNAUTHENTICATED", "principal": None} in [
        {k: line[k] for k in ("method", "outcome", "principal")} for line in lines
    ]
    assert any(line["method"] == "POST /login" and line["outcome"] == "OK" for line in lines), lines


def raw_login(secure: Secure, value: str) -> str:
    """POST /login with http.client (no redirect followed); the Set-Cookie header."""
    parts = urlsplit(secure.server.http_url)
    assert parts.hostname is not None
    connection = http.client.HTTPSConnection(
        parts.hostname, parts.port, context=secure.context(), timeout=10
    )
    try:
        connection.request(
            "POST",
            "/login",
            body=urlencode({"token": value}),
            headers={"Content-Type": "application/x-www-form-urlencoded"},
        )
        response = connection.getresponse()
        response.read()
        assert response.status == 303 and response.getheader("Location") == "/"
        return response.getheader("Set-Cookie") or ""
    finally:
        connection.close()


def audit_lines(server: ServerProcess) -> list[str]:
    return [line for line in server.log().splitlines() if "costsim_analytics.audit:" in line]
