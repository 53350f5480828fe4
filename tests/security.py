"""Certificates and tokens made on the spot, for the unit, integration and e2e tests.

A CA issues server certificates (for localhost / 127.0.0.1) and client certificates (with a
SPIFFE URI SAN, DNS SANs or only a CN); keys are EC P-256 (fast to generate). Token helpers
sign claims with RSA, EC, Ed25519 or HS256 keys and write JWKS files.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import ipaddress
import json
import os
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import jwt
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

AUDIENCE = "costsim-analytics"
HS_SECRET = b"0123456789abcdef0123456789abcdef-test-secret"


def write_atomically(path: Path, data: bytes) -> Path:
    """Replace ``path`` the way rotation tools do: a new file renamed over the old one."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)
    return path


def _pem_key(key: Any) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


@dataclass(frozen=True)
class Issued:
    """A certificate and its key."""

    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey

    @property
    def cert_pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)

    @property
    def key_pem(self) -> bytes:
        return _pem_key(self.key)

    def write(self, folder: Path, name: str) -> tuple[Path, Path]:
        """Write ``name.crt`` and ``name.key``; returns their paths."""
        cert = write_atomically(folder / f"{name}.crt", self.cert_pem)
        key = write_atomically(folder / f"{name}.key", self.key_pem)
        return cert, key


class CertificateAuthority:
    """A self-signed CA that issues leaf certificates."""

    def __init__(self, name: str = "costsim test CA") -> None:
        self.key = ec.generate_private_key(ec.SECP256R1())
        self.name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        now = datetime.now(UTC)
        self.cert = (
            x509.CertificateBuilder()
            .subject_name(self.name)
            .issuer_name(self.name)
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(minutes=5))
            .not_valid_after(now + timedelta(days=2))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(
                x509.SubjectKeyIdentifier.from_public_key(self.key.public_key()), critical=False
            )
            .sign(self.key, hashes.SHA256())
        )

    @property
    def pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)

    def write(self, folder: Path, name: str = "ca") -> Path:
        return write_atomically(folder / f"{name}.crt", self.pem)

    def issue(
        self,
        cn: str,
        *,
        uris: tuple[str, ...] = (),
        dns: tuple[str, ...] = (),
        ips: tuple[str, ...] = (),
        server: bool = False,
        valid_days: float = 1.0,
    ) -> Issued:
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.now(UTC)
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
            .issuer_name(self.name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(minutes=5))
            .not_valid_after(now + timedelta(days=valid_days))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.ExtendedKeyUsage(
                    [ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH]
                ),
                critical=False,
            )
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()),
                critical=False,
            )
        )
        names: list[x509.GeneralName] = [x509.UniformResourceIdentifier(u) for u in uris]
        names += [x509.DNSName(d) for d in dns]
        names += [x509.IPAddress(ipaddress.ip_address(i)) for i in ips]
        if names:
            builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
        return Issued(builder.sign(self.key, hashes.SHA256()), key)

    def issue_server(self, cn: str = "localhost") -> Issued:
        """A server certificate for localhost and 127.0.0.1."""
        return self.issue(cn, dns=("localhost",), ips=("127.0.0.1",), server=True)

    def issue_client(
        self, spiffe_id: str = "spiffe://test/ns/sim/writer", *, dns: tuple[str, ...] = ()
    ) -> Issued:
        """A client certificate whose URI SAN is ``spiffe_id`` (none when empty)."""
        return self.issue("client", uris=(spiffe_id,) if spiffe_id else (), dns=dns)


# --- tokens -----------------------------------------------------------------------------------


@functools.cache
def rsa_key(index: int = 0) -> rsa.RSAPrivateKey:
    """A 2048-bit RSA key (cached per index: generating one takes a while)."""
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def ec_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def ed_key() -> ed25519.Ed25519PrivateKey:
    return ed25519.Ed25519PrivateKey.generate()


def public_jwk(private_key: Any, kid: str, **extra: Any) -> dict[str, Any]:
    """The public JWK of a private key (``extra`` overrides or adds members)."""
    data = json.loads(_algorithm_of(private_key).to_jwk(private_key.public_key()))
    return {**data, "kid": kid, "use": "sig", **extra}


def _algorithm_of(private_key: Any) -> Any:
    if isinstance(private_key, rsa.RSAPrivateKey):
        return jwt.algorithms.RSAAlgorithm(jwt.algorithms.RSAAlgorithm.SHA256)
    if isinstance(private_key, ec.EllipticCurvePrivateKey):
        return jwt.algorithms.ECAlgorithm(jwt.algorithms.ECAlgorithm.SHA256)
    return jwt.algorithms.OKPAlgorithm()


def write_jwks(path: Path, *jwks: dict[str, Any]) -> Path:
    return write_atomically(path, json.dumps({"keys": list(jwks)}).encode())


def claims(sub: str = "ci-nightly", *, ttl_s: float = 300, **extra: Any) -> dict[str, Any]:
    """Claims valid now for ``ttl_s`` seconds, for the default audience."""
    now = int(time.time())
    return {"sub": sub, "aud": AUDIENCE, "iat": now, "exp": now + int(ttl_s), **extra}


def sign(
    payload: dict[str, Any], key: Any, algorithm: str, kid: str | None = None, **headers: Any
) -> str:
    """A JWT of ``payload``, signed by ``key`` with ``algorithm``."""
    header = {**headers, **({"kid": kid} if kid else {})}
    return jwt.encode(payload, key, algorithm=algorithm, headers=header or None)


def tamper(token: str) -> str:
    """The same token with one claim changed and the old signature kept."""
    head, body, signature = token.split(".")
    data = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
    data["sub"] = data["sub"] + "-admin"
    forged = base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()
    return f"{head}.{forged}.{signature}"


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def hs256_confusion_token(public_pem: bytes, payload: dict[str, Any]) -> str:
    """The classic alg-confusion forgery: HS256 "signed" with the RSA public key's PEM.

    Built by hand because PyJWT (rightly) refuses to use a PEM key as an HMAC secret.
    """
    head = b64url(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    body = b64url(json.dumps(payload).encode())
    mac = hmac.new(public_pem, f"{head}.{body}".encode(), hashlib.sha256).digest()
    return f"{head}.{body}.{b64url(mac)}"
