"""Builders of realistic test data."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from costsim_analytics.engines.provenance import ProvenanceInput, ProvenanceRecord
from costsim_analytics.engines.reports import CanaryReport

T0 = datetime(2026, 11, 1, 12, 0, tzinfo=UTC)


def plan_payload(i: int = 0, status: str = "success") -> dict[str, Any]:
    """A payload like a real simulation leaves: input plan, output estimate, status."""
    return {
        "input": {
            "plan": [
                {"skill": "llm_invoke", "params": {"prompt": "x" * (100 + i)}, "iterations": 1},
                {"skill": "http_call", "params": {"url": "https://example.com", "timeout_s": 5}},
            ],
            "budget_cents": 1000,
        },
        "output": {"cost_cents": 5 + i % 7, "duration_ms": 2500, "feasible": True},
        "status": status,
    }


def provenance_input(i: int = 0, **overrides: Any) -> ProvenanceInput:
    """A valid record; ``overrides`` replace fields."""
    fields: dict[str, Any] = {
        "run_id": f"run-{i}",
        "tenant_id": f"tenant-{i % 3}",
        "variant_slug": "v2",
        "source": "sandbox",
        "model_version": "2.0.0",
        "adapter_version": "1.0",
        "commit_sha": "abc123",
        "v1_cost": float(10 + i % 5),
        "v2_cost": float(11 + i % 7) / 1.5,
        "payload": plan_payload(i),
        "runtime_ms": 12 + i,
    }
    fields.update(overrides)
    return ProvenanceInput(**fields)


def provenance_json(i: int = 0, **overrides: Any) -> dict[str, Any]:
    """A valid record in the proto's JSON form (for the gRPC client)."""
    record: dict[str, Any] = {
        "run_id": f"run-{i}",
        "tenant_id": f"tenant-{i % 3}",
        "variant_slug": "v2",
        "source": "sandbox",
        "model_version": "2.0.0",
        "v1_cost": float(10 + i % 5),
        "v2_cost": float(11 + i % 7) / 1.5,
        "payload": plan_payload(i),
        "runtime_ms": 12 + i,
    }
    record.update(overrides)
    return record


def canary_report(i: int = 0, **overrides: Any) -> CanaryReport:
    """A report whose timestamp grows with ``i`` (one per hour from T0)."""
    status = ("pass", "fail", "error", "skipped")[i % 4]
    fields: dict[str, Any] = {
        "run_id": f"canary-{i:05d}",
        "timestamp": T0 + timedelta(hours=i),
        "status": status,
        "total_samples": 100,
        "matching_samples": 80,
        "minor_drift_samples": 12,
        "major_drift_samples": 8,
        "median_cost_diff": 0.02 * i,
        "p90_cost_diff": 0.1,
        "kl_divergence": 0.05,
        "outlier_count": 1,
        "passed": status == "pass",
        "failure_reasons": ("KL divergence 0.31 > 0.2",) if status == "fail" else (),
        "artifact_paths": (f"artifacts/canary-{i:05d}/report.json",),
    }
    fields.update(overrides)
    return CanaryReport(**fields)


def stored_record(i: int, created_at: datetime, status: str = "success") -> ProvenanceRecord:
    """A provenance row as a driver returns it: a plan payload, no costs yet."""
    return ProvenanceRecord(
        id=i,
        run_id=f"run-{i}",
        tenant_id="t",
        variant_slug="v2",
        source="sandbox",
        model_version="2.0.0",
        adapter_version="1.0",
        commit_sha="abc123",
        input_hash="0" * 64,
        output_hash="0" * 64,
        v1_cost=None,
        v2_cost=None,
        cost_delta=None,
        payload=plan_payload(i, status=status),
        runtime_ms=1,
        created_at=created_at,
    )
