"""Configuration from ``COSTSIM_*`` environment variables, overridable by CLI flags."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal
from urllib.parse import unquote, urlsplit

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from costsim_analytics.engines.canary.judge import JUDGES
from costsim_analytics.engines.limits import MAX_SAMPLES

# Values of COSTSIM_HTTP_LISTEN that turn the HTTP side port off.
HTTP_OFF = ("", "off", "none", "false", "no")

# COSTSIM_METRICS_AUTH: "open" leaves /metrics, /healthz and /readyz open; "metrics" protects
# /metrics (reader role); "all" protects the probes too. Booleans map to metrics / open.
MetricsAuth = Literal["open", "metrics", "all"]
_METRICS_AUTH_ALIASES = {
    **dict.fromkeys(("", "false", "0", "no", "off"), "open"),
    **dict.fromkeys(("true", "1", "yes", "on"), "metrics"),
}


# COSTSIM_PROCESSES: the most server processes one parent supervises.
MAX_PROCESSES = 64


def available_cpus() -> int:
    """The CPUs this process may run on (its affinity mask), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


class Settings(BaseSettings):
    """Every knob of the service; see the README's configuration table."""

    model_config = SettingsConfigDict(env_prefix="COSTSIM_", extra="ignore")

    database_url: str = Field(
        "sqlite:///var/costsim.db",
        description="SQLAlchemy URL: sqlite:///path or postgresql+psycopg://user@host/db",
    )
    database_read_urls: str = Field(
        "",
        description="Read replicas: comma-separated PostgreSQL URLs (a comma inside one: %2C)",
    )
    replica_max_lag_s: float = Field(
        5.0, gt=0, le=86_400, description="Replay lag above which a replica is skipped"
    )

    @field_validator("database_read_urls")
    @classmethod
    def _database_read_urls(cls, value: str) -> str:
        """Empty, or PostgreSQL URLs that SQLAlchemy can parse (see :func:`read_urls`)."""
        split_read_urls(value)
        return value.strip()

    @model_validator(mode="after")
    def _replicas_of_postgresql(self) -> Settings:
        """Read replicas are PostgreSQL standbys of a PostgreSQL primary."""
        if self.database_read_urls and not self.database_url.startswith("postgresql"):
            raise ValueError(
                "COSTSIM_DATABASE_READ_URLS needs a PostgreSQL COSTSIM_DATABASE_URL (the "
                "replicas are its streaming standbys)"
            )
        return self

    listen: str = Field("127.0.0.1:50051", description="gRPC listen address (port 0: any free)")
    http_listen: str = Field(
        "127.0.0.1:8080",
        description="Dashboard, /metrics and health over HTTP; empty or 'off' turns it off",
    )

    @field_validator("http_listen")
    @classmethod
    def _http_listen(cls, value: str) -> str:
        """``host:port`` (port 0: any free), or ``""`` when turned off."""
        value = value.strip()
        if value.lower() in HTTP_OFF:
            return ""
        host, sep, port = value.rpartition(":")
        if not sep or not host or not port.isdigit() or int(port) > 65535:
            raise ValueError("must be host:port (port 0 picks a free one), or 'off'")
        return value

    artifacts_dir: Path = Field(Path("var/artifacts"), description="Canary artifact root")
    artifacts_url: str = Field(
        "",
        description="Artifact store: empty (COSTSIM_ARTIFACTS_DIR), file:///path or "
        "s3://bucket/prefix",
    )
    artifacts_connect_timeout_s: float = Field(
        3.0, gt=0, le=60, description="Object store: connect timeout of one request"
    )
    artifacts_read_timeout_s: float = Field(
        10.0, gt=0, le=600, description="Object store: read timeout of one request"
    )
    artifacts_max_attempts: int = Field(
        3, ge=1, le=10, description="Object store: attempts of one request (first + retries)"
    )

    @field_validator("artifacts_url")
    @classmethod
    def _artifacts_url(cls, value: str) -> str:
        """Empty, ``file:///absolute/path`` or ``s3://bucket[/prefix]``."""
        value = value.strip()
        if value:
            parse_artifacts_url(value)
        return value

    @model_validator(mode="after")
    def _one_artifact_location(self) -> Settings:
        """COSTSIM_ARTIFACTS_URL and COSTSIM_ARTIFACTS_DIR (or --artifacts-dir): one of them."""
        if self.artifacts_url and "artifacts_dir" in self.model_fields_set:
            raise ValueError(
                "COSTSIM_ARTIFACTS_URL and COSTSIM_ARTIFACTS_DIR (or --artifacts-dir) are both "
                "set: set one (a local directory is also file:///path)"
            )
        return self

    max_batch: int = Field(1000, ge=1, le=100_000, description="Records per WriteProvenanceBatch")
    max_samples: int = Field(
        20_000,
        ge=1,
        le=MAX_SAMPLES,
        description="Samples one RunCanary or CreateGoldenDataset may carry or ask for",
    )
    max_plan_bytes: int = Field(
        64 * 1024, ge=1024, le=16 * 1024 * 1024, description="Compact JSON bytes of one plan_input"
    )
    max_plan_steps: int = Field(1000, ge=1, le=1_000_000, description="Steps of one plan_input")
    max_json_depth: int = Field(
        32,
        ge=1,
        le=32,
        description="Nesting levels of a payload or plan input (deeper ones may not decode)",
    )
    max_page_size: int = Field(10_000, ge=1, le=100_000, description="Messages per stream")
    processes: int = Field(
        1,
        ge=1,
        le=MAX_PROCESSES,
        description="Server processes sharing the gRPC port (auto: one per CPU); above 1 needs "
        "PostgreSQL",
    )

    @field_validator("processes", mode="before")
    @classmethod
    def _processes(cls, value: object) -> object:
        """A whole number from 1 to 64, or ``auto``: the CPUs this process may run on."""
        if isinstance(value, str):
            text = value.strip().lower()
            if text == "auto":
                return min(available_cpus(), MAX_PROCESSES)
            if not (text.isascii() and text.isdigit()):
                raise ValueError(f"must be a whole number from 1 to {MAX_PROCESSES}, or auto")
            return int(text)
        return value

    workers: int = Field(8, ge=1, le=256, description="Threads running handlers")
    db_pool_size: int = Field(8, ge=1, le=256, description="Database connections kept open")
    db_max_overflow: int = Field(
        8, ge=0, le=256, description="Extra connections opened under load, closed when idle"
    )
    db_pool_timeout_s: float = Field(
        5.0, gt=0, description="Wait for a free connection before UNAVAILABLE"
    )
    db_connect_timeout_s: int = Field(3, ge=1, le=60, description="Connect timeout (PostgreSQL)")
    grace_period_s: float = Field(10.0, ge=0, description="Shutdown grace for in-flight calls")
    health_interval_s: float = Field(1.0, gt=0, description="Database health probe period")
    keepalive_time_s: float = Field(
        60.0, gt=0, description="Ping an idle connection this often; drop it when unanswered"
    )
    keepalive_timeout_s: float = Field(20.0, gt=0, description="Wait for a keepalive ping's ack")
    max_connection_age_s: float = Field(
        1800.0, gt=0, description="Close connections this old (GOAWAY) so clients rebalance"
    )
    max_connection_age_grace_s: float = Field(
        300.0, ge=0, description="Time calls on a closing connection get to finish"
    )
    max_message_mb: int = Field(80, ge=4, le=2000, description="Largest gRPC message sent, in MiB")
    # The largest request each RPC accepts (README, "Message limits"); the server's gRPC
    # receive limit is the largest of them.
    max_query_message_kb: int = Field(
        64, ge=1, le=65_536, description="Request limit of every RPC but the three below, KiB"
    )
    max_record_kb: int = Field(
        32, ge=1, le=1024, description="WriteProvenanceBatch's limit per record of max_batch, KiB"
    )
    max_samples_message_mb: int = Field(
        64, ge=1, le=2000, description="Request limit of RunCanary and CreateGoldenDataset, MiB"
    )
    log_level: str = Field("INFO", description="Python logging level")
    canary_drift_threshold: float = Field(0.2, ge=0, description="KL divergence that fails")
    canary_outlier_threshold: float = Field(0.5, ge=0, description="drift_score of an outlier")
    canary_outlier_max_pct: float = Field(0.05, ge=0, le=1, description="Outlier share that fails")
    canary_major_drift_max_pct: float = Field(
        0.10, ge=0, le=1, description="MAJOR_DRIFT + MISMATCH share that fails"
    )
    canary_min_samples: int = Field(30, ge=1, description="Fewer valid samples: error, not pass")
    canary_median_delta_tolerance: float | None = Field(
        None, ge=0, description="Enables the significance rule (off when unset)"
    )
    canary_bootstrap_resamples: int = Field(2000, ge=100, le=100_000, description="Bootstrap")
    canary_judge: str = Field(
        "calibrated", description="Verdict rule: calibrated (default) or legacy (predecessor's)"
    )
    canary_alpha: float = Field(
        0.01, gt=0, lt=1, description="False-alarm budget the calibrated judge's rules share"
    )
    canary_permutations: int = Field(
        1000, ge=100, le=100_000, description="Sign-flip permutations of the KL test"
    )

    @field_validator("canary_judge")
    @classmethod
    def _canary_judge(cls, value: str) -> str:
        """One of the judges ``engines/canary/judge.py`` defines."""
        if value not in JUDGES:
            raise ValueError(f"must be one of {sorted(JUDGES)}")
        return value

    canary_lock_timeout_s: float = Field(2.0, ge=0, description="Wait for the run lock")
    canary_max_candidates: int = Field(
        100_000, ge=1, le=10_000_000, description="Newest provenance records a canary samples from"
    )
    canary_max_artifact_mb: int = Field(
        64, ge=1, le=100_000, description="Artifact MiB one canary run may write"
    )
    canary_synthetic_fallback: bool = Field(
        True, description="Use the built-in samples when no recent provenance exists"
    )
    canary_golden_dataset: str = Field(
        "", description="Golden dataset of canary runs that name none (empty: no comparison)"
    )
    golden_tolerance: float = Field(
        0.10, ge=0, description="Relative cost error of a golden sample within tolerance"
    )
    golden_min_share: float = Field(
        0.95, ge=0, le=1, description="Share of golden samples within tolerance to pass"
    )
    golden_max_feasibility_flips: int = Field(
        0, ge=0, description="Golden feasibility flips above which a comparison fails"
    )

    # --- admission control (README "Admission control") --------------------------------------
    max_streams: int = Field(
        32,
        ge=1,
        le=1024,
        description="Server streams in flight on the server (each holds a connection)",
    )
    max_streams_per_principal: int = Field(
        8, ge=1, le=1024, description="Server streams in flight for one principal"
    )
    max_long_calls: int = Field(
        4,
        ge=1,
        le=256,
        description="RunCanary, CompareGolden, PromoteCanaryRun, ExplainCanaryRun in flight",
    )
    max_long_calls_per_principal: int = Field(
        2, ge=1, le=256, description="Long calls in flight for one principal"
    )
    max_unary_calls: int = Field(
        64,
        ge=1,
        le=4096,
        description="Other calls in flight, queued or running (and dashboard pages)",
    )
    max_unary_calls_per_principal: int = Field(
        32, ge=1, le=4096, description="Other calls in flight for one principal"
    )
    stream_workers: int = Field(4, ge=1, le=256, description="Threads fetching stream chunks")
    principal_worker_share: float = Field(
        0.5, gt=0, le=1, description="Share of each worker pool one principal's calls may occupy"
    )
    stream_send_timeout_s: float = Field(
        30.0, gt=0, description="Cut a stream whose client has read nothing for this long"
    )
    admission_retry_after_s: float = Field(
        1.0, ge=0, description="RetryInfo delay sent with an admission refusal"
    )

    @model_validator(mode="after")
    def _per_principal_bounds(self) -> Settings:
        """A principal's bound cannot exceed the server's."""
        for cls in ("streams", "long_calls", "unary_calls"):
            total, per = getattr(self, f"max_{cls}"), getattr(self, f"max_{cls}_per_principal")
            if per > total:
                raise ValueError(
                    f"COSTSIM_MAX_{cls.upper()}_PER_PRINCIPAL ({per}) exceeds"
                    f" COSTSIM_MAX_{cls.upper()} ({total})"
                )
        return self

    # --- identity and authorization (docs/security.md) ----------------------------------------
    tls_cert: Path | None = Field(None, description="PEM certificate chain of both ports")
    tls_key: Path | None = Field(None, description="PEM private key of COSTSIM_TLS_CERT")
    tls_client_ca: Path | None = Field(
        None, description="PEM CA bundle; set, client certificates are required (mTLS)"
    )
    jwt_jwks_file: Path | None = Field(None, description="Local JWKS of the token issuers")
    jwt_hs256_secret_file: Path | None = Field(None, description="HS256 secret (small setups)")
    jwt_audience: str = Field("costsim-analytics", min_length=1, description="Required aud")
    jwt_issuer: str | None = Field(None, description="Required iss, when set")
    policy_file: Path | None = Field(None, description="TOML: identities -> roles and tenants")
    insecure: bool = Field(
        False, description="Allow an insecure setup (no policy, or no TLS) on a public address"
    )
    metrics_auth: MetricsAuth = Field(
        "open", description="open | metrics | all: which of /metrics, /healthz, /readyz need auth"
    )

    @field_validator(
        "tls_cert",
        "tls_key",
        "tls_client_ca",
        "jwt_jwks_file",
        "jwt_hs256_secret_file",
        "policy_file",
        "jwt_issuer",
        mode="before",
    )
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        """An empty variable (``COSTSIM_TLS_CERT=``) means unset, not the current directory."""
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("metrics_auth", mode="before")
    @classmethod
    def _metrics_auth(cls, value: object) -> object:
        """Booleans are accepted too: true is ``metrics``, false is ``open``."""
        if isinstance(value, bool):
            return "metrics" if value else "open"
        if isinstance(value, str):
            lowered = value.strip().lower()
            return _METRICS_AUTH_ALIASES.get(lowered, lowered)
        return value


