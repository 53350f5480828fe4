"""Configuration from ``COSTSIM_*`` environment variables, overridable by CLI flags."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from costsim_analytics.engines.judge import JUDGES

# Values of COSTSIM_HTTP_LISTEN that turn the HTTP side port off.
HTTP_OFF = ("", "off", "none", "false", "no")


class Settings(BaseSettings):
    """Every knob of the service; see the README's configuration table."""

    model_config = SettingsConfigDict(env_prefix="COSTSIM_", extra="ignore")

    database_url: str = Field(
        "sqlite:///var/costsim.db",
        description="SQLAlchemy URL: sqlite:///path or postgresql+psycopg://user@host/db",
    )
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
    max_batch: int = Field(1000, ge=1, le=100_000, description="Records per WriteProvenanceBatch")
    max_page_size: int = Field(10_000, ge=1, le=100_000, description="Messages per stream")
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
    max_message_mb: int = Field(
        80, ge=4, le=2000, description="Largest gRPC message accepted or sent, in MiB"
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
        """One of the judges ``engines/judge.py`` defines."""
        if value not in JUDGES:
            raise ValueError(f"must be one of {sorted(JUDGES)}")
        return value

    canary_lock_timeout_s: float = Field(2.0, ge=0, description="Wait for the run lock")
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
