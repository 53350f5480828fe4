"""The real server process and the real command line, traced with the console exporter.

Each prints its finished spans as JSON on stderr (``OTEL_TRACES_EXPORTER=console``): the CLI's
command is the root of the trace, and the server's span of the call it made is its child.
Only SQLite: the propagation does not depend on the database (tests/integration covers both).
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

from grpc_health.v1 import health_pb2

from costsim_analytics.drivers import schema
from tests.e2e.server import CLI, ServerProcess


def console_spans(text: str) -> list[dict[str, Any]]:
    """The spans the console exporter wrote (indented JSON objects) among log lines."""
    spans, lines = [], None
    for line in text.splitlines():
        if line == "{":
            lines = [line]
        elif lines is not None:
            lines.append(line)
            if line == "}":
                spans.append(json.loads("\n".join(lines)))
                lines = None
    return spans


def test_a_cli_command_is_the_root_and_the_server_span_its_child(tmp_path: Path):
    url = f"sqlite:///{tmp_path / 'costsim.db'}"
    schema.upgrade(url)
    traced = {"OTEL_TRACES_EXPORTER": "console", "OTEL_SERVICE_NAME": ""}
    server = ServerProcess(url, tmp_path / "server.log", COSTSIM_HTTP_LISTEN="off", **traced)
    server.start()
    try:
        server.wait_health(health_pb2.HealthCheckResponse.SERVING)
        cli = subprocess.run(
            [CLI, "drift-stats", "--target", server.address, "--json"],
            capture_output=True,
            text=True,
            timeout=60,
            env={**os.environ, **traced},
        )
    finally:
        assert server.stop() == 0
    assert cli.returncode == 0, cli.stderr
    assert int(json.loads(cli.stdout)["total"]) == 0  # stdout stays the command's answer
    [root] = console_spans(cli.stderr)
    assert root["name"] == "costsim-analytics drift-stats" and root["parent_id"] is None
    assert root["resource"]["attributes"]["service.name"] == "costsim-analytics-cli"
    served = [
        s
        for s in console_spans(server.log())
        if s["name"] == "costsim.analytics.v1.AnalyticsService/GetDriftStats"
    ]
    assert len(served) == 1, server.log()
    [span] = served
    assert span["context"]["trace_id"] == root["context"]["trace_id"]
    assert span["parent_id"] == root["context"]["span_id"]
    assert span["kind"] == "SpanKind.SERVER"
    assert span["attributes"]["rpc.grpc.status_code"] == 0
    assert span["resource"]["attributes"]["service.name"] == "costsim-analytics"
