"""TLS material: validated, reloaded when the files change (keeping the old on a bad pair),
an HTTP context that follows rotation, and the peer identity rules (URI SAN, DNS SAN, CN)."""

import logging
import ssl

import pytest
from cryptography import x509

from costsim_analytics.auth.tls import (
    ReloadingTls,
    TlsError,
    TlsFiles,
    identity_from_auth_context,
    identity_from_certificate,
    identity_from_peercert,
    load_material,
)
from tests.security import CertificateAuthority, write_atomically


@pytest.fixture(scope="module")
def ca():
    return CertificateAuthority()


@pytest.fixture
def files(tmp_path, ca):
    cert, key = ca.issue_server().write(tmp_path, "server")
    return TlsFiles(cert, key, ca.write(tmp_path))


def handshake(server_context, client_context):
    """A TLS handshake in memory; returns (client SSLObject, server SSLObject)."""
    c_in, c_out, s_in, s_out = (ssl.MemoryBIO() for _ in range(4))
    client = client_context.wrap_bio(c_in, c_out, server_hostname="localhost")
    server = server_context.wrap_bio(s_in, s_out, server_side=True)
    done = {"client": False, "server": False}
    for _ in range(20):
        for name, side in (("client", client), ("server", server)):
            if not done[name]:
                try:
                    side.do_handshake()
                    done[name] = True
                except ssl.SSLWantReadError:
                    pass
        s_in.write(c_out.read())
        c_in.write(s_out.read())
        if all(done.values()):
            return client, server
    raise AssertionError("handshake did not finish")


def client_context(ca, issued=None, folder=None):
    context = ssl.create_default_context(cadata=ca.pem.decode())
    if issued is not None:
        cert, key = issued.write(folder, "client")
        context.load_cert_chain(cert, key)
    return context


def test_material_is_validated(tmp_path, ca):
    cert, key = ca.issue_server().write(tmp_path, "a")
    _, other_key = ca.issue_server().write(tmp_path, "b")
    assert load_material(TlsFiles(cert, key)).client_ca_pem is None
    with pytest.raises(TlsError, match="is not the key of the certificate"):
        load_material(TlsFiles(cert, other_key))
    (tmp_path / "junk.pem").write_text("junk")
    with pytest.raises(TlsError, match="not a PEM certificate"):
        load_material(TlsFiles(tmp_path / "junk.pem", key))
    with pytest.raises(TlsError, match="private key"):
        load_material(TlsFiles(cert, tmp_path / "junk.pem"))
    with pytest.raises(TlsError, match="bundle"):
        load_material(TlsFiles(cert, key, tmp_path / "junk.pem"))
    with pytest.raises(TlsError):
        ReloadingTls(TlsFiles(cert, tmp_path / "missing.key"))


def test_check_reloads_only_when_files_change(files, ca):
    tls = ReloadingTls(files)
    assert tls.check() is False and tls.generation == 0
    new = ca.issue_server("rotated")
    write_atomically(files.cert, new.cert_pem)
    write_atomically(files.key, new.key_pem)
    assert tls.check() is True and tls.generation == 1
    assert tls.material.cert_pem == new.cert_pem
    assert tls.check() is False


def test_a_half_written_rotation_keeps_the_old_pair_and_logs_once(files, ca, caplog):
    tls = ReloadingTls(files)
    before = tls.material
    caplog.set_level(logging.ERROR, logger="costsim_analytics.auth.tls")
    write_atomically(files.cert, ca.issue_server("new").cert_pem)  # the key not yet replaced
    for _ in range(3):
        assert tls.check() is False
    assert tls.material is before
    assert len([r for r in caplog.records if "TLS reload refused" in r.getMessage()]) == 1
    files.key.unlink()  # a file missing mid-rotation: same story
    assert tls.check() is False and tls.material is before


def test_forced_reload_rereads(files):
    tls = ReloadingTls(files)
    assert tls.reload() is True and tls.generation == 1


def test_grpc_fetcher_hands_out_a_configuration_only_after_a_change(files, ca):
    tls = ReloadingTls(files)
    tls.grpc_credentials()
    assert tls._fetch() is None
    new = ca.issue_server("rotated")
    write_atomically(files.cert, new.cert_pem)
    write_atomically(files.key, new.key_pem)
    assert tls._fetch() is not None
    assert tls._fetch() is None


def test_http_context_requires_a_client_certificate_from_the_ca(files, ca, tmp_path):
    tls = ReloadingTls(files)
    server_context = tls.ssl_context()
    _, server = handshake(server_context, client_context(ca, ca.issue_client(), tmp_path))
    assert identity_from_peercert(server.getpeercert()) == "spiffe://test/ns/sim/writer"
    stranger = CertificateAuthority("someone else's CA")
    with pytest.raises(ssl.SSLError):
        handshake(server_context, client_context(ca, stranger.issue_client(), tmp_path))


def test_http_context_with_optional_client_certificates(files, ca):
    server_context = ReloadingTls(files).ssl_context(require_client_cert=False)
    _, server = handshake(server_context, client_context(ca))
    assert identity_from_peercert(server.getpeercert()) is None


def test_http_context_follows_a_rotated_certificate(files, ca):
    tls = ReloadingTls(TlsFiles(files.cert, files.key))
    server_context = tls.ssl_context()
    client, _ = handshake(server_context, client_context(ca))
    first = x509.load_der_x509_certificate(client.getpeercert(binary_form=True))
    new = ca.issue_server("rotated.localhost")
    write_atomically(files.cert, new.cert_pem)
    write_atomically(files.key, new.key_pem)
    client, _ = handshake(server_context, client_context(ca))
    second = x509.load_der_x509_certificate(client.getpeercert(binary_form=True))
    assert first.serial_number != second.serial_number
    assert second.serial_number == new.cert.serial_number


@pytest.mark.parametrize(
    ("kwargs", "identity"),
    [
        (
            {"uris": ("https://other", "spiffe://prod/ns/sim/api"), "dns": ("x.test",)},
            "spiffe://prod/ns/sim/api",
        ),
        ({"uris": ("urn:example:svc",), "dns": ("x.test",)}, "urn:example:svc"),
        ({"dns": ("api.internal", "b.internal")}, "api.internal"),
        ({}, "plain-cn"),
    ],
)
def test_identity_prefers_uri_then_dns_then_cn(ca, kwargs, identity):
    issued = ca.issue("plain-cn", **kwargs)
    assert identity_from_certificate(issued.cert) == identity
    auth = {
        "transport_security_type": [b"ssl"],
        "x509_common_name": [b"plain-cn"],
        "x509_pem_cert": [issued.cert_pem],
    }
    assert identity_from_auth_context(auth) == identity


def test_identity_from_auth_context_without_a_certificate():
    assert identity_from_auth_context({"transport_security_type": [b"ssl"]}) is None
    assert identity_from_auth_context({"x509_common_name": [b"only-cn"]}) == "only-cn"
    assert identity_from_auth_context({"x509_pem_cert": [b"junk"]}) is None


def test_identity_from_peercert_dicts():
    assert identity_from_peercert(None) is None
    assert identity_from_peercert({}) is None
    cert = {
        "subject": ((("commonName", "cn-name"),),),
        "subjectAltName": (("DNS", "a.test"), ("URI", "spiffe://x/y")),
    }
    assert identity_from_peercert(cert) == "spiffe://x/y"
    assert identity_from_peercert({**cert, "subjectAltName": (("DNS", "a.test"),)}) == "a.test"
    assert identity_from_peercert({"subject": cert["subject"]}) == "cn-name"
