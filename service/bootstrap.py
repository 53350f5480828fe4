"""The composition root: settings -> engine -> unit of work -> handlers -> server.

Nothing is built at import time; tests call these functions with their own settings.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from sqlalchemy import Engine

from costsim_analytics.drivers.artifacts import LocalArtifactStore
from costsim_analytics.drivers.database import EngineOptions, make_engine
from costsim_analytics.drivers.locks import canary_lock
from costsim_analytics.drivers.schema import check_schema
from costsim_analytics.engines.canary import CanaryConfig, Progress
from costsim_analytics.handlers.canary import CanaryRunHandler, ReconcileHandler
from costsim_analytics.handlers.provenance import (
    DriftStatsHandler,
    QueryProvenanceHandler,
    WriteProvenanceBatchHandler,
)
from costsim_analytics.handlers.registry import (
    OP_CANARY_RECONCILE,
    OP_CANARY_REPORT,
    OP_CANARY_REPORTS,
    OP_CANARY_RUN,
    OP_DRIFT_STATS,
    OP_PROVENANCE_BATCH,
    OP_PROVENANCE_QUERY,
    OperationRegistry,
)
from costsim_analytics.handlers.reports import GetCanaryReportHandler, QueryCanaryReportsHandler
from costsim_analytics.handlers.uow import SqlAlchemyUnitOfWorkFactory
from costsim_analytics.settings import Settings

if TYPE_CHECKING:
    from costsim_analytics.api.server import AnalyticsServer


def configure_logging(level: str) -> None:
    """One log format for the whole process."""
    logging.basicConfig(
        level=level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # Alembic announces its context on every schema probe; keep that out of the service log.
    logging.getLogger("alembic").setLevel(logging.WARNING)


def build_engine(settings: Settings) -> Engine:
    """The database engine for ``settings``."""
    return make_engine(
        settings.database_url,
        EngineOptions(
            pool_size=settings.db_pool_size,
            max_overflow=settings.db_max_overflow,
            pool_timeout_s=settings.db_pool_timeout_s,
            connect_timeout_s=settings.db_connect_timeout_s,
        ),
    )


def build_registry(engine: Engine, settings: Settings) -> OperationRegistry:
    """Every operation's handler, wired to one unit-of-work factory."""
    uow = SqlAlchemyUnitOfWorkFactory(engine)
    registry = OperationRegistry()
    registry.register(
        OP_PROVENANCE_BATCH, WriteProvenanceBatchHandler(uow, max_batch=settings.max_batch)
    )
    registry.register(
        OP_PROVENANCE_QUERY, QueryProvenanceHandler(uow, max_page_size=settings.max_page_size)
    )
    registry.register(OP_DRIFT_STATS, DriftStatsHandler(uow))
    registry.register(
        OP_CANARY_REPORTS, QueryCanaryReportsHandler(uow, max_page_size=settings.max_page_size)
    )
    registry.register(OP_CANARY_REPORT, GetCanaryReportHandler(uow))
    registry.register(OP_CANARY_RUN, build_canary_handler(engine, settings))
    registry.register(
        OP_CANARY_RECONCILE,
        ReconcileHandler(uow, LocalArtifactStore(settings.artifacts_dir)),
    )
    return registry


def canary_config(settings: Settings) -> CanaryConfig:
    """The configured verdict thresholds."""
    return CanaryConfig(
        drift_threshold=settings.canary_drift_threshold,
        outlier_threshold=settings.canary_outlier_threshold,
        outlier_max_pct=settings.canary_outlier_max_pct,
        major_drift_max_pct=settings.canary_major_drift_max_pct,
        min_samples=settings.canary_min_samples,
        median_delta_tolerance=settings.canary_median_delta_tolerance,
        bootstrap_resamples=settings.canary_bootstrap_resamples,
    )


def build_canary_handler(
    engine: Engine, settings: Settings, progress: Progress | None = None
) -> CanaryRunHandler:
    """The RunCanary handler (also used in-process by ``canary run --local``)."""
    return CanaryRunHandler(
        SqlAlchemyUnitOfWorkFactory(engine),
        LocalArtifactStore(settings.artifacts_dir),
        lambda: canary_lock(engine, settings.artifacts_dir),
        defaults=canary_config(settings),
        lock_timeout_s=settings.canary_lock_timeout_s,
        synthetic_fallback=settings.canary_synthetic_fallback,
        progress=progress,
    )


def build_server(engine: Engine, settings: Settings) -> AnalyticsServer:
    """The gRPC server for ``settings`` on ``engine``."""
    # Imported here so that in-process users of the handlers need not load grpc.
    from costsim_analytics.api.server import AnalyticsServer

    return AnalyticsServer(
        build_registry(engine, settings),
        probe=lambda: check_schema(engine),
        listen=settings.listen,
        workers=settings.workers,
        max_message_bytes=settings.max_message_mb * 1024 * 1024,
        health_interval_s=settings.health_interval_s,
        grace_period_s=settings.grace_period_s,
    )
