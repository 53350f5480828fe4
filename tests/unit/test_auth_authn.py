"""The authenticator: token first, then certificate, then CREDENTIALS_MISSING; unknown
identities are PRINCIPAL_UNKNOWN; the insecure mode ignores credentials."""

import pytest

from costsim_analytics.auth.authn import Authenticator, bearer_token
from costsim_analytics.auth.policy import PolicyStore
from costsim_analytics.auth.principal import INSECURE_PRINCIPAL, Role
from costsim_analytics.auth.tokens import StaticSecret, TokenVerifier
from costsim_analytics.engines.errors import PermissionDenied, Unauthenticated
from tests.security import AUDIENCE, HS_SECRET, claims, sign, tamper

POLICY = """
[[principal]]
id = "ci-nightly"
roles = ["reader"]
tenants = ["*"]

[[principal]]
id = "spiffe://test/ns/sim/writer"
roles = ["writer"]
tenants = ["acme"]
"""


@pytest.fixture
def authenticator(tmp_path):
    path = tmp_path / "policy.toml"
    path.write_text(POLICY)
    return Authenticator(
        PolicyStore(path), TokenVerifier(StaticSecret(HS_SECRET), audience=AUDIENCE)
    )


def bearer(token):
    return (("x-request-id", "r1"), ("authorization", f"Bearer {token}"))


def test_a_valid_token_authenticates_as_its_subject(authenticator):
    p = authenticator.authenticate(bearer(sign(claims("ci-nightly"), HS_SECRET, "HS256")), None)
    assert (p.id, p.authenticated_by, p.roles) == ("ci-nightly", "token", {Role.READER})


def test_the_token_wins_over_the_certificate(authenticator):
    token = sign(claims("ci-nightly"), HS_SECRET, "HS256")
    p = authenticator.authenticate(bearer(token), "spiffe://test/ns/sim/writer")
    assert p.id == "ci-nightly"


def test_a_bad_token_is_refused_even_with_a_good_certificate(authenticator):
    token = tamper(sign(claims("ci-nightly"), HS_SECRET, "HS256"))
    with pytest.raises(Unauthenticated) as info:
        authenticator.authenticate(bearer(token), "spiffe://test/ns/sim/writer")
    assert info.value.reason == "TOKEN_INVALID"


def test_the_certificate_identity_without_a_token(authenticator):
    p = authenticator.authenticate((("x-request-id", "r1"),), "spiffe://test/ns/sim/writer")
    assert (p.id, p.authenticated_by, p.tenants) == (
        "spiffe://test/ns/sim/writer",
        "mtls",
        {"acme"},
    )


def test_no_credentials_is_credentials_missing(authenticator):
    with pytest.raises(Unauthenticated) as info:
        authenticator.authenticate((), None)
    assert info.value.reason == "CREDENTIALS_MISSING"


def test_an_identity_unknown_to_the_policy_is_permission_denied(authenticator):
    with pytest.raises(PermissionDenied) as info:
        authenticator.authenticate((), "spiffe://test/ns/other")
    assert info.value.reason == "PRINCIPAL_UNKNOWN"
    with pytest.raises(PermissionDenied):
        authenticator.authenticate(bearer(sign(claims("stranger"), HS_SECRET, "HS256")), None)


def test_tokens_are_refused_when_no_keys_are_configured(tmp_path):
    path = tmp_path / "policy.toml"
    path.write_text(POLICY)
    certificates_only = Authenticator(PolicyStore(path), None)
    with pytest.raises(Unauthenticated) as info:
        certificates_only.authenticate(bearer(sign(claims(), HS_SECRET, "HS256")), None)
    assert info.value.reason == "TOKEN_INVALID"


def test_the_insecure_mode_is_everyone_as_the_insecure_principal():
    insecure = Authenticator.insecure()
    assert insecure.is_insecure
    assert insecure.authenticate((), None) is INSECURE_PRINCIPAL
    assert insecure.authenticate(bearer("garbage"), "anyone") is INSECURE_PRINCIPAL


@pytest.mark.parametrize(
    "metadata",
    [
        (("authorization", "Basic dXNlcjpwYXNz"),),
        (("authorization", "Bearer"),),
        (("authorization", "Bearer  "),),
        (("authorization", "Bearer a"), ("authorization", "Bearer b")),
    ],
)
def test_malformed_authorization_headers_are_token_invalid(metadata):
    with pytest.raises(Unauthenticated) as info:
        bearer_token(metadata)
    assert info.value.reason == "TOKEN_INVALID"


def test_bearer_scheme_is_case_insensitive_and_bytes_are_accepted():
    assert bearer_token((("authorization", "bearer abc"),)) == "abc"
    assert bearer_token((("Authorization", b"Bearer abc"),)) == "abc"
    assert bearer_token((("x-other", "Bearer abc"),)) is None
