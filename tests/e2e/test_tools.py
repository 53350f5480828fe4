"""The server through the tools people use: buf curl (with reflection) and the project's CLI."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from tests.e2e.server import CLI
from tests.factories import provenance_json

REPO = Path(__file__).resolve().parents[2]
BUF = REPO / "node_modules" / ".bin" / "buf"
SERVICE = "costsim.analytics.v1.AnalyticsService"


def buf_curl(
    address: str, method: str, data: dict[str, object]
) -> subprocess.CompletedProcess[str]:
    if not BUF.exists():
        pytest.fail("buf is not installed: run `make install` (npm install)")
    return subprocess.run(
        [
            str(BUF),
            "curl",
            "--protocol",
            "grpc",
            "--http2-prior-knowledge",
            "--data",
            json.dumps(data),
            f"http://{address}/{SERVICE}/{method}",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_buf_curl_through_reflection(server):
    record = provenance_json(0)
    written = buf_curl(
        server.address, "WriteProvenanceBatch", {"records": [record], "requestId": "buf-1"}
    )
    assert written.returncode == 0, written.stderr
    ids = json.loads(written.stdout)["ids"]
    assert len(ids) == 1

    streamed = buf_curl(server.address, "QueryProvenance", {"pageSize": 5})
    assert streamed.returncode == 0, streamed.stderr
    decoder, text, messages = json.JSONDecoder(), streamed.stdout.strip(), []
    while text:
        message, end = decoder.raw_decode(text)
        messages.append(message)
        text = text[end:].strip()
    assert [m["record"]["id"] for m in messages] == ids
    assert messages[0]["record"]["payload"]["input"]["budget_cents"] == 1000

    missing = buf_curl(server.address, "GetCanaryReport", {"runId": "nope"})
    assert missing.returncode != 0
    assert "not_found" in missing.stderr.lower() and "nope" in missing.stderr


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_cli_write_query_and_errors(server, tmp_path):
    source = tmp_path / "records.jsonl"
    source.write_text("\n".join(json.dumps(provenance_json(i)) for i in range(7)) + "\n")
    target = ["--target", server.address]
    run = lambda *args: subprocess.run([CLI, *args], capture_output=True, text=True, timeout=60)  # noqa: E731

    written = run("provenance", "write", str(source), "--batch-size", "3", "--json", *target)
    assert written.returncode == 0, written.stderr
    summary = json.loads(written.stdout)
    assert (summary["records"], summary["batches"], summary["left_in_spool"]) == (7, 3, 0)

    queried = run("provenance", "query", "--tenant-id", "tenant-0", "--json", *target)
    assert queried.returncode == 0, queried.stderr
    assert {json.loads(line)["record"]["run_id"] for line in queried.stdout.splitlines()} == {
        "run-0",
        "run-3",
        "run-6",
    }

    stats = run("drift-stats", "--json", *target)
    assert json.loads(stats.stdout)["total"] == "7"  # int64 is a string in proto JSON

    table = run("reports", *target)
    assert table.returncode == 0 and "canary reports" in table.stdout

    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(provenance_json(0, v1_cost=-3)) + "\n")
    refused = run("provenance", "write", str(bad), *target)
    assert refused.returncode == 1
    # Refused before anything is sent, by the server's own rules, naming the line and field.
    assert "line 1" in refused.stderr and "v1_cost: must not be negative" in refused.stderr
    assert json.loads(run("drift-stats", "--json", *target).stdout)["total"] == "7"

    missing = run("report", "nope", *target)
    assert missing.returncode == 1 and "NOT_FOUND" in missing.stderr
