"""COSTSIM_ARTIFACTS_URL: what it accepts, the refusal of two locations, the store it builds."""

from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError
from typer.testing import CliRunner

from costsim_analytics.bootstrap import artifact_store
from costsim_analytics.cli import canary
from costsim_analytics.drivers.artifacts import LocalArtifactStore
from costsim_analytics.drivers.artifacts.s3 import S3ArtifactStore
from costsim_analytics.settings import ArtifactsLocation, Settings, parse_artifacts_url


@pytest.mark.parametrize(
    ("url", "location"),
    [
        ("s3://costsim-artifacts", ArtifactsLocation("s3", bucket="costsim-artifacts")),
        (
            "s3://costsim/prod/canary/",
            ArtifactsLocation("s3", bucket="costsim", prefix="prod/canary"),
        ),
        ("s3://a.b-c/x", ArtifactsLocation("s3", bucket="a.b-c", prefix="x")),
        ("file:///srv/artifacts", ArtifactsLocation("local", path=Path("/srv/artifacts"))),
        ("file://localhost/srv/a%20b", ArtifactsLocation("local", path=Path("/srv/a b"))),
    ],
)
def test_accepted_urls(url, location):
    assert parse_artifacts_url(url) == location


@pytest.mark.parametrize(
    "url",
    [
        "http://example/bucket",
        "/srv/artifacts",
        "s3://",
        "s3://ab",
        "s3://Upper-Case",
        "s3://under_score",
        "s3://-dash",
        "s3://bucket/a//b",
        "s3://bucket/../x",
        "s3://bucket/x?versionId=1",
        "file://host/srv",
        "file:relative/path",
    ],
)
def test_refused_urls(url):
    with pytest.raises(ValueError, match=r"must|bucket|prefix|segment"):
        parse_artifacts_url(url)
    with pytest.raises(ValidationError, match="artifacts_url"):
        Settings(artifacts_url=url)


def test_unset_or_empty_url_keeps_the_directory():
    settings = Settings(artifacts_url="  ")
    assert settings.artifacts_url == ""
    store = artifact_store(settings)
    assert isinstance(store, LocalArtifactStore)
    assert store.root == Path("var/artifacts").resolve()


def test_url_and_directory_together_are_refused(monkeypatch, tmp_path):
    monkeypatch.setenv("COSTSIM_ARTIFACTS_URL", "s3://costsim/x")
    monkeypatch.setenv("COSTSIM_ARTIFACTS_DIR", str(tmp_path))
    with pytest.raises(ValidationError, match="both set: set one"):
        Settings()
    monkeypatch.delenv("COSTSIM_ARTIFACTS_DIR")
    with pytest.raises(ValidationError, match="both set"):
        Settings(artifacts_dir=tmp_path)  # as --artifacts-dir passes it
    assert Settings().artifacts_url == "s3://costsim/x"


def test_the_cli_refuses_two_locations_with_a_clear_message(monkeypatch, tmp_path):
    monkeypatch.setenv("COSTSIM_ARTIFACTS_URL", "s3://costsim/x")
    result = CliRunner().invoke(canary.app, ["reconcile", "--artifacts-dir", str(tmp_path)])
    assert result.exit_code == 2
    assert "invalid settings" in result.output and "both set" in result.output


def test_a_file_url_builds_a_local_store(tmp_path):
    store = artifact_store(Settings(artifacts_url=f"file://{tmp_path}/shared"))
    assert isinstance(store, LocalArtifactStore) and store.root == tmp_path / "shared"


def test_an_s3_url_builds_a_bounded_client_from_the_aws_variables(monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("AWS_REGION", "eu-west-3")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "k")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "s")
    settings = Settings(
        artifacts_url="s3://costsim/prod",
        artifacts_connect_timeout_s=1.5,
        artifacts_read_timeout_s=7,
        artifacts_max_attempts=4,
    )
    store = artifact_store(settings)
    assert isinstance(store, S3ArtifactStore)
    assert (store.bucket, store.prefix, store.location) == ("costsim", "prod", "s3://costsim/prod")
    meta = store.client.meta
    assert meta.endpoint_url == "http://127.0.0.1:9" and meta.region_name == "eu-west-3"
    config: Any = meta.config  # botocore's Config sets its attributes dynamically
    assert config.connect_timeout == 1.5 and config.read_timeout == 7
    assert config.retries == {"mode": "standard", "total_max_attempts": 4}
