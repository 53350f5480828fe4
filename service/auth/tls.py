"""TLS for both ports, reloaded from disk without a restart, and the identity of a peer.

:class:`ReloadingTls` holds the PEM certificate chain, key and optional client CA
(``COSTSIM_TLS_CERT``, ``COSTSIM_TLS_KEY``, ``COSTSIM_TLS_CLIENT_CA``). Each new connection
looks at the files' mtime, size and inode (three ``stat`` calls) and, when they changed, reads
and validates them; a pair that does not validate (a rotation caught half-written) is logged
and the previous material stays in force. :meth:`ReloadingTls.reload` forces a re-read (SIGHUP).

- gRPC: :meth:`ReloadingTls.grpc_credentials` uses ``grpc.dynamic_ssl_server_credentials``,
  whose fetcher gRPC calls before every handshake. With a client CA, client certificates are
  required (gRPC Python offers required or not requested, nothing between).
- HTTP: :meth:`ReloadingTls.ssl_context` is one context for ``asyncio.start_server``; its SNI
  callback (which OpenSSL runs on every handshake, with or without SNI) swaps in a fresh
  context built for the current files.

The peer's identity is its certificate's URI SAN (SPIFFE ``spiffe://…``; the first ``spiffe``
one when there are several), else its first DNS SAN, else its subject CN.
"""

from __future__ import annotations

import functools
import logging
import os
import ssl
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import NameOID

log = logging.getLogger(__name__)

Stamp = tuple[tuple[int, int, int], ...]


class TlsError(ValueError):
    """The certificate, key or client CA files are unreadable or do not fit together."""


@dataclass(frozen=True, slots=True)
class TlsFiles:
    """Paths of the PEM files; ``client_ca`` set turns on mutual TLS."""

    cert: Path
    key: Path
    client_ca: Path | None = None

    @property
    def paths(self) -> tuple[Path, ...]:
        """Every file that is watched."""
        ca = () if self.client_ca is None else (self.client_ca,)
        return (self.cert, self.key, *ca)


@dataclass(frozen=True, slots=True)
class TlsMaterial:
    """Validated PEM bytes of one generation of the files."""

    cert_pem: bytes
    key_pem: bytes
    client_ca_pem: bytes | None
    stamp: Stamp


def _stamp(paths: Iterable[Path]) -> Stamp:
    stamps = []
    for path in paths:
        try:
            st = os.stat(path)
        except OSError as exc:
            raise TlsError(f"{path}: {exc.strerror or exc}") from None
        stamps.append((st.st_mtime_ns, st.st_size, st.st_ino))
    return tuple(stamps)


def _public_der(key: Any) -> bytes:
    return bytes(
        key.public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )


def load_material(files: TlsFiles) -> TlsMaterial:
    """Read and validate the files: PEM, and the key belongs to the first certificate.

    Raises:
        TlsError: a file is unreadable, not PEM, or the key does not match the certificate.
    """
    stamp = _stamp(files.paths)
    try:
        cert_pem = files.cert.read_bytes()
        key_pem = files.key.read_bytes()
        ca_pem = files.client_ca.read_bytes() if files.client_ca is not None else None
    except OSError as exc:
        raise TlsError(f"cannot read the TLS files: {exc}") from None
    try:
        chain = x509.load_pem_x509_certificates(cert_pem)
    except ValueError:
        raise TlsError(f"{files.cert}: not a PEM certificate") from None
    try:
        key = serialization.load_pem_private_key(key_pem, password=None)
    except (ValueError, TypeError):
        raise TlsError(f"{files.key}: not an unencrypted PEM private key") from None
    if _public_der(key.public_key()) != _public_der(chain[0].public_key()):
        raise TlsError(f"{files.key} is not the key of the certificate in {files.cert}")
    if ca_pem is not None:
        try:
            x509.load_pem_x509_certificates(ca_pem)
        except ValueError:
            raise TlsError(f"{files.client_ca}: not a PEM certificate bundle") from None
    return TlsMaterial(cert_pem, key_pem, ca_pem, stamp)


