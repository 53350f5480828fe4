"""The client installs and imports without the server: no SQLAlchemy, numpy, scipy, pydantic.

The base install of the distribution is the client library; the server is the ``server``
extra. One test builds the wheel, installs it with its dependencies (resolved by pip, at the
versions of this environment) into a fresh virtualenv and uses the client there; the other
checks what importing the client pulls in, in this environment where everything is installed.
"""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SERVER_ONLY = (
    "sqlalchemy",
    "alembic",
    "psycopg",
    "pydantic",
    "pydantic_settings",
    "numpy",
    "scipy",
    "typer",
    "rich",
    "prometheus_client",
    "jwt",
    "cryptography",
    "grpc_health",
    "grpc_reflection",
    # Optional for the client: it propagates trace context only when opentelemetry-api is there.
    "opentelemetry",
)
CLIENT_DEPENDENCIES = {"grpcio", "grpcio-status", "protobuf"}

# Run in the fresh environment: the client at work (a record checked and spooled), then the
# modules it loaded and the server packages it could find.
PROBE = """
import importlib.util, json, sys, tempfile
from costsim_analytics.client import AnalyticsClient, ProvenanceWriter, prepare_record
from costsim_analytics.client.spool import Spool
record = prepare_record(run_id="r1", variant_slug="v2", source="sandbox",
                        payload={"input": {"plan": []}, "output": {"cost": 1.0}})
with tempfile.TemporaryDirectory() as folder:
    spool = Spool.open(folder)
    spool.append([record.body])
    spool.close()
    assert Spool.open(folder).recovery.records == 1
from costsim_analytics.client.channel import Credentials
from costsim_analytics.client.tracing import trace_metadata
assert trace_metadata() == ()
assert Credentials(token="t").metadata() == (("authorization", "Bearer t"),)
names = sorted({m.split(".")[0] for m in sys.modules})
found = [n for n in SERVER_ONLY if importlib.util.find_spec(n) is not None]
print(json.dumps({"modules": names, "installed": found}))
""".replace("SERVER_ONLY", repr(SERVER_ONLY))


def test_importing_the_client_imports_nothing_of_the_server():
    code = "import sys, json, costsim_analytics.client; print(json.dumps(sorted(sys.modules)))"
    modules = json.loads(subprocess.check_output([sys.executable, "-c", code], cwd=REPO))
    loaded = {name.split(".")[0] for name in modules}
    # grpcio's own __init__ imports grpc_health and grpc_reflection when they are installed
    # (as it does grpc_tools): that is not the client's doing; the fresh install has neither.
    assert loaded & (set(SERVER_ONLY) - {"grpc_health", "grpc_reflection"}) == set()
    assert "costsim_analytics.settings" not in modules and "costsim_analytics.api" not in modules


def test_the_wheel_installs_the_client_without_the_server(tmp_path):
    pip = [sys.executable, "-m", "pip"]
    subprocess.run(
        [*pip, "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", tmp_path, REPO],
        check=True,
        capture_output=True,
    )
    [wheel] = tmp_path.glob("costsim_analytics-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        [metadata] = [n for n in archive.namelist() if n.endswith(".dist-info/METADATA")]
        requires = [
            line.removeprefix("Requires-Dist: ")
            for line in archive.read(metadata).decode().splitlines()
            if line.startswith("Requires-Dist: ")
        ]
        assert "costsim_analytics/py.typed" in archive.namelist()
    base = {r.split("<")[0].split(">")[0].split("=")[0].strip() for r in requires if ";" not in r}
    assert base == CLIENT_DEPENDENCIES

    # The same versions as this environment, so that pip finds them in its cache.
    freeze = subprocess.check_output([*pip, "freeze", "--exclude-editable"], text=True)
    constraints = tmp_path / "constraints.txt"
    constraints.write_text(
        "\n".join(line for line in freeze.splitlines() if "costsim" not in line) + "\n"
    )
    fresh = tmp_path / "fresh"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", fresh], check=True)
    python = fresh / "bin" / "python"
    installed = subprocess.run(
        [*pip, "--python", python, "install", "-q", "-c", constraints, wheel],
        capture_output=True,
        text=True,
    )
    assert installed.returncode == 0, installed.stderr
    listed = subprocess.check_output([*pip, "--python", python, "list", "--format=json"])
    distributions = {d["name"].lower().replace("_", "-") for d in json.loads(listed)}
    assert distributions & {"sqlalchemy", "numpy", "scipy", "pydantic-settings", "alembic"} == set()

    probe = subprocess.run(
        [python, "-c", PROBE], capture_output=True, text=True, cwd=tmp_path, timeout=60
    )
    assert probe.returncode == 0, probe.stderr
    result = json.loads(probe.stdout)
    assert result["installed"] == [] and set(result["modules"]) & set(SERVER_ONLY) == set()
    assert "grpc" in result["modules"]

    # The command line says what it needs instead of a traceback.
    cli = subprocess.run(
        [fresh / "bin" / "costsim-analytics", "--help"], capture_output=True, text=True
    )
    assert cli.returncode == 2 and "costsim-analytics[server]" in cli.stderr
