"""Bearer tokens: JWT verification with PyJWT against local keys, and minting for tests.

Keys come from a local JWKS file (``COSTSIM_JWT_JWKS_FILE``; RSA → RS256, EC P-256 → ES256,
Ed25519 → EdDSA) or a shared secret file (``COSTSIM_JWT_HS256_SECRET_FILE``; HS256). Nothing is
fetched over the network. **The algorithm is pinned by the key**, never chosen by the token's
header: a token whose ``alg`` differs from its key's is refused before any signature check, so
the classic confusion (an HS256 token "signed" with an RSA public key) cannot verify.

Claims: ``exp`` and ``sub`` required, ``exp``/``nbf`` with :data:`LEEWAY_S` of clock skew,
``aud`` must be the configured audience, ``iss`` the configured issuer when one is set. Every
failure other than expiry says the same thing ("bearer token is not valid"), so a caller
learns nothing about which part matched.

Example:
    >>> secret = b"s" * 32
    >>> verifier = TokenVerifier(StaticSecret(secret), audience="costsim-analytics")
    >>> verifier.verify(mint_token("ci", secret, "costsim-analytics", 60)).subject
    'ci'

"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import jwt
from cryptography.hazmat.primitives.asymmetric import rsa

from costsim_analytics.engines.errors import Unauthenticated

log = logging.getLogger(__name__)

LEEWAY_S = 30.0
MIN_SECRET_BYTES = 32
MIN_RSA_BITS = 2048
MAX_TOKEN_CHARS = 8192
# Verified tokens are remembered at most this long (and never past their exp), so a key
# removed from the JWKS stops being honoured within this time even for tokens already seen.
CACHE_TTL_S = 60.0
CACHE_SIZE = 4096
# How often the key file's mtime/size is looked at; the check is one stat.
KEY_CHECK_INTERVAL_S = 1.0

_INVALID = "bearer token is not valid"
# By key type (and curve): the only algorithm a key verifies.
_ALG_BY_KEY = {("RSA", None): "RS256", ("EC", "P-256"): "ES256", ("OKP", "Ed25519"): "EdDSA"}


class KeyConfigError(ValueError):
    """The key file is unreadable or holds unusable keys (a start-up configuration error)."""


def invalid() -> Unauthenticated:
    """The one error for every token that does not verify (except expiry)."""
    return Unauthenticated(_INVALID, reason="TOKEN_INVALID")


@dataclass(frozen=True, slots=True)
class VerificationKey:
    """A key with the one algorithm it is allowed to verify."""

    kid: str | None
    algorithm: str
    key: Any  # a cryptography public key, or the HS256 secret bytes


class KeySource(Protocol):
    """Where the verification keys come from; ``generation`` changes when they do."""

    def keys(self) -> tuple[int, tuple[VerificationKey, ...]]:
        """``(generation, keys)``, re-reading the source when it changed."""
        ...


def read_secret_file(path: Path) -> bytes:
    """The HS256 secret: the file's bytes with one trailing newline stripped.

    Raises:
        KeyConfigError: unreadable, or shorter than :data:`MIN_SECRET_BYTES`.
    """
    try:
        secret = path.read_bytes()
    except OSError as exc:
        raise KeyConfigError(f"{path}: cannot read the secret file: {exc}") from None
    if secret.endswith(b"\r\n"):
        secret = secret[:-2]
    elif secret.endswith(b"\n"):
        secret = secret[:-1]
    if len(secret) < MIN_SECRET_BYTES:
        raise KeyConfigError(f"{path}: an HS256 secret must be at least {MIN_SECRET_BYTES} bytes")
    return secret


class StaticSecret:
    """A fixed HS256 secret (from ``COSTSIM_JWT_HS256_SECRET_FILE``, read once at start)."""

    def __init__(self, secret: bytes) -> None:
        if len(secret) < MIN_SECRET_BYTES:
            raise KeyConfigError(f"an HS256 secret must be at least {MIN_SECRET_BYTES} bytes")
        self._keys = (VerificationKey(None, "HS256", secret),)

    @classmethod
    def from_file(cls, path: Path) -> StaticSecret:
        """Read the secret file (see :func:`read_secret_file`)."""
        return cls(read_secret_file(path))

    def keys(self) -> tuple[int, tuple[VerificationKey, ...]]:
        """The one key, generation 0."""
        return 0, self._keys


def parse_jwks(text: str, source: str = "JWKS") -> tuple[VerificationKey, ...]:
    """The public keys of a JWKS document, each pinned to its key type's algorithm.

    Raises:
        KeyConfigError: not a JWKS, a symmetric or private key, an unsupported type or curve, an
            ``alg`` that contradicts the key type, or an RSA key under 2048 bits.
    """
    try:
        document = json.loads(text)
    except json.JSONDecodeError as exc:
        raise KeyConfigError(f"{source}: not JSON: {exc.msg}") from None
    if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
        raise KeyConfigError(f'{source}: must be a JWKS object {{"keys": [...]}}')
    keys: list[VerificationKey] = []
    for i, jwk in enumerate(document["keys"]):
        where = f"{source}: keys[{i}]"
        if not isinstance(jwk, dict):
            raise KeyConfigError(f"{where}: must be an object")
        kty, crv = jwk.get("kty"), jwk.get("crv")
        if "d" in jwk or kty == "oct":
            # A private or shared key in a file meant to be public is a leak; refuse it loudly.
            raise KeyConfigError(
                f"{where}: only public RSA, EC P-256 and Ed25519 keys are accepted"
            )
        algorithm = (
            _ALG_BY_KEY.get((kty, crv if kty != "RSA" else None))
            if isinstance(kty, str) and (crv is None or isinstance(crv, str))
            else None
        )
        if algorithm is None:
            raise KeyConfigError(
                f"{where}: unsupported key type {kty!r} / curve {jwk.get('crv')!r}"
            )
        if jwk.get("alg", algorithm) != algorithm:
            raise KeyConfigError(f"{where}: alg {jwk.get('alg')!r} does not fit a {kty} key")
        if jwk.get("use", "sig") != "sig":
            continue  # an encryption key: not for verifying tokens
        try:
            key = jwt.PyJWK(jwk, algorithm=algorithm).key
        except jwt.PyJWTError as exc:
            raise KeyConfigError(f"{where}: {exc}") from None
        if isinstance(key, rsa.RSAPublicKey) and key.key_size < MIN_RSA_BITS:
            raise KeyConfigError(f"{where}: RSA keys must have at least {MIN_RSA_BITS} bits")
        kid = jwk.get("kid")
        keys.append(VerificationKey(kid if isinstance(kid, str) else None, algorithm, key))
    if not keys:
        raise KeyConfigError(f"{source}: holds no signing keys")
    return tuple(keys)


class JwksFile:
    """A local JWKS file, re-read when its mtime or size changes.

    A file that turns invalid (or disappears) is logged and the previous keys stay in force,
    so a half-written rotation cannot lock every caller out.
    """

    def __init__(self, path: Path, clock: Callable[[], float] = time.monotonic) -> None:
        self.path = path
        self._clock = clock
        self._lock = threading.Lock()
        self._stamp = self._stat()
        self._keys = parse_jwks(self._read(), str(path))
        self._generation = 0
        self._checked = clock()
        self.last_error = ""

    def _stat(self) -> tuple[int, int, int]:
        try:
            st = os.stat(self.path)
        except OSError as exc:
            raise KeyConfigError(f"{self.path}: cannot read the JWKS file: {exc}") from None
        return st.st_mtime_ns, st.st_size, st.st_ino

    def _read(self) -> str:
        try:
            return self.path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise KeyConfigError(f"{self.path}: cannot read the JWKS file: {exc}") from None

    def keys(self) -> tuple[int, tuple[VerificationKey, ...]]:
        """The current keys, re-read at most every :data:`KEY_CHECK_INTERVAL_S` on change."""
        now = self._clock()
        if now - self._checked >= KEY_CHECK_INTERVAL_S:
            with self._lock:
                self._checked = now
                try:
                    stamp = self._stat()
                    if stamp != self._stamp:
                        self._keys = parse_jwks(self._read(), str(self.path))
                        self._stamp = stamp
                        self._generation += 1
                        self.last_error = ""
                except KeyConfigError as exc:
                    if str(exc) != self.last_error:  # once per problem, not once per second
                        log.error("JWKS reload refused, keeping the previous keys: %s", exc)
                    self.last_error = str(exc)
        return self._generation, self._keys


@dataclass(frozen=True, slots=True)
class VerifiedToken:
    """What a valid token says."""

    subject: str
    expires_at: float
    claims: Mapping[str, Any]


class TokenVerifier:
    """Verifies bearer JWTs and remembers the valid ones briefly.

    The cache (bounded LRU keyed by the token string) makes a repeated token cost a dict
    lookup instead of a signature check; an entry lives until the token's ``exp`` (plus the
    leeway) or :data:`CACHE_TTL_S`, whichever is first, and is dropped when the keys change.
    """

    def __init__(
        self,
        keys: KeySource,
        *,
        audience: str,
        issuer: str | None = None,
        leeway_s: float = LEEWAY_S,
        clock: Callable[[], float] = time.time,
        cache_size: int = CACHE_SIZE,
    ) -> None:
        self._keys = keys
        self._audience = audience
        self._issuer = issuer or None
        self._leeway_s = leeway_s
        self._clock = clock
        self._cache_size = cache_size
        self._cache: OrderedDict[str, tuple[VerifiedToken, float, int]] = OrderedDict()
        self._lock = threading.Lock()

    def verify(self, token: str) -> VerifiedToken:
        """The verified token.

        Raises:
            Unauthenticated: ``TOKEN_EXPIRED``, ``TOKEN_NOT_YET_VALID`` or ``TOKEN_INVALID``.
        """
        generation, keys = self._keys.keys()
        now = self._clock()
        with self._lock:
            hit = self._cache.get(token)
            if hit is not None:
                verified, until, seen_generation = hit
                if now < until and seen_generation == generation:
                    self._cache.move_to_end(token)
                    return verified
                del self._cache[token]
        verified = self._verify(token, keys, now)
        until = min(verified.expires_at + self._leeway_s, now + CACHE_TTL_S)
        with self._lock:
            self._cache[token] = (verified, until, generation)
            if len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        return verified

    def _verify(self, token: str, keys: tuple[VerificationKey, ...], now: float) -> VerifiedToken:
        if not token or len(token) > MAX_TOKEN_CHARS:
            raise invalid()
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise invalid() from None
        alg, kid = header.get("alg"), header.get("kid")
        # Pinning: only keys whose own algorithm is the header's are tried, and each only with
        # that algorithm; a kid, when present, must name the key.
        candidates = [
            k for k in keys if k.algorithm == alg and (kid is None or k.kid is None or k.kid == kid)
        ]
        for key in candidates:
            try:
                claims: dict[str, Any] = jwt.decode(
                    token,
                    key.key,
                    algorithms=[key.algorithm],
                    audience=self._audience,
                    issuer=self._issuer,
                    leeway=self._leeway_s,
                    options={"require": ["exp", "sub"], "verify_iat": False},
                )
            except jwt.InvalidSignatureError:
                continue  # another key with the same algorithm may have signed it
            except jwt.ExpiredSignatureError:
                raise Unauthenticated("bearer token expired", reason="TOKEN_EXPIRED") from None
            except jwt.ImmatureSignatureError:
                raise Unauthenticated(
                    "bearer token not yet valid", reason="TOKEN_NOT_YET_VALID"
                ) from None
            except jwt.PyJWTError:
                raise invalid() from None
            subject = claims.get("sub")
            if not isinstance(subject, str) or not subject or len(subject) > 1024:
                raise invalid()
            return VerifiedToken(subject, float(claims["exp"]), claims)
        raise invalid()


def mint_token(
    sub: str,
    secret: bytes,
    audience: str,
    ttl_s: float,
    issuer: str | None = None,
    extra: Mapping[str, Any] | None = None,
) -> str:
    """An HS256 token for ``sub`` valid for ``ttl_s`` seconds (local testing and scripts).

    Example:
        >>> len(mint_token("me", b"x" * 32, "costsim-analytics", 60).split("."))
        3

    """
    if len(secret) < MIN_SECRET_BYTES:
        raise KeyConfigError(f"an HS256 secret must be at least {MIN_SECRET_BYTES} bytes")
    now = int(time.time())
    claims: dict[str, Any] = {**(extra or {})}
    claims.update({"sub": sub, "aud": audience, "iat": now, "exp": now + int(ttl_s)})
    if issuer:
        claims["iss"] = issuer
    return jwt.encode(claims, secret, algorithm="HS256")
