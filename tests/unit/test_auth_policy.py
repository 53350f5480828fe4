# mypy: disable-error-code="union-attr"
"""The policy file: strict validation naming the bad entry, exact and glob matching with the
union rule, and reloads that keep the old policy when the new file is bad."""

import logging

import pytest

from costsim_analytics.auth.policy import PolicyError, PolicyStore, load_policy, parse_policy
from costsim_analytics.auth.principal import INSECURE_PRINCIPAL, Principal, Role

EXAMPLE = """
[[principal]]
id = "spiffe://prod/ns/sim/*"   # certificate SAN/CN or token sub; glob allowed
roles = ["writer", "reader"]
tenants = ["acme"]

[[principal]]
id = "spiffe://prod/ns/sim/backfill"
roles = ["writer"]
tenants = ["globex"]

[[principal]]
id = "oncall@example.com"
roles = ["reader", "canary"]
tenants = ["*"]

[[principal]]
id = "curator-bot"
roles = ["curator"]
"""


def test_the_documented_shape_loads():
    policy = parse_policy(EXAMPLE)
    assert len(policy.entries) == 4
    sim = policy.resolve("spiffe://prod/ns/sim/api", "mtls")
    assert sim == Principal(
        "spiffe://prod/ns/sim/api",
        frozenset({Role.WRITER, Role.READER}),
        frozenset({"acme"}),
        "mtls",
    )


def test_several_matching_entries_grant_the_union():
    backfill = parse_policy(EXAMPLE).resolve("spiffe://prod/ns/sim/backfill", "mtls")
    assert backfill.roles == {Role.WRITER, Role.READER}
    assert backfill.tenants == {"acme", "globex"}


def test_glob_and_exact_matching_rules():
    policy = parse_policy(EXAMPLE)
    assert policy.resolve("spiffe://prod/ns/sim/a/b", "mtls") is not None  # * crosses '/'
    assert policy.resolve("spiffe://prod/ns/SIM/api", "mtls") is None  # case-sensitive
    assert policy.resolve("spiffe://prod/ns/simulator", "mtls") is None
    assert policy.resolve("oncall@example.com.evil", "token") is None  # exact is exact
    assert policy.resolve("nobody", "token") is None


def test_tenants_default_to_none_and_star_means_all():
    policy = parse_policy(EXAMPLE)
    curator = policy.resolve("curator-bot", "token")
    assert curator.tenants == frozenset()
    assert curator.tenant_scope() == ()
    oncall = policy.resolve("oncall@example.com", "token")
    assert oncall.tenant_scope() is None and oncall.may_tenant("anything")


def test_principal_helpers():
    p = Principal("p", frozenset({Role.READER}), frozenset({"b", "a"}), "token")
    assert p.may(Role.READER) and not p.may(Role.WRITER)
    assert p.may_tenant("a") and not p.may_tenant("c")
    assert p.tenant_scope() == ("a", "b")
    admin = Principal("root", frozenset({Role.ADMIN}), frozenset({"a"}), "mtls")
    assert all(admin.may(role) for role in Role)
    assert not admin.may_tenant("b")  # admin implies every role, not every tenant
    assert INSECURE_PRINCIPAL.may(Role.CURATOR) and INSECURE_PRINCIPAL.tenant_scope() is None


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            '[[principal]]\nid="a"\nroles=["reader"]\n[[principal]]\nid="b"\nroles=["reader"]\n'
            '[[principal]]\nid="c"\nroles=["reader", "writr"]',
            "principal[2].roles[1]: unknown role 'writr'",
        ),
        (
            '[[principal]]\nid="a"\nroles=["reader"]\ntenant=["x"]',
            "principal[0]: unknown key 'tenant'",
        ),
        ('[[principal]]\nid=""\nroles=["reader"]', "principal[0].id: must be a non-empty string"),
        ('[[principal]]\nid="a\\u0000b"\nroles=["reader"]', "principal[0].id: must not contain"),
        ('[[principal]]\nid=" a"\nroles=["reader"]', "principal[0].id: must not contain"),
        ('[[principal]]\nid=7\nroles=["reader"]', "principal[0].id: must be a non-empty string"),
        ('[[principal]]\nroles=["reader"]', "principal[0]: 'id' is required"),
        ('[[principal]]\nid="a"', "principal[0]: 'roles' is required"),
        ('[[principal]]\nid="a"\nroles=[]', "principal[0].roles: must name at least one role"),
        ('[[principal]]\nid="a"\nroles="reader"', "principal[0].roles: must be a list"),
        ('[[principal]]\nid="a"\nroles=["reader", 3]', "principal[0].roles[1]: must be a string"),
        ('[[principal]]\nid="a"\nroles=["reader"]\ntenants=["acme-*"]', "principal[0].tenants[0]"),
        ('[[principal]]\nid="a"\nroles=["reader"]\ntenants=[""]', "principal[0].tenants[0]"),
        ('principal = "everyone"', "must be an array of tables"),
        ('[[principals]]\nid="a"\nroles=["reader"]', "unknown top-level key 'principals'"),
        ("[[principal]\n", "not valid TOML"),
    ],
)
def test_invalid_policies_are_refused_naming_the_entry(text, message):
    with pytest.raises(PolicyError) as info:
        parse_policy(text)
    assert message in str(info.value)


def test_load_names_the_file(tmp_path):
    path = tmp_path / "policy.toml"
    path.write_text('[[principal]]\nid="a"\nroles=["rider"]')
    with pytest.raises(PolicyError, match=r"policy\.toml: principal\[0\]\.roles\[0\]"):
        load_policy(path)
    with pytest.raises(PolicyError, match="cannot read"):
        load_policy(tmp_path / "missing.toml")


def test_store_reload_swaps_a_valid_policy_and_keeps_the_old_on_error(tmp_path, caplog):
    path = tmp_path / "policy.toml"
    path.write_text('[[principal]]\nid="svc"\nroles=["reader"]\ntenants=["*"]')
    store = PolicyStore(path)
    assert store.resolve("svc", "token").roles == {Role.READER}
    path.write_text('[[principal]]\nid="svc"\nroles=["writer"]\ntenants=["acme"]')
    assert store.reload() is True
    assert store.resolve("svc", "token").roles == {Role.WRITER}
    caplog.set_level(logging.ERROR, logger="costsim_analytics.auth.policy")
    path.write_text('[[principal]]\nid="svc"\nroles=["writr"]')
    assert store.reload() is False
    assert store.resolve("svc", "token").roles == {Role.WRITER}
    assert "unknown role 'writr'" in caplog.text


def test_store_refuses_to_start_on_an_invalid_file(tmp_path):
    path = tmp_path / "policy.toml"
    path.write_text("[[principal]]\nid = 1\n")
    with pytest.raises(PolicyError):
        PolicyStore(path)
