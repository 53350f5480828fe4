"""The security mode the settings make (secure or the explicit insecure one), where it may listen.

The checks ``serve`` runs before it binds anything.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from costsim_analytics.settings import Settings


class SecurityConfigError(ValueError):
    """The TLS, token and policy settings do not make a coherent setup."""


@dataclass(frozen=True, slots=True)
class SecurityMode:
    """What :func:`security_mode` decided.

    ``insecure`` is the explicit insecure mode: no policy, every caller is the insecure
    principal. ``tls`` is whether both ports speak TLS; ``mtls`` whether client certificates
    are required; ``tokens`` which bearer-token keys are configured (``""``: none).
    """

    insecure: bool
    tls: bool
    mtls: bool
    tokens: Literal["", "jwks", "hs256"]
    warnings: tuple[str, ...] = ()

    @property
    def exposed_safely(self) -> bool:
        """Whether a non-loopback listen address is acceptable without ``COSTSIM_INSECURE``."""
        return not self.insecure and self.tls


def security_mode(settings: Settings) -> SecurityMode:
    """Decide between the secure and the explicit insecure mode from the settings.

    Secure mode is a policy file plus at least one way to authenticate (a client CA or token
    keys); without a policy the service runs in the explicit insecure mode (logged as a
    warning by the caller). Half a setup is refused rather than guessed at.

    Raises:
        SecurityConfigError: a certificate without its key (or the reverse), a client CA
            without a certificate, both JWKS and HS256 keys, credentials without a policy,
            or a policy without any way to authenticate.
    """
    s = settings
    if (s.tls_cert is None) != (s.tls_key is None):
        raise SecurityConfigError("COSTSIM_TLS_CERT and COSTSIM_TLS_KEY must be set together")
    tls = s.tls_cert is not None
    if s.tls_client_ca is not None and not tls:
        raise SecurityConfigError("COSTSIM_TLS_CLIENT_CA needs COSTSIM_TLS_CERT and _KEY")
    if s.jwt_jwks_file is not None and s.jwt_hs256_secret_file is not None:
        raise SecurityConfigError(
            "set COSTSIM_JWT_JWKS_FILE or COSTSIM_JWT_HS256_SECRET_FILE, not both"
        )
    tokens: Literal["", "jwks", "hs256"] = (
        "jwks" if s.jwt_jwks_file is not None else "hs256" if s.jwt_hs256_secret_file else ""
    )
    mtls = s.tls_client_ca is not None
    if s.policy_file is None:
        if mtls or tokens:
            # Identities without a policy would be granted nothing: a half-done setup.
            raise SecurityConfigError(
                "client certificates or tokens are configured but COSTSIM_POLICY_FILE is not"
            )
        return SecurityMode(
            insecure=True,
            tls=tls,
            mtls=False,
            tokens="",
            warnings=("insecure mode: no COSTSIM_POLICY_FILE, every caller may do everything",),
        )
    if not mtls and not tokens:
        raise SecurityConfigError(
            "COSTSIM_POLICY_FILE needs a way to authenticate: COSTSIM_TLS_CLIENT_CA or "
            "COSTSIM_JWT_JWKS_FILE / COSTSIM_JWT_HS256_SECRET_FILE"
        )
    warnings = () if tls else ("bearer tokens over plaintext: set COSTSIM_TLS_CERT and _KEY",)
    return SecurityMode(insecure=False, tls=tls, mtls=mtls, tokens=tokens, warnings=warnings)


def is_loopback(address: str) -> bool:
    """Whether ``host:port`` listens on loopback only (``127.0.0.0/8``, ``::1``, localhost).

    Example:
        >>> is_loopback("127.0.0.1:50051"), is_loopback("[::1]:0"), is_loopback("0.0.0.0:1")
        (True, True, False)

    """
    host = address.rpartition(":")[0] if ":" in address else address
    host = host.strip().strip("[]").lower()
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a hostname may resolve to anything: treat it as public


def check_listen(mode: SecurityMode, addresses: Iterable[str], *, allow_insecure: bool) -> None:
    """Refuse to expose an insecure setup beyond loopback unless explicitly allowed.

    Raises:
        SecurityConfigError: an address is not loopback, the setup is insecure (no policy, or
            no TLS) and ``allow_insecure`` (``--insecure`` / ``COSTSIM_INSECURE``) is False.
    """
    if mode.exposed_safely or allow_insecure:
        return
    for address in addresses:
        if address and not is_loopback(address):
            why = "without a policy" if mode.insecure else "without TLS"
            raise SecurityConfigError(
                f"refusing to listen on {address} {why}: use a loopback address, configure "
                "TLS and a policy (docs/security.md), or pass --insecure / COSTSIM_INSECURE=true"
            )
