"""Configuration from ``COSTSIM_*`` environment variables, overridable by CLI flags."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """Every knob of the service; see the README's configuration table."""

    model_config = SettingsConfigDict(env_prefix="COSTSIM_", extra="ignore")

    database_url: str = Field(
        "sqlite:///var/costsim.db",
        description="SQLAlchemy URL: sqlite:///path or postgresql+psycopg://user@host/db",
    )
    listen: str = Field("127.0.0.1:50051", description="gRPC listen address (port 0: any free)")
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
    canary_lock_timeout_s: float = Field(2.0, ge=0, description="Wait for the run lock")
    canary_synthetic_fallback: bool = Field(
        True, description="Use the built-in samples when no recent provenance exists"
    )