# --- read replicas ----------------------------------------------------------------------------


def split_read_urls(value: str) -> list[str]:
    """The replica URLs of a COSTSIM_DATABASE_READ_URLS value, in order.

    Entries are separated by commas; a comma inside a URL (a password, a query value) is
    written ``%2C``, which SQLAlchemy decodes itself. Blank entries are ignored.

    Example:
        >>> split_read_urls("postgresql+psycopg://r1/db, postgresql+psycopg://u:a%2Cb@r2/db")
        ['postgresql+psycopg://r1/db', 'postgresql+psycopg://u:a%2Cb@r2/db']
        >>> split_read_urls("")
        []

    Raises:
        ValueError: an entry is not a SQLAlchemy URL, or names SQLite (a file has no
            streaming replicas).
    """
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    urls = [part.strip() for part in value.split(",") if part.strip()]
    for index, url in enumerate(urls):
        try:
            backend = make_url(url).get_backend_name()
        except (ArgumentError, ValueError):
            raise ValueError(
                f"COSTSIM_DATABASE_READ_URLS: entry {index + 1} is not a SQLAlchemy URL"
            ) from None
        if backend != "postgresql":
            raise ValueError(
                f"COSTSIM_DATABASE_READ_URLS: entry {index + 1} is a {backend} URL; read "
                "replicas are PostgreSQL streaming replicas"
            )
    return urls


