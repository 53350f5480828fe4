"""Bearer tokens: every way a token can be wrong is TOKEN_INVALID (or expired / not yet valid),
algorithms are pinned by the key, the JWKS file is re-read when it changes."""

import json
import time

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from costsim_analytics.auth import tokens
from costsim_analytics.auth.tokens import (
    JwksFile,
    KeyConfigError,
    StaticSecret,
    TokenVerifier,
    mint_token,
    parse_jwks,
    read_secret_file,
)
from costsim_analytics.engines.errors import Unauthenticated
from tests.security import (
    AUDIENCE,
    HS_SECRET,
    claims,
    ec_key,
    ed_key,
    hs256_confusion_token,
    public_jwk,
    rsa_key,
    sign,
    tamper,
    write_jwks,
)


def hs_verifier(**kw):
    return TokenVerifier(StaticSecret(HS_SECRET), audience=AUDIENCE, **kw)


def reason_of(verifier, token):
    with pytest.raises(Unauthenticated) as info:
        verifier.verify(token)
    return info.value.reason, info.value.message


@pytest.fixture
def jwks(tmp_path):
    keys = {"rsa": rsa_key(), "ec": ec_key(), "ed": ed_key()}
    path = write_jwks(tmp_path / "jwks.json", *(public_jwk(k, kid) for kid, k in keys.items()))
    return path, keys


def test_hs256_token_verifies_and_names_its_subject():
    verified = hs_verifier().verify(sign(claims("ci-nightly"), HS_SECRET, "HS256"))
    assert verified.subject == "ci-nightly"
    assert verified.claims["aud"] == AUDIENCE


@pytest.mark.parametrize(("kid", "alg"), [("rsa", "RS256"), ("ec", "ES256"), ("ed", "EdDSA")])
def test_jwks_keys_verify_their_own_algorithm(jwks, kid, alg):
    path, keys = jwks
    verifier = TokenVerifier(JwksFile(path), audience=AUDIENCE)
    assert verifier.verify(sign(claims("svc"), keys[kid], alg, kid=kid)).subject == "svc"
    # Without a kid, every key of that algorithm is tried.
    assert verifier.verify(sign(claims("svc2"), keys[kid], alg)).subject == "svc2"


def test_the_same_message_for_every_invalid_token(jwks):
    path, keys = jwks
    verifier = TokenVerifier(JwksFile(path), audience=AUDIENCE, issuer="https://idp.test")
    good = claims(iss="https://idp.test")
    stranger = rsa_key(1)
    assert verifier.verify(sign(good, keys["rsa"], "RS256", kid="rsa")).subject == "ci-nightly"
    bad = [
        "not-a-jwt",
        "a.b.c",
        tamper(sign(good, keys["rsa"], "RS256", kid="rsa")),
        sign(good, stranger, "RS256", kid="rsa"),  # signed by a key not in the JWKS
        sign({**good, "aud": "someone-else"}, keys["rsa"], "RS256", kid="rsa"),
        sign({**good, "iss": "https://evil.test"}, keys["rsa"], "RS256", kid="rsa"),
        sign(claims(), keys["rsa"], "RS256", kid="rsa"),  # no iss while one is required
        sign({k: v for k, v in good.items() if k != "exp"}, keys["rsa"], "RS256", kid="rsa"),
        sign({k: v for k, v in good.items() if k != "sub"}, keys["rsa"], "RS256", kid="rsa"),
        sign({**good, "sub": ""}, keys["rsa"], "RS256", kid="rsa"),
        sign(good, keys["rsa"], "RS256", kid="unknown-kid"),
        "x" * (tokens.MAX_TOKEN_CHARS + 1),
    ]
    answers = {reason_of(verifier, token) for token in bad}
    assert answers == {("TOKEN_INVALID", "bearer token is not valid")}


