"""Identity end to end: the real server process with real TLS, mTLS and bearer tokens.

Certificates and tokens are made in the test (``tests/security.py``); every scenario of the
identity issue runs on both databases: a wrong CA, expired and tampered tokens, a writer kept
to its tenant (and nothing written), a reader that cannot write, a curator that activates,
the audit log, a rotated certificate, the policy reloaded on SIGHUP, and the insecure mode's
refusal of a public address.
"""

from __future__ import annotations

import json
import signal
import socket
import ssl
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from google.protobuf import json_format
from grpc_health.v1 import health_pb2
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from costsim.analytics.v1 import analytics_pb2 as pb
from costsim_analytics.engines.canary.synthetic import synthetic_samples
from costsim_analytics.engines.cost_models import load_cost_model
from tests.e2e.rpc_errors import details
from tests.e2e.server import ServerProcess
from tests.factories import provenance_json
from tests.security import HS_SECRET, CertificateAuthority, claims, sign, tamper, write_atomically

POLICY = """
[[principal]]
id = "spiffe://test/ns/sim/*"
roles = ["writer", "reader"]
tenants = ["acme"]

[[principal]]
id = "oncall"
roles = ["reader", "canary"]
tenants = ["*"]

[[principal]]
id = "curator"
roles = ["curator", "reader"]

[[principal]]
id = "admin"
roles = ["admin"]
tenants = ["*"]
"""
GRANT_ONCALL_WRITES = POLICY.replace('roles = ["reader", "canary"]', 'roles = ["reader", "writer"]')


@dataclass
class Secured:
    """A secured server and what its callers hold."""

    server: ServerProcess
    ca: CertificateAuthority
    folder: Path

    def credentials(self, client: str | None = None) -> grpc.ChannelCredentials:
        """TLS trusting the test CA; with ``client``, that client certificate too."""
        if client is None:
            return grpc.ssl_channel_credentials(root_certificates=self.ca.pem)
        issued = self.ca.issue_client(f"spiffe://test/ns/sim/{client}")
        return grpc.ssl_channel_credentials(self.ca.pem, issued.key_pem, issued.cert_pem)

    def stub(self, credentials: grpc.ChannelCredentials | None = None):
        channel = self.server.channel(credentials)
        return self.server.stub(channel), channel


def write_secured_files(folder: Path, ca: CertificateAuthority, *, mtls: bool) -> dict[str, str]:
    cert, key = ca.issue_server().write(folder, "server")
    (folder / "policy.toml").write_text(POLICY)
    env = {
        "COSTSIM_TLS_CERT": str(cert),
        "COSTSIM_TLS_KEY": str(key),
        "COSTSIM_POLICY_FILE": str(folder / "policy.toml"),
    }
    if mtls:
        env["COSTSIM_TLS_CLIENT_CA"] = str(ca.write(folder))
    else:
        (folder / "secret").write_bytes(HS_SECRET + b"\n")
        env["COSTSIM_JWT_HS256_SECRET_FILE"] = str(folder / "secret")
    return env


def start_secured(database_url: str, folder: Path, *, mtls: bool) -> Iterator[Secured]:
    ca = CertificateAuthority()
    env = write_secured_files(folder, ca, mtls=mtls)
    server = ServerProcess(database_url, folder / "server.log", COSTSIM_HTTP_LISTEN="off", **env)
    server.credentials = Secured(server, ca, folder).credentials("health" if mtls else None)
    server.start()
    try:
        server.wait_health(health_pb2.HealthCheckResponse.SERVING)
        yield Secured(server, ca, folder)
    finally:
        server.stop()


@pytest.fixture
def tokens_server(database_url: str, tmp_path: Path) -> Iterator[Secured]:
    """TLS on the gRPC port, bearer tokens (HS256), the policy above."""
    yield from start_secured(database_url, tmp_path, mtls=False)


@pytest.fixture
def mtls_server(database_url: str, tmp_path: Path) -> Iterator[Secured]:
    """TLS with required client certificates, the policy above."""
    yield from start_secured(database_url, tmp_path, mtls=True)


def token(sub: str, **kw: float) -> str:
    return sign(claims(sub, **kw), HS_SECRET, "HS256")


def bearer(sub: str, **kw: float) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token(sub, **kw)}"),)


def batch(*tenants: str, start: int = 0) -> pb.WriteProvenanceBatchRequest:
    request = pb.WriteProvenanceBatchRequest()
    for i, tenant in enumerate(tenants, start):
        json_format.ParseDict({**provenance_json(i), "tenant_id": tenant}, request.records.add())
    return request


