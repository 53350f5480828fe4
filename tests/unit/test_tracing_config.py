"""The rule that turns tracing on from the standard OTEL_* variables (service/tracing.py)."""

from __future__ import annotations

import pytest

from costsim_analytics.client.tracing import trace_metadata
from costsim_analytics.tracing import Tracing, TracingConfig, TracingConfigError


@pytest.mark.parametrize(
    ("environ", "expected"),
    [
        ({}, None),
        ({"OTEL_SERVICE_NAME": "x", "OTEL_TRACES_SAMPLER": "always_on"}, None),
        ({"OTEL_TRACES_EXPORTER": "none"}, None),
        ({"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4317"}, None),
        ({"OTEL_SDK_DISABLED": "true", "OTEL_TRACES_EXPORTER": "otlp"}, None),
        ({"OTEL_SDK_DISABLED": "TRUE", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4317"}, None),
        ({"OTEL_TRACES_EXPORTER": "otlp"}, TracingConfig(("otlp",))),
        ({"OTEL_TRACES_EXPORTER": " Console "}, TracingConfig(("console",))),
        ({"OTEL_TRACES_EXPORTER": "otlp,console"}, TracingConfig(("otlp", "console"))),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4317"}, TracingConfig(("otlp",))),
        (
            {"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://c:4318/v1/traces"},
            TracingConfig(("otlp",)),
        ),
        (
            {
                "OTEL_SDK_DISABLED": "false",
                "OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318",
                "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
            },
            TracingConfig(("otlp",), "http/protobuf"),
        ),
        (
            {
                "OTEL_TRACES_EXPORTER": "otlp",
                "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
                "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "grpc",
            },
            TracingConfig(("otlp",), "grpc"),
        ),
    ],
)
def test_the_rule(environ, expected):
    assert TracingConfig.from_env(environ) == expected


@pytest.mark.parametrize(
    "environ",
    [
        {"OTEL_TRACES_EXPORTER": "zipkin"},
        {"OTEL_TRACES_EXPORTER": "otlp,jaeger"},
        {"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_PROTOCOL": "http/json"},
    ],
)
def test_what_it_cannot_export_refuses_to_start(environ):
    with pytest.raises(TracingConfigError):
        TracingConfig.from_env(environ)


def test_off_builds_no_provider():
    assert Tracing.from_env({}) is None
    assert (
        Tracing.from_env({"OTEL_SDK_DISABLED": "true", "OTEL_TRACES_EXPORTER": "console"}) is None
    )


def test_the_service_name_defaults_and_otel_service_name_wins(monkeypatch):
    monkeypatch.delenv("OTEL_SERVICE_NAME", raising=False)
    monkeypatch.delenv("OTEL_RESOURCE_ATTRIBUTES", raising=False)
    tracing = Tracing.from_env({"OTEL_TRACES_EXPORTER": "console"})
    assert tracing is not None
    assert tracing.provider.resource.attributes["service.name"] == "costsim-analytics"
    tracing.shutdown()
    monkeypatch.setenv("OTEL_SERVICE_NAME", "analytics-eu")
    tracing = Tracing.from_env({"OTEL_TRACES_EXPORTER": "console"})
    assert tracing is not None
    assert tracing.provider.resource.attributes["service.name"] == "analytics-eu"
    tracing.shutdown()


def test_the_client_carries_no_trace_context_without_a_span():
    assert trace_metadata() == ()
