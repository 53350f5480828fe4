# mypy: disable-error-code="union-attr"
"""The method table covers every RPC, and authorize() decides with the right reasons."""

import pytest

from costsim.analytics.v1 import analytics_pb2 as pb
from costsim_analytics.auth.methods import (
    MAX_VIOLATIONS,
    METHODS,
    SERVICE,
    TenantsFrom,
    authorize,
    is_public,
    requested_tenants,
    rule_for,
)
from costsim_analytics.auth.principal import INSECURE_PRINCIPAL, Principal, Role
from costsim_analytics.engines.errors import PermissionDenied

SERVICE_DESCRIPTOR = pb.DESCRIPTOR.services_by_name["AnalyticsService"]


def rpc(name):
    return f"/{SERVICE}/{name}"


def principal(*roles, tenants=("acme",)):
    return Principal("p", frozenset(roles), frozenset(tenants), "token")


def denied(p, method, tenants=()):
    with pytest.raises(PermissionDenied) as info:
        authorize(p, method, tenants)
    return info.value


def test_every_rpc_of_the_service_is_classified_and_none_is_public():
    assert SERVICE_DESCRIPTOR.full_name == SERVICE
    for method in SERVICE_DESCRIPTOR.methods:
        rule = rule_for(f"/{SERVICE}/{method.name}")
        assert rule is not None, f"{method.name} has no entry in auth/methods.py METHODS"
        assert rule.role is not None, f"{method.name} must not be public"
    listed = {name for name in METHODS if name.startswith(f"/{SERVICE}/")}
    assert listed == {f"/{SERVICE}/{m.name}" for m in SERVICE_DESCRIPTOR.methods}


def test_roles_per_method_follow_the_issue():
    expected = {
        "WriteProvenanceBatch": Role.WRITER,
        "QueryProvenance": Role.READER,
        "GetDriftStats": Role.READER,
        "QueryCanaryReports": Role.READER,
        "GetCanaryReport": Role.READER,
        "RunCanary": Role.CANARY,
        "CreateGoldenDataset": Role.CURATOR,
        "PromoteCanaryRun": Role.CURATOR,
        "GetGoldenDataset": Role.READER,
        "ListGoldenDatasets": Role.READER,
        "ActivateGoldenDataset": Role.CURATOR,
        "CompareGolden": Role.READER,
    }
    assert {name: rule_for(rpc(name)).role for name in expected} == expected
    mutating = {m.name for m in SERVICE_DESCRIPTOR.methods if rule_for(rpc(m.name)).mutating}
    assert mutating == {
        "WriteProvenanceBatch",
        "RunCanary",
        "CreateGoldenDataset",
        "PromoteCanaryRun",
        "ActivateGoldenDataset",
    }


def test_health_and_reflection_are_public_and_anything_else_is_refused():
    assert is_public("/grpc.health.v1.Health/Check")
    assert is_public("/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo")
    assert not is_public(rpc("QueryProvenance"))
    assert authorize(principal(), "/grpc.health.v1.Health/Watch").role is None
    error = denied(INSECURE_PRINCIPAL, "/some.Other/Method")
    assert error.reason == "METHOD_NOT_ALLOWED"
    assert error.metadata == {"method": "/some.Other/Method"}


def test_a_missing_role_is_method_not_allowed_naming_method_and_role():
    error = denied(principal(Role.READER), rpc("WriteProvenanceBatch"))
    assert error.reason == "METHOD_NOT_ALLOWED"
    assert error.metadata == {"method": rpc("WriteProvenanceBatch"), "role": "writer"}
    assert "writer" in error.message


@pytest.mark.parametrize(
    ("roles", "method"),
    [
        ((Role.WRITER,), "WriteProvenanceBatch"),
        ((Role.READER,), "CompareGolden"),
        ((Role.CANARY,), "RunCanary"),
        ((Role.CURATOR,), "ActivateGoldenDataset"),
        ((Role.ADMIN,), "ActivateGoldenDataset"),
        ((Role.ADMIN,), "WriteProvenanceBatch"),
    ],
)
def test_granted_roles_pass(roles, method):
    assert authorize(principal(*roles), rpc(method)) is METHODS[rpc(method)]


def test_reader_cannot_activate_and_curator_cannot_read():
    assert denied(principal(Role.READER), rpc("ActivateGoldenDataset")).reason == (
        "METHOD_NOT_ALLOWED"
    )
    assert denied(principal(Role.CURATOR), rpc("QueryProvenance")).reason == ("METHOD_NOT_ALLOWED")


def batch(*tenants):
    return pb.WriteProvenanceBatchRequest(
        records=[pb.ProvenanceRecord(run_id=f"r{i}", tenant_id=t) for i, t in enumerate(tenants)]
    )


def test_a_batch_with_foreign_tenants_lists_every_refused_record():
    method = rpc("WriteProvenanceBatch")
    tenants = requested_tenants(method, batch("acme", "globex", "acme", "initech"))
    assert tenants == ("acme", "globex", "acme", "initech")
    error = denied(principal(Role.WRITER), method, tenants)
    assert error.reason == "TENANT_NOT_ALLOWED"
    assert error.metadata == {"method": method, "tenant": "globex"}
    assert [v.field for v in error.violations] == ["records[1].tenant_id", "records[3].tenant_id"]
    assert "and 1 more" in error.message


def test_the_violation_list_is_bounded_for_huge_batches():
    method = rpc("WriteProvenanceBatch")
    tenants = requested_tenants(method, batch(*["globex"] * 1000))
    error = denied(principal(Role.WRITER), method, tenants)
    assert len(error.violations) == MAX_VIOLATIONS + 1
    assert error.violations[-1].description == f"and {1000 - MAX_VIOLATIONS} more refused records"


def test_all_tenant_principals_pass_any_batch():
    method = rpc("WriteProvenanceBatch")
    tenants = requested_tenants(method, batch("acme", "globex"))
    authorize(principal(Role.WRITER, tenants=("*",)), method, tenants)


def test_query_filters_name_their_tenant_and_an_empty_filter_names_none():
    query = rpc("QueryProvenance")
    assert rule_for(query).tenants is TenantsFrom.FILTER
    assert requested_tenants(query, pb.QueryProvenanceRequest(tenant_id="acme")) == ("acme",)
    assert requested_tenants(query, pb.QueryProvenanceRequest()) == ()
    drift = rpc("GetDriftStats")
    tenants = requested_tenants(drift, pb.GetDriftStatsRequest(tenant_id="globex"))
    error = denied(principal(Role.READER), drift, tenants)
    assert error.reason == "TENANT_NOT_ALLOWED"
    assert [v.field for v in error.violations] == ["tenant_id"]
    # No tenant named: allowed; the handler narrows the query to tenant_scope().
    assert authorize(principal(Role.READER), query, ()) is METHODS[query]


def test_reports_and_golden_datasets_name_no_tenant():
    assert requested_tenants(rpc("QueryCanaryReports"), pb.QueryCanaryReportsRequest()) == ()
    assert requested_tenants("/unknown/Method", pb.QueryProvenanceRequest(tenant_id="x")) == ()
