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
from costsim_analytics.drivers.partitions import PartitionKeeper
from costsim_analytics.drivers.schema import check_schema
from costsim_analytics.engines.canary import CanaryConfig, Progress
from costsim_analytics.engines.golden import GoldenConfig
from costsim_analytics.engines.judge import JUDGES
from costsim_analytics.handlers.canary import CanaryRunHandler, ReconcileHandler
from costsim_analytics.handlers.golden import (
    ActivateGoldenDatasetHandler,
    CompareGoldenHandler,
    CreateGoldenDatasetHandler,
    GetGoldenDatasetHandler,
    ListGoldenDatasetsHandler,
    PromoteCanaryRunHandler,
)
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
    OP_GOLDEN_ACTIVATE,
    OP_GOLDEN_COMPARE,
    OP_GOLDEN_CREATE,
    OP_GOLDEN_GET,
    OP_GOLDEN_LIST,
    OP_GOLDEN_PROMOTE,
    OP_PROVENANCE_BATCH,
    OP_PROVENANCE_QUERY,
    OP_RETENTION,
    OperationRegistry,
)
from costsim_analytics.handlers.reports import GetCanaryReportHandler, QueryCanaryReportsHandler
from costsim_analytics.handlers.retention import RetentionHandler
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
    registry.register(
        OP_RETENTION, RetentionHandler(uow, LocalArtifactStore(settings.artifacts_dir))
    )
    registry.register(OP_GOLDEN_CREATE, CreateGoldenDatasetHandler(uow))
    registry.register(
        OP_GOLDEN_PROMOTE, PromoteCanaryRunHandler(uow, LocalArtifactStore(settings.artifacts_dir))
    )
    registry.register(OP_GOLDEN_GET, GetGoldenDatasetHandler(uow))
    registry.register(OP_GOLDEN_LIST, ListGoldenDatasetsHandler(uow))
    registry.register(OP_GOLDEN_ACTIVATE, ActivateGoldenDatasetHandler(uow))
    registry.register(OP_GOLDEN_COMPARE, CompareGoldenHandler(uow, golden_config(settings)))
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
        judge=JUDGES[settings.canary_judge],
        alpha=settings.canary_alpha,
        permutations=settings.canary_permutations,
    )


def golden_config(settings: Settings) -> GoldenConfig:
    """The configured golden pass/fail thresholds."""
    return GoldenConfig(
        tolerance=settings.golden_tolerance,
        min_share=settings.golden_min_share,
        max_feasibility_flips=settings.golden_max_feasibility_flips,
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
        golden_dataset=settings.canary_golden_dataset,
        golden_config=golden_config(settings),
    )


def build_server(engine: Engine, settings: Settings) -> AnalyticsServer:
    """The gRPC server for ``settings`` on ``engine``."""
    # Imported here so that in-process users of the handlers need not load grpc.
    from costsim_analytics.api.server import AnalyticsServer

    keep_partitions = PartitionKeeper(engine)

    def probe() -> None:
        check_schema(engine)
        keep_partitions()

    return AnalyticsServer(
        build_registry(engine, settings),
        probe=probe,
        listen=settings.listen,
        workers=settings.workers,
        max_message_bytes=settings.max_message_mb * 1024 * 1024,
        health_interval_s=settings.health_interval_s,
        grace_period_s=settings.grace_period_s,
        http_listen=settings.http_listen,
    )