def tenants_read(stub, metadata, tenant_id: str = "") -> list[str]:
    request = pb.QueryProvenanceRequest(tenant_id=tenant_id)
    return sorted(m.record.tenant_id for m in stub.QueryProvenance(request, metadata=metadata))


def audit_lines(server: ServerProcess) -> list[dict[str, object]]:
    lines = []
    for line in server.log().splitlines():
        start = line.find('{"time"')
        if "costsim_analytics.audit" in line and start >= 0:
            lines.append(json.loads(line[start:]))
    return lines


# --- bearer tokens -------------------------------------------------------------------------------


def test_missing_expired_and_tampered_tokens_are_unauthenticated(tokens_server: Secured):
    stub, channel = tokens_server.stub()
    with channel:
        for metadata, reason in (
            ((), "CREDENTIALS_MISSING"),
            (bearer("admin", ttl_s=-120), "TOKEN_EXPIRED"),
            ((("authorization", "Bearer " + tamper(token("admin"))),), "TOKEN_INVALID"),
            ((("authorization", "Bearer not-a-jwt"),), "TOKEN_INVALID"),
        ):
            with pytest.raises(grpc.RpcError) as exc:
                stub.GetDriftStats(pb.GetDriftStatsRequest(), metadata=metadata, timeout=10)
            assert details(exc.value)[:2] == (grpc.StatusCode.UNAUTHENTICATED, reason)
        # Health and reflection need no credentials.
        health = tokens_server.server.health()
        assert health == health_pb2.HealthCheckResponse.SERVING
        reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
        request = reflection_pb2.ServerReflectionRequest(list_services="")
        [answer] = list(reflection.ServerReflectionInfo(iter([request]), timeout=10))
        names = {s.name for s in answer.list_services_response.service}
        assert "costsim.analytics.v1.AnalyticsService" in names
    failures = [a for a in audit_lines(tokens_server.server) if a["outcome"] == "UNAUTHENTICATED"]
    assert {a["reason"] for a in failures} >= {"CREDENTIALS_MISSING", "TOKEN_EXPIRED"}


