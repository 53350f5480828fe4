"""The Kubernetes manifests agree with the code: ports, probes, settings, drain time, labels.

(``make manifests`` checks them against the API schemas; this checks what a schema cannot.)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from costsim_analytics.api.server import SETTLE_S
from costsim_analytics.settings import Settings

KUBE = Path(__file__).resolve().parents[2] / "deploy" / "kubernetes"
# Not settings of the server, but read by it: the S3 client's standard credentials.
OTHER_ENV = {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}


def load(name: str) -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load((KUBE / name).read_text())
    return document


@pytest.fixture(scope="module")
def pod() -> dict[str, Any]:
    spec: dict[str, Any] = load("deployment.yaml")["spec"]["template"]
    return spec


@pytest.fixture(scope="module")
def server(pod: dict[str, Any]) -> dict[str, Any]:
    (container,) = pod["spec"]["containers"]
    found: dict[str, Any] = container
    return found


def env_of(server: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {item["name"]: item for item in server["env"]}


def ports_of(server: dict[str, Any]) -> dict[str, int]:
    return {port["name"]: port["containerPort"] for port in server["ports"]}


def port_in(address: str) -> int:
    return int(address.rpartition(":")[2])


def test_the_kustomization_lists_every_manifest() -> None:
    listed = set(load("kustomization.yaml")["resources"])
    assert listed == {p.name for p in KUBE.glob("*.yaml")} - {"kustomization.yaml"}


def test_every_server_variable_is_a_setting_and_valid(server: dict[str, Any]) -> None:
    env = env_of(server)
    known = {f"COSTSIM_{name.upper()}" for name in Settings.model_fields}
    # The read-replica setting: a server without it ignores the variable (settings ignore
    # unknown ones), so the manifest may name it; with it, it is checked like any other.
    ignored = {"COSTSIM_DATABASE_READ_URLS"} - known
    assert set(env) - known - OTHER_ENV - ignored == set()
    literal = {
        name.removeprefix("COSTSIM_").lower(): item["value"]
        for name, item in env.items()
        if name.startswith("COSTSIM_") and "value" in item
    }
    # The values given in the manifest are accepted as they are (the URL comes from a Secret).
    Settings(**literal, database_url="postgresql+psycopg://db/costsim")


def test_the_database_urls_come_from_a_secret(server: dict[str, Any]) -> None:
    env = env_of(server)
    for name in ("COSTSIM_DATABASE_URL", "COSTSIM_DATABASE_READ_URLS"):
        assert "value" not in env[name]
        assert env[name]["valueFrom"]["secretKeyRef"]["name"] == "costsim-analytics-database"
    assert env["COSTSIM_DATABASE_READ_URLS"]["valueFrom"]["secretKeyRef"]["optional"] is True


def test_the_ports_are_the_ones_the_server_listens_on(server: dict[str, Any]) -> None:
    env, ports = env_of(server), ports_of(server)
    assert ports["grpc"] == port_in(env["COSTSIM_LISTEN"]["value"])
    assert ports["http"] == port_in(env["COSTSIM_HTTP_LISTEN"]["value"])
    assert port_in(Settings.model_fields["listen"].default) == ports["grpc"]


def test_the_probes_use_the_grpc_health_service_and_the_side_port(server: dict[str, Any]) -> None:
    ports = ports_of(server)
    assert server["readinessProbe"]["grpc"]["port"] == ports["grpc"]
    assert server["startupProbe"]["grpc"]["port"] == ports["grpc"]
    # Liveness is the process, not the database: /healthz, open (COSTSIM_METRICS_AUTH).
    live = server["livenessProbe"]["httpGet"]
    assert live["path"] == "/healthz" and ports[live["port"]] == ports["http"]
    assert env_of(server)["COSTSIM_METRICS_AUTH"]["value"] in ("open", "metrics")


def test_the_kubelets_grpc_probe_speaks_plaintext(server: dict[str, Any]) -> None:
    """kubelet's gRPC probe cannot speak TLS, so the manifest serves without a certificate."""
    env = env_of(server)
    assert "COSTSIM_TLS_CERT" not in env
    assert env["COSTSIM_INSECURE"]["value"] == "true"
    assert {"COSTSIM_POLICY_FILE", "COSTSIM_JWT_JWKS_FILE"} <= set(env)


def test_one_process_per_cpu_of_the_limit(server: dict[str, Any]) -> None:
    processes = Settings(processes=env_of(server)["COSTSIM_PROCESSES"]["value"]).processes
    limits, requests = server["resources"]["limits"], server["resources"]["requests"]
    assert processes > 1
    assert float(limits["cpu"]) == processes
    assert requests["cpu"] == limits["cpu"]  # the CPUs are the pod's, not borrowed
    assert "memory" in requests and "memory" in limits


def test_the_grace_period_covers_the_drain(pod: dict[str, Any], server: dict[str, Any]) -> None:
    assert "COSTSIM_GRACE_PERIOD_S" not in env_of(server)  # the default, then
    grace: float = Settings.model_fields["grace_period_s"].default
    pause = server["lifecycle"]["preStop"]["sleep"]["seconds"]
    drain = grace + SETTLE_S
    assert pod["spec"]["terminationGracePeriodSeconds"] >= pause + drain + 5


def test_the_metrics_directory_is_writable(server: dict[str, Any], pod: dict[str, Any]) -> None:
    """A read-only root file system needs a /tmp for PROMETHEUS_MULTIPROC_DIR (--processes)."""
    assert server["securityContext"]["readOnlyRootFilesystem"] is True
    mounts = {m["mountPath"]: m["name"] for m in server["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    assert "emptyDir" in volumes[mounts["/tmp"]]


def test_the_service_is_headless_over_the_pods_ports(
    pod: dict[str, Any], server: dict[str, Any]
) -> None:
    service = load("service.yaml")["spec"]
    assert service["clusterIP"] == "None"
    labels = pod["metadata"]["labels"]
    assert service["selector"].items() <= labels.items()
    ports = ports_of(server)
    for port in service["ports"]:
        assert port["targetPort"] in ports and port["port"] == ports[port["targetPort"]]


def test_the_disruption_budget_covers_the_pods(pod: dict[str, Any]) -> None:
    budget = load("pdb.yaml")["spec"]
    deployment = load("deployment.yaml")["spec"]
    assert budget["selector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()
    assert budget["selector"] == deployment["selector"]
    assert budget["maxUnavailable"] < deployment["replicas"]


def test_the_canary_job_targets_the_service() -> None:
    cronjob = yaml.safe_load((KUBE.parent / "canary-cronjob.yaml").read_text())
    (container,) = cronjob["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"]
    service = load("service.yaml")
    grpc_port = next(p["port"] for p in service["spec"]["ports"] if p["name"] == "grpc")
    assert f"--target={service['metadata']['name']}:{grpc_port}" in container["args"]