def test_expired_and_not_yet_valid_tokens_have_their_own_reasons():
    verifier = hs_verifier()
    expired = sign(claims(ttl_s=-(tokens.LEEWAY_S + 5)), HS_SECRET, "HS256")
    assert reason_of(verifier, expired)[0] == "TOKEN_EXPIRED"
    future = sign({**claims(), "nbf": int(time.time()) + 600}, HS_SECRET, "HS256")
    assert reason_of(verifier, future)[0] == "TOKEN_NOT_YET_VALID"


def test_small_clock_skew_is_tolerated():
    verifier = hs_verifier()
    just_expired = sign(claims(ttl_s=-5), HS_SECRET, "HS256")
    almost_valid = sign({**claims(), "nbf": int(time.time()) + 5}, HS_SECRET, "HS256")
    assert verifier.verify(just_expired).subject == "ci-nightly"
    assert verifier.verify(almost_valid).subject == "ci-nightly"


def test_an_expired_token_with_a_bad_signature_is_invalid_not_expired():
    # The signature is checked first: "expired" is only said of a token we actually issued.
    forged = tamper(sign(claims(ttl_s=-3600), HS_SECRET, "HS256"))
    assert reason_of(hs_verifier(), forged)[0] == "TOKEN_INVALID"


def test_algorithm_confusion_hs256_with_the_rsa_public_key_fails(jwks):
    path, keys = jwks
    public_pem = (
        keys["rsa"]
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    forged = hs256_confusion_token(public_pem, claims("root"))
    assert reason_of(TokenVerifier(JwksFile(path), audience=AUDIENCE), forged)[0] == (
        "TOKEN_INVALID"
    )


def test_alg_none_and_asymmetric_tokens_fail_against_an_hs256_secret():
    unsigned = jwt.encode(claims("root"), None, algorithm="none")  # type: ignore[arg-type]
    rs = sign(claims("root"), rsa_key(), "RS256")
    verifier = hs_verifier()
    assert reason_of(verifier, unsigned)[0] == "TOKEN_INVALID"
    assert reason_of(verifier, rs)[0] == "TOKEN_INVALID"


def test_a_header_alg_other_than_the_keys_fails_even_with_the_right_kid(jwks):
    path, keys = jwks
    # The EC key's kid on an RS256 token signed by the RSA key: pinned, so not tried.
    token = sign(claims(), keys["rsa"], "RS256", kid="ec")
    verifier = TokenVerifier(JwksFile(path), audience=AUDIENCE)
    assert reason_of(verifier, token)[0] == "TOKEN_INVALID"


def test_jwks_rotation_is_picked_up(tmp_path, monkeypatch):
    monkeypatch.setattr(tokens, "KEY_CHECK_INTERVAL_S", 0.0)
    old, new = ec_key(), ec_key()
    path = write_jwks(tmp_path / "jwks.json", public_jwk(old, "k1"))
    verifier = TokenVerifier(JwksFile(path), audience=AUDIENCE)
    old_token = sign(claims("svc"), old, "ES256", kid="k1")
    assert verifier.verify(old_token).subject == "svc"
    write_jwks(path, public_jwk(new, "k2"))
    assert verifier.verify(sign(claims("svc"), new, "ES256", kid="k2")).subject == "svc"
    # The cached old token is dropped with the key generation that verified it.
    assert reason_of(verifier, old_token)[0] == "TOKEN_INVALID"


def test_an_invalid_jwks_rewrite_keeps_the_old_keys(tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(tokens, "KEY_CHECK_INTERVAL_S", 0.0)
    key = ec_key()
    path = write_jwks(tmp_path / "jwks.json", public_jwk(key, "k1"))
    source = JwksFile(path)
    verifier = TokenVerifier(source, audience=AUDIENCE)
    path.write_text("{not json")
    assert verifier.verify(sign(claims("svc"), key, "ES256", kid="k1")).subject == "svc"
    assert "not JSON" in source.last_error
    assert any("JWKS reload refused" in r.getMessage() for r in caplog.records)


@pytest.fixture
def decodes(monkeypatch):
    calls = []
    real_decode = jwt.decode

    def counting_decode(*args, **kwargs):
        calls.append(1)
        return real_decode(*args, **kwargs)

    monkeypatch.setattr(jwt, "decode", counting_decode)
    return calls


def test_valid_tokens_are_cached_and_not_past_their_expiry(decodes):
    start = time.time()
    offset = [0.0]
    verifier = hs_verifier(clock=lambda: start + offset[0])
    token = sign({"sub": "svc", "aud": AUDIENCE, "exp": int(start) + 10}, HS_SECRET, "HS256")
    for _ in range(5):
        assert verifier.verify(token).subject == "svc"
    assert len(decodes) == 1
    # Past exp + leeway by the verifier's clock the entry is gone: the token is checked again.
    offset[0] = 10 + tokens.LEEWAY_S + 1
    verifier.verify(token)
    assert len(decodes) == 2


def test_cache_entries_live_at_most_the_cache_ttl(decodes):
    start = time.time()
    offset = [0.0]
    verifier = hs_verifier(clock=lambda: start + offset[0])
    token = sign(claims(ttl_s=3600), HS_SECRET, "HS256")
    verifier.verify(token)
    offset[0] = tokens.CACHE_TTL_S - 1
    verifier.verify(token)
    assert len(decodes) == 1
    offset[0] = tokens.CACHE_TTL_S + 1
    verifier.verify(token)
    assert len(decodes) == 2


def test_the_cache_is_bounded():
    verifier = hs_verifier(cache_size=3)
    for i in range(10):
        verifier.verify(sign(claims(f"svc-{i}"), HS_SECRET, "HS256"))
    assert len(verifier._cache) == 3


@pytest.mark.parametrize(
    ("jwk_extra", "message"),
    [
        ({"alg": "HS256"}, "does not fit"),
        ({"d": "secret"}, "only public"),
    ],
)
def test_jwks_refuses_contradictory_or_private_keys(jwk_extra, message):
    with pytest.raises(KeyConfigError, match=message):
        parse_jwks(json.dumps({"keys": [public_jwk(ec_key(), "k", **jwk_extra)]}))


def test_jwks_refuses_symmetric_keys_short_rsa_keys_and_empty_sets():
    with pytest.raises(KeyConfigError, match="only public"):
        parse_jwks(json.dumps({"keys": [{"kty": "oct", "k": "c2VjcmV0"}]}))
    weak = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    with pytest.raises(KeyConfigError, match="2048"):
        parse_jwks(json.dumps({"keys": [public_jwk(weak, "w")]}))
    with pytest.raises(KeyConfigError, match="no signing keys"):
        parse_jwks(json.dumps({"keys": []}))
    with pytest.raises(KeyConfigError, match="JWKS object"):
        parse_jwks("[]")


def test_secret_file_strips_one_trailing_newline_and_refuses_short_secrets(tmp_path):
    path = tmp_path / "secret"
    path.write_bytes(HS_SECRET + b"\n\n")
    assert read_secret_file(path) == HS_SECRET + b"\n"
    path.write_bytes(HS_SECRET + b"\n")
    assert read_secret_file(path) == HS_SECRET
    path.write_bytes(b"short\n")
    with pytest.raises(KeyConfigError, match="at least 32 bytes"):
        read_secret_file(path)


def test_minted_tokens_verify_with_issuer_and_extra_claims():
    token = mint_token("ci", HS_SECRET, AUDIENCE, 60, issuer="me", extra={"sub": "x", "team": 7})
    verified = hs_verifier(issuer="me").verify(token)
    assert verified.subject == "ci"  # extra claims never override the standard ones
    assert verified.claims["team"] == 7
    assert verified.expires_at - time.time() == pytest.approx(60, abs=2)