class ReloadingTls:
    """The TLS material in force for both ports; see the module docstring.

    Raises TlsError at construction when the files are not usable: the server must not start.
    """

    def __init__(self, files: TlsFiles) -> None:
        self.files = files
        self._lock = threading.Lock()
        self._material = load_material(files)
        self.generation = 0
        self._grpc_generation = 0
        self._contexts: dict[tuple[int, bool], ssl.SSLContext] = {}
        self._failed_stamp: Stamp | None = None
        self._failed_message = ""

    @property
    def mutual(self) -> bool:
        """Whether clients must present a certificate (a client CA is configured)."""
        return self.files.client_ca is not None

    @property
    def material(self) -> TlsMaterial:
        """The validated material in force."""
        return self._material

    def reload(self, *, force: bool = True) -> bool:
        """Re-read the files (``force=False``: only when their stamps changed).

        Returns True when new material is in force; a failure is logged and the previous
        material stays.
        """
        with self._lock:
            stamp: Stamp | None = None
            try:
                stamp = _stamp(self.files.paths)
                # An unchanged file set, or one that already failed, is not read again: this
                # runs before every handshake.
                if not force and stamp in (self._material.stamp, self._failed_stamp):
                    return False
                material = load_material(self.files)
            except TlsError as exc:
                if force or self._failed_message != str(exc):
                    log.error("TLS reload refused, keeping the previous certificate: %s", exc)
                self._failed_stamp, self._failed_message = stamp, str(exc)
                return False
            self._failed_stamp, self._failed_message = None, ""
            self._material = material
            self.generation += 1
            self._contexts.clear()
        log.info("TLS certificate reloaded from %s", self.files.cert)
        return True

    def check(self) -> bool:
        """Reload when the files changed (cheap: the stamps only); True when reloaded."""
        try:
            if _stamp(self.files.paths) == self._material.stamp:
                return False
        except TlsError:
            pass  # a file missing mid-rotation: reload() logs it once and keeps the material
        return self.reload(force=False)

    # --- gRPC --------------------------------------------------------------------------------

    def _grpc_configuration(self) -> grpc.ServerCertificateConfiguration:
        m = self._material
        return grpc.ssl_server_certificate_configuration(
            [(m.key_pem, m.cert_pem)], root_certificates=m.client_ca_pem
        )

    def _fetch(self) -> grpc.ServerCertificateConfiguration | None:
        # Runs on a gRPC core thread before every handshake: None means "no change".
        try:
            self.check()
            with self._lock:
                if self._grpc_generation == self.generation:
                    return None
                self._grpc_generation = self.generation
                return self._grpc_configuration()
        except Exception:  # never let an error escape into the gRPC core
            log.exception("TLS certificate check failed")
            return None

    def grpc_credentials(self) -> grpc.ServerCredentials:
        """Server credentials that follow the files; mTLS required with a client CA."""
        with self._lock:
            self._grpc_generation = self.generation
            initial = self._grpc_configuration()
        return grpc.dynamic_ssl_server_credentials(
            initial,
            self._fetch,  # type: ignore[arg-type]  # the stub omits the documented None
            require_client_authentication=self.mutual,
        )

    # --- HTTP (ssl module) -------------------------------------------------------------------

    def _build_context(self, require_client_cert: bool) -> ssl.SSLContext:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        try:
            # From the paths: the ssl module cannot load a key from memory. A file changed
            # since load_material() fails here or yields the newer pair, both handled.
            context.load_cert_chain(self.files.cert, self.files.key)
            if self._material.client_ca_pem is not None:
                context.load_verify_locations(cadata=self._material.client_ca_pem.decode())
                context.verify_mode = (
                    ssl.CERT_REQUIRED if require_client_cert else ssl.CERT_OPTIONAL
                )
        except (ssl.SSLError, OSError, UnicodeDecodeError) as exc:
            raise TlsError(f"cannot build the TLS context: {exc}") from None
        return context

    def _current_context(self, require_client_cert: bool) -> ssl.SSLContext:
        self.check()
        with self._lock:
            key = (self.generation, require_client_cert)
            context = self._contexts.get(key)
        if context is None:
            context = self._build_context(require_client_cert)
            with self._lock:
                self._contexts[key] = context
        return context

    def ssl_context(self, *, require_client_cert: bool = True) -> ssl.SSLContext:
        """A server context whose certificate follows the files, for the HTTP side port.

        ``require_client_cert`` (only meaningful with a client CA) False asks for a client
        certificate without requiring one, so a browser with a bearer token can connect.
        """
        front = self._build_context(require_client_cert)

        def swap(connection: Any, server_name: str | None, _: ssl.SSLContext) -> None:
            try:
                connection.context = self._current_context(require_client_cert)
            except TlsError as exc:  # keep the front context; the handshake still works
                log.error("TLS context refresh failed: %s", exc)

        front.sni_callback = swap
        return front


# --- identity of the peer ---------------------------------------------------------------------


def identity_from_certificate(cert: x509.Certificate) -> str | None:
    """URI SAN (a ``spiffe://`` one first), else DNS SAN, else CN; None when none is there."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        uris: list[str] = []
        dns: list[str] = []
    else:
        uris = san.get_values_for_type(x509.UniformResourceIdentifier)
        dns = san.get_values_for_type(x509.DNSName)
    spiffe = [u for u in uris if u.startswith("spiffe://")]
    if spiffe or uris:
        return (spiffe or uris)[0]
    if dns:
        return dns[0]
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if names:
        value = names[0].value
        return value if isinstance(value, str) else value.decode()
    return None


@functools.lru_cache(maxsize=1024)
def _identity_from_pem(pem: bytes) -> str | None:
    # Cached: a client reconnecting with the same certificate costs one dict lookup.
    try:
        return identity_from_certificate(x509.load_pem_x509_certificate(pem))
    except ValueError:
        return None


def identity_from_auth_context(auth: Mapping[str, Iterable[bytes]]) -> str | None:
    """The peer's identity from ``grpc.aio.ServicerContext.auth_context()``.

    The PEM certificate (``x509_pem_cert``) is parsed to tell URI from DNS SANs, which the
    flat ``x509_subject_alternative_name`` list does not; without it, the CN is used. None
    when the peer presented no certificate.
    """
    pems = list(auth.get("x509_pem_cert", ()))
    if pems:
        return _identity_from_pem(pems[0])
    names = list(auth.get("x509_common_name", ()))
    return names[0].decode("utf-8", "replace") if names else None


def identity_from_peercert(peercert: Mapping[str, Any] | None) -> str | None:
    """The peer's identity from ``ssl.SSLObject.getpeercert()`` (HTTP side port).

    None when no verified certificate was presented (``getpeercert()`` answers None or {}).
    """
    if not peercert:
        return None
    sans = peercert.get("subjectAltName", ())
    uris = [value for kind, value in sans if kind == "URI"]
    spiffe = [u for u in uris if u.startswith("spiffe://")]
    if spiffe or uris:
        return str((spiffe or uris)[0])
    dns = [value for kind, value in sans if kind == "DNS"]
    if dns:
        return str(dns[0])
    for rdn in peercert.get("subject", ()):
        for key, value in rdn:
            if key == "commonName":
                return str(value)
    return None