def test_roles_and_tenants_decide_and_a_refused_batch_writes_nothing(tokens_server: Secured):
    stub, channel = tokens_server.stub()
    writer = bearer("spiffe://test/ns/sim/writer")  # writer + reader for acme
    oncall, admin = bearer("oncall"), bearer("admin")
    with channel:
        # The admin seeds two tenants.
        assert len(stub.WriteProvenanceBatch(batch("acme", "globex"), metadata=admin).ids) == 2
        # A writer for acme: a batch with one globex record is refused whole, naming it.
        with pytest.raises(grpc.RpcError) as exc:
            stub.WriteProvenanceBatch(batch("acme", "globex", start=10), metadata=writer)
        code, reason, fields = details(exc.value)
        assert (code, reason, fields) == (
            grpc.StatusCode.PERMISSION_DENIED,
            "TENANT_NOT_ALLOWED",
            ["records[1].tenant_id"],
        )
        assert tenants_read(stub, admin) == ["acme", "globex"]  # nothing was written
        # Its own tenant is fine; reading without a filter shows only its tenant.
        stub.WriteProvenanceBatch(batch("acme", start=20), metadata=writer)
        assert tenants_read(stub, writer) == ["acme", "acme"]
        with pytest.raises(grpc.RpcError) as exc:
            tenants_read(stub, writer, tenant_id="globex")
        assert details(exc.value)[:2] == (grpc.StatusCode.PERMISSION_DENIED, "TENANT_NOT_ALLOWED")
        scoped = stub.GetDriftStats(pb.GetDriftStatsRequest(), metadata=writer)
        assert scoped.total == 2  # the acme rows only (every test record has both costs)
        # A page token stays bound to the tenant scope it was issued under.
        first = next(
            iter(stub.QueryProvenance(pb.QueryProvenanceRequest(page_size=1), metadata=writer))
        )
        with pytest.raises(grpc.RpcError) as exc:
            list(
                stub.QueryProvenance(
                    pb.QueryProvenanceRequest(page_token=first.page_token), metadata=admin
                )
            )
        assert details(exc.value)[:2] == (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_PAGE_TOKEN")
        # The on-call reader may read everything and run canaries, but not write.
        assert tenants_read(stub, oncall) == ["acme", "acme", "globex"]
        with pytest.raises(grpc.RpcError) as exc:
            stub.WriteProvenanceBatch(batch("acme", start=30), metadata=oncall)
        assert details(exc.value)[:2] == (grpc.StatusCode.PERMISSION_DENIED, "METHOD_NOT_ALLOWED")
        # An identity the policy does not know is granted nothing.
        with pytest.raises(grpc.RpcError) as exc:
            stub.GetDriftStats(pb.GetDriftStatsRequest(), metadata=bearer("stranger"))
        assert details(exc.value)[:2] == (grpc.StatusCode.PERMISSION_DENIED, "PRINCIPAL_UNKNOWN")
    lines = audit_lines(tokens_server.server)
    writes = [a for a in lines if str(a["method"]).endswith("/WriteProvenanceBatch")]
    assert [(a["principal"], a["outcome"]) for a in writes] == [
        ("admin", "OK"),
        ("spiffe://test/ns/sim/writer", "PERMISSION_DENIED"),
        ("spiffe://test/ns/sim/writer", "OK"),
        ("oncall", "PERMISSION_DENIED"),
    ]
    assert writes[1]["tenants"] == ["acme", "globex"] and writes[1]["request_id"]
    assert not any(
        str(a["method"]).endswith("/QueryProvenance") and a["outcome"] == "OK" for a in lines
    )  # reads are not audited, refusals are


def test_a_curator_activates_and_a_reader_may_not(tokens_server: Secured):
    stub, channel = tokens_server.stub()
    v1 = load_cost_model("v1")
    samples = []
    for sample_id, plan in synthetic_samples()[:40]:
        estimate = v1.estimate(plan)
        sample = pb.GoldenSample(
            id=sample_id,
            expected_cost_cents=estimate.cost_cents,
            expected_feasible=estimate.feasible,
        )
        sample.plan_input.update(plan)
        samples.append(sample)
    curator, oncall = bearer("curator"), bearer("oncall")
    with channel:
        for _ in range(2):  # two versions
            created = stub.CreateGoldenDataset(
                pb.CreateGoldenDatasetRequest(name="ref", samples=samples), metadata=curator
            )
            samples = samples[:-1]
        assert created.dataset.version == 2
        activate = pb.ActivateGoldenDatasetRequest(name="ref", version=2)
        with pytest.raises(grpc.RpcError) as exc:
            stub.ActivateGoldenDataset(activate, metadata=oncall)
        assert details(exc.value)[:2] == (grpc.StatusCode.PERMISSION_DENIED, "METHOD_NOT_ALLOWED")
        assert stub.ActivateGoldenDataset(activate, metadata=curator).dataset.active
        listed = stub.ListGoldenDatasets(pb.ListGoldenDatasetsRequest(), metadata=oncall)
        assert [(d.version, d.active) for d in listed.datasets] == [(1, False), (2, True)]
    activations = [
        a
        for a in audit_lines(tokens_server.server)
        if str(a["method"]).endswith("/ActivateGoldenDataset")
    ]
    assert [(a["principal"], a["outcome"]) for a in activations] == [
        ("oncall", "PERMISSION_DENIED"),
        ("curator", "OK"),
    ]


def test_the_policy_is_reloaded_on_sighup(tokens_server: Secured):
    stub, channel = tokens_server.stub()
    oncall = bearer("oncall")
    with channel:
        with pytest.raises(grpc.RpcError):
            stub.WriteProvenanceBatch(batch("acme"), metadata=oncall)
        write_atomically(tokens_server.folder / "policy.toml", GRANT_ONCALL_WRITES.encode())
        assert tokens_server.server.proc is not None
        tokens_server.server.proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 10
        while True:
            try:
                assert len(stub.WriteProvenanceBatch(batch("acme"), metadata=oncall).ids) == 1
                break
            except grpc.RpcError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        # A broken policy file is refused on reload: the last good one stays in force.
        (tokens_server.folder / "policy.toml").write_text(
            '[[principal]]\nid = "oncall"\nrole = 1\n'
        )
        tokens_server.server.proc.send_signal(signal.SIGHUP)
        time.sleep(0.5)
        assert len(stub.WriteProvenanceBatch(batch("acme", start=5), metadata=oncall).ids) == 1
    assert "policy reload refused" in tokens_server.server.log()


# --- mutual TLS ----------------------------------------------------------------------------------


def test_client_certificates_identify_and_a_wrong_ca_is_refused(mtls_server: Secured):
    stub, channel = mtls_server.stub(mtls_server.credentials("writer"))
    with channel:
        stub.WriteProvenanceBatch(batch("acme"), timeout=10)
        with pytest.raises(grpc.RpcError) as exc:
            stub.WriteProvenanceBatch(batch("globex"), timeout=10)
        assert details(exc.value)[:2] == (grpc.StatusCode.PERMISSION_DENIED, "TENANT_NOT_ALLOWED")
    stranger = CertificateAuthority("another CA").issue_client("spiffe://test/ns/sim/writer")
    wrong = grpc.ssl_channel_credentials(mtls_server.ca.pem, stranger.key_pem, stranger.cert_pem)
    for credentials in (wrong, mtls_server.credentials(None)):  # a foreign CA, no certificate
        stub, channel = mtls_server.stub(credentials)
        with channel, pytest.raises(grpc.RpcError) as exc:
            stub.GetDriftStats(pb.GetDriftStatsRequest(), timeout=5)
        assert exc.value.code() == grpc.StatusCode.UNAVAILABLE  # the handshake fails
    [write] = [a for a in audit_lines(mtls_server.server) if a["outcome"] == "OK"]
    assert (write["principal"], write["authenticated_by"]) == (
        "spiffe://test/ns/sim/writer",
        "mtls",
    )


def served_certificate(server: Secured, client: str = "health") -> x509.Certificate:
    """The certificate the gRPC port presents to a new TLS connection."""
    issued = server.ca.issue_client(f"spiffe://test/ns/sim/{client}")
    cert, key = issued.write(server.folder, "probe")
    context = ssl.create_default_context(cadata=server.ca.pem.decode())
    context.load_cert_chain(cert, key)
    context.set_alpn_protocols(["h2"])
    host, port = server.server.address.rsplit(":", 1)
    with (
        socket.create_connection((host, int(port)), timeout=5) as raw,
        context.wrap_socket(raw, server_hostname=host) as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der)


def test_a_rotated_certificate_is_served_without_a_restart(mtls_server: Secured):
    before = served_certificate(mtls_server)
    rotated = mtls_server.ca.issue("rotated", dns=("localhost",), ips=("127.0.0.1",), server=True)
    write_atomically(mtls_server.folder / "server.key", rotated.key_pem)
    write_atomically(mtls_server.folder / "server.crt", rotated.cert_pem)
    deadline = time.monotonic() + 10
    while served_certificate(mtls_server).serial_number == before.serial_number:
        assert time.monotonic() < deadline, "the rotated certificate was never served"
        time.sleep(0.2)
    assert served_certificate(mtls_server).serial_number == rotated.cert.serial_number
    stub, channel = mtls_server.stub(mtls_server.credentials("writer"))
    with channel:  # and calls keep working over the new certificate
        assert len(stub.WriteProvenanceBatch(batch("acme"), timeout=10).ids) == 1


# --- the insecure mode ---------------------------------------------------------------------------


def test_the_insecure_mode_refuses_a_public_address_unless_told(database_url: str, tmp_path: Path):
    refused = ServerProcess(database_url, tmp_path / "refused.log", COSTSIM_HTTP_LISTEN="off")
    with pytest.raises(RuntimeError, match="server did not start"):
        refused.start(timeout_s=15, listen="0.0.0.0:0")
    assert refused.proc is not None and refused.proc.wait(10) == 2
    assert "refusing to start" in refused.log() and "0.0.0.0" in refused.log()
    allowed = ServerProcess(
        database_url, tmp_path / "allowed.log", COSTSIM_HTTP_LISTEN="off", COSTSIM_INSECURE="true"
    )
    allowed.start(listen="0.0.0.0:0")
    try:
        allowed.address = allowed.address.replace("0.0.0.0", "127.0.0.1")
        allowed.wait_health(health_pb2.HealthCheckResponse.SERVING)
        assert "insecure mode" in allowed.log()
    finally:
        assert allowed.stop() == 0


def test_the_cli_reaches_a_secured_server_with_its_tls_and_token_options(tokens_server: Secured):
    import subprocess

    from tests.e2e.server import CLI

    (tokens_server.folder / "ca.crt").write_bytes(tokens_server.ca.pem)
    (tokens_server.folder / "token").write_text(token("oncall") + "\n")
    common = ["--tls-ca", str(tokens_server.folder / "ca.crt")]
    command = ["drift-stats", "--target", tokens_server.server.address, "--json"]

    def run(*options: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [CLI, *common, *options, *command], capture_output=True, text=True, timeout=60
        )

    with_file = run("--token-file", str(tokens_server.folder / "token"))
    assert with_file.returncode == 0, with_file.stderr
    assert int(json.loads(with_file.stdout)["total"]) == 0  # int64 comes back as a string
    assert run("--token", token("oncall")).returncode == 0
    refused = run()  # TLS but no token
    assert refused.returncode == 1 and "UNAUTHENTICATED" in refused.stderr
