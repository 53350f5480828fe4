"""Security settings: the mode decision, refused half-setups, and the loopback rule."""

import pytest
from typer.testing import CliRunner

from costsim_analytics.auth.tokens import StaticSecret, TokenVerifier
from costsim_analytics.cli.main import app
from costsim_analytics.exposure import SecurityConfigError, check_listen, is_loopback, security_mode
from costsim_analytics.settings import Settings
from tests.security import AUDIENCE, HS_SECRET


@pytest.fixture
def env(monkeypatch, tmp_path):
    for name in (
        "TLS_CERT",
        "TLS_KEY",
        "TLS_CLIENT_CA",
        "JWT_JWKS_FILE",
        "JWT_HS256_SECRET_FILE",
        "JWT_AUDIENCE",
        "JWT_ISSUER",
        "POLICY_FILE",
        "INSECURE",
        "METRICS_AUTH",
    ):
        monkeypatch.delenv(f"COSTSIM_{name}", raising=False)

    def settings(**values):
        for name, value in values.items():
            monkeypatch.setenv(f"COSTSIM_{name.upper()}", value)
        return Settings()

    return settings


def test_defaults_are_the_explicit_insecure_mode(env):
    settings = env()
    assert settings.jwt_audience == "costsim-analytics"
    assert settings.metrics_auth == "open" and settings.insecure is False
    mode = security_mode(settings)
    assert mode.insecure and not mode.tls and not mode.exposed_safely
    assert "insecure mode" in mode.warnings[0]


def test_empty_variables_are_unset(env):
    settings = env(tls_cert="", policy_file="  ", jwt_issuer="")
    assert settings.tls_cert is None and settings.policy_file is None
    assert settings.jwt_issuer is None


@pytest.mark.parametrize(
    ("value", "mode"),
    [("true", "metrics"), ("false", "open"), ("ALL", "all"), ("metrics", "metrics"), ("", "open")],
)
def test_metrics_auth_accepts_booleans_and_modes(env, value, mode):
    assert env(metrics_auth=value).metrics_auth == mode


def test_metrics_auth_refuses_other_values(env):
    with pytest.raises(ValueError, match="metrics_auth"):
        env(metrics_auth="sometimes")


def test_secure_modes(env):
    mtls = security_mode(
        env(tls_cert="c.pem", tls_key="k.pem", tls_client_ca="ca.pem", policy_file="p.toml")
    )
    assert (mtls.insecure, mtls.tls, mtls.mtls, mtls.tokens) == (False, True, True, "")
    assert mtls.exposed_safely and mtls.warnings == ()
    both = security_mode(env(jwt_jwks_file="jwks.json"))  # added to the same environment
    assert (both.tokens, both.mtls) == ("jwks", True)


def test_tokens_without_tls_warn_and_are_not_exposed_safely(env):
    mode = security_mode(env(jwt_hs256_secret_file="s", policy_file="p.toml"))
    assert mode.tokens == "hs256" and not mode.tls and not mode.exposed_safely
    assert "plaintext" in mode.warnings[0]


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"tls_cert": "c.pem"}, "set together"),
        ({"tls_key": "k.pem"}, "set together"),
        ({"tls_client_ca": "ca.pem", "policy_file": "p"}, "needs COSTSIM_TLS_CERT"),
        ({"jwt_jwks_file": "j", "jwt_hs256_secret_file": "s", "policy_file": "p"}, "not both"),
        ({"jwt_jwks_file": "j"}, "COSTSIM_POLICY_FILE is not"),
        ({"policy_file": "p"}, "needs a way to authenticate"),
        ({"policy_file": "p", "tls_cert": "c", "tls_key": "k"}, "needs a way to authenticate"),
    ],
)
def test_half_setups_are_refused(env, values, message):
    with pytest.raises(SecurityConfigError, match=message):
        security_mode(env(**values))


@pytest.mark.parametrize(
    ("address", "loopback"),
    [
        ("127.0.0.1:50051", True),
        ("127.1.2.3:1", True),
        ("localhost:8080", True),
        ("[::1]:0", True),
        ("0.0.0.0:50051", False),
        ("[::]:50051", False),
        ("10.0.0.5:50051", False),
        ("api.internal:50051", False),
        (":50051", False),
    ],
)
def test_is_loopback(address, loopback):
    assert is_loopback(address) is loopback


def test_insecure_setups_stay_on_loopback_unless_allowed(env):
    insecure = security_mode(env())
    check_listen(insecure, ["127.0.0.1:50051", "127.0.0.1:8080", ""], allow_insecure=False)
    with pytest.raises(SecurityConfigError, match=r"0\.0\.0\.0:8080 without a policy"):
        check_listen(insecure, ["127.0.0.1:50051", "0.0.0.0:8080"], allow_insecure=False)
    check_listen(insecure, ["0.0.0.0:50051"], allow_insecure=True)
    plaintext_tokens = security_mode(env(jwt_hs256_secret_file="s", policy_file="p"))
    with pytest.raises(SecurityConfigError, match="without TLS"):
        check_listen(plaintext_tokens, ["0.0.0.0:50051"], allow_insecure=False)


def test_secure_setups_may_listen_anywhere(env):
    mode = security_mode(env(tls_cert="c", tls_key="k", tls_client_ca="ca", policy_file="p"))
    check_listen(mode, ["0.0.0.0:50051", "[::]:8080"], allow_insecure=False)


def test_token_mint_cli_prints_a_token_the_server_accepts(tmp_path):
    secret = tmp_path / "jwt.secret"
    secret.write_bytes(HS_SECRET + b"\n")
    result = CliRunner().invoke(
        app,
        [
            "token",
            "mint",
            "--sub",
            "ci",
            "--secret-file",
            str(secret),
            "--ttl",
            "120",
            "--claim",
            "team=7",
            "--issuer",
            "local",
        ],
    )
    assert result.exit_code == 0, result.output
    verifier = TokenVerifier(StaticSecret(HS_SECRET), audience=AUDIENCE, issuer="local")
    verified = verifier.verify(result.stdout.strip())
    assert (verified.subject, verified.claims["team"]) == ("ci", 7)


def test_token_mint_cli_refuses_a_short_secret(tmp_path):
    secret = tmp_path / "jwt.secret"
    secret.write_bytes(b"short\n")
    result = CliRunner().invoke(app, ["token", "mint", "--sub", "ci", "--secret-file", str(secret)])
    assert result.exit_code == 2
    assert "at least 32 bytes" in result.output
