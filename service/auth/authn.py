"""Authentication: from a request's credentials to a :class:`Principal`, for any transport.

The order, for every call that is not public:

1. an ``authorization: Bearer <JWT>`` header: the token must verify (a present but bad token
   is refused, never skipped in favour of the certificate); identity = ``sub``;
2. else the verified client certificate's identity (``auth/tls.py``);
3. else ``CREDENTIALS_MISSING``.

The identity is then resolved through the policy; one that matches no entry is refused with
PERMISSION_DENIED ``PRINCIPAL_UNKNOWN`` (it did authenticate; it is just granted nothing).
In the explicit insecure mode (:meth:`Authenticator.insecure`: no policy) every caller is
:data:`INSECURE_PRINCIPAL` and credentials are not looked at.

Reasons: UNAUTHENTICATED ``CREDENTIALS_MISSING``, ``TOKEN_INVALID``, ``TOKEN_EXPIRED``,
``TOKEN_NOT_YET_VALID``; PERMISSION_DENIED ``PRINCIPAL_UNKNOWN``.

Example:
    >>> Authenticator.insecure().authenticate((), None).id
    'insecure'

"""

from __future__ import annotations

from collections.abc import Iterable

from costsim_analytics.auth.policy import PolicyStore
from costsim_analytics.auth.principal import INSECURE_PRINCIPAL, AuthenticatedBy, Principal
from costsim_analytics.auth.tokens import TokenVerifier, invalid
from costsim_analytics.engines.errors import PermissionDenied, Unauthenticated

AUTHORIZATION = "authorization"
Metadata = Iterable[tuple[str, str | bytes]]


def bearer_token(metadata: Metadata) -> str | None:
    """The token of the ``authorization`` header; None when there is none.

    Raises:
        Unauthenticated: ``TOKEN_INVALID`` for several headers, another scheme or no token.
    """
    values = [value for key, value in metadata if key.lower() == AUTHORIZATION]
    if not values:
        return None
    if len(values) > 1:
        raise invalid()
    value = values[0]
    if isinstance(value, bytes):
        value = value.decode("latin-1")
    scheme, _, token = value.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise invalid()
    return token


class Authenticator:
    """Turns credentials into a principal; see the module docstring for the rules."""

    def __init__(self, policy: PolicyStore | None, tokens: TokenVerifier | None) -> None:
        self._policy = policy
        self._tokens = tokens

    @classmethod
    def insecure(cls) -> Authenticator:
        """The explicit insecure mode: every caller is the insecure principal."""
        return cls(None, None)

    @property
    def is_insecure(self) -> bool:
        """Whether this is the insecure mode."""
        return self._policy is None

    def authenticate(self, metadata: Metadata, peer_identity: str | None) -> Principal:
        """The principal of a call.

        Args:
            metadata: the request's headers as ``(lowercase key, value)`` pairs.
            peer_identity: the verified client certificate's identity, or None.

        Raises:
            Unauthenticated: no credentials, or a token that does not verify.
            PermissionDenied: ``PRINCIPAL_UNKNOWN``, an identity the policy does not know.
        """
        if self._policy is None:
            return INSECURE_PRINCIPAL
        token = bearer_token(metadata)
        how: AuthenticatedBy
        if token is not None:
            if self._tokens is None:
                raise invalid()  # tokens are not configured: no token can verify
            identity, how = self._tokens.verify(token).subject, "token"
        elif peer_identity:
            identity, how = peer_identity, "mtls"
        else:
            raise Unauthenticated(
                "credentials required: a client certificate or a bearer token",
                reason="CREDENTIALS_MISSING",
            )
        principal = self._policy.resolve(identity, how)
        if principal is None:
            raise PermissionDenied(
                "this identity is not granted anything by the policy", reason="PRINCIPAL_UNKNOWN"
            )
        return principal
