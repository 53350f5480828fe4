"""The audit log: one sanitised JSON line per mutating or refused call, nothing for reads."""

import json
import logging
from datetime import UTC, datetime

from costsim_analytics.auth.audit import AUDIT_LOGGER, MAX_CHARS, MAX_TENANTS, audit, audit_line

WRITE = "/costsim.analytics.v1.AnalyticsService/WriteProvenanceBatch"
QUERY = "/costsim.analytics.v1.AnalyticsService/QueryProvenance"


def audit_lines(caplog):
    return [json.loads(r.getMessage()) for r in caplog.records if r.name == AUDIT_LOGGER]


def test_a_mutating_call_is_one_json_line(caplog):
    caplog.set_level(logging.INFO, logger=AUDIT_LOGGER)
    audit(
        principal="spiffe://prod/ns/sim/api",
        authenticated_by="mtls",
        method=WRITE,
        tenants=["acme", "acme"],
        request_id="req-1",
        outcome="OK",
    )
    [line] = audit_lines(caplog)
    assert line["principal"] == "spiffe://prod/ns/sim/api"
    assert line["method"] == WRITE
    assert line["tenants"] == ["acme"]
    assert (line["request_id"], line["outcome"], line["authenticated_by"]) == (
        "req-1",
        "OK",
        "mtls",
    )
    assert datetime.strptime(line["time"], "%Y-%m-%dT%H:%M:%S.%fZ")


def test_reads_are_audited_only_when_refused(caplog):
    caplog.set_level(logging.INFO, logger=AUDIT_LOGGER)
    audit(principal="r", method=QUERY, tenants=[], request_id="1", outcome="OK")
    audit(principal="r", method=QUERY, tenants=["x"], request_id="2", outcome="NOT_FOUND")
    audit(
        principal=None,
        method=QUERY,
        tenants=[],
        request_id="3",
        outcome="UNAUTHENTICATED",
        reason="TOKEN_EXPIRED",
    )
    audit(principal="r", method=QUERY, tenants=["x"], request_id="4", outcome="PERMISSION_DENIED")
    lines = audit_lines(caplog)
    assert [line["request_id"] for line in lines] == ["3", "4"]
    assert lines[0]["principal"] is None and lines[0]["reason"] == "TOKEN_EXPIRED"


def test_values_are_sanitised_and_bounded():
    line = json.loads(
        audit_line(
            principal='evil\n{"forged": 1}\x1b[31m',
            method=WRITE,
            tenants=[f"t{i:03d}" for i in range(100)],
            request_id="r" * 5000,
            outcome="OK",
            now=datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC),
        )
    )
    assert line["principal"] == 'evil?{"forged": 1}?[31m'
    assert len(line["request_id"]) == MAX_CHARS
    assert len(line["tenants"]) == MAX_TENANTS and line["tenants_omitted"] == 100 - MAX_TENANTS
    assert line["time"] == "2026-01-02T03:04:05.000000Z"


def test_the_line_is_a_single_physical_line():
    text = audit_line(
        principal="a\u2028b", method=WRITE, tenants=["x\ny"], request_id="1", outcome="OK"
    )
    assert "\n" not in text and "\u2028" not in text