# --- the artifact store ---------------------------------------------------------------------

_BUCKET_CHARS = set("abcdefghijklmnopqrstuvwxyz0123456789.-")


@dataclass(frozen=True, slots=True)
class ArtifactsLocation:
    """Where canary artifacts live: a local directory or a bucket and key prefix."""

    kind: Literal["local", "s3"]
    path: Path | None = None
    bucket: str = ""
    prefix: str = ""


def parse_artifacts_url(url: str) -> ArtifactsLocation:
    """The location a COSTSIM_ARTIFACTS_URL names.

    Example:
        >>> parse_artifacts_url("s3://costsim/prod/canary")
        ArtifactsLocation(kind='s3', path=None, bucket='costsim', prefix='prod/canary')
        >>> parse_artifacts_url("file:///srv/artifacts").path
        PosixPath('/srv/artifacts')

    Raises:
        ValueError: another scheme, a ``file:`` URL with a host or a relative path, an S3
            bucket name that S3 would refuse, or a prefix with empty or dot segments.
    """
    parts = urlsplit(url)
    if parts.query or parts.fragment:
        raise ValueError("must have no query or fragment")
    if parts.scheme == "file":
        if parts.netloc not in ("", "localhost") or not parts.path.startswith("/"):
            raise ValueError("a file: URL must be file:///absolute/path")
        return ArtifactsLocation("local", path=Path(unquote(parts.path)))
    if parts.scheme == "s3":
        bucket = parts.netloc
        if not 3 <= len(bucket) <= 63 or not set(bucket) <= _BUCKET_CHARS or bucket[0] in ".-":
            raise ValueError(f"{bucket!r} is not an S3 bucket name (3-63 of a-z 0-9 . -)")
        prefix = parts.path.strip("/")
        if prefix and any(seg in ("", ".", "..") for seg in prefix.split("/")):
            raise ValueError("the key prefix must not have empty, . or .. segments")
        return ArtifactsLocation("s3", bucket=bucket, prefix=prefix)
    raise ValueError("must be empty, file:///path or s3://bucket/prefix")


def artifacts_location(settings: Settings) -> ArtifactsLocation:
    """The configured location: COSTSIM_ARTIFACTS_URL, else COSTSIM_ARTIFACTS_DIR."""
    if settings.artifacts_url:
        return parse_artifacts_url(settings.artifacts_url)
    return ArtifactsLocation("local", path=settings.artifacts_dir)
