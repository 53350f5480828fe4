"""The server's database engines.

The primary's pools (main, streams, health probe) and the read replicas of
``COSTSIM_DATABASE_READ_URLS``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from sqlalchemy import Engine

from costsim_analytics.drivers.database import EngineOptions, make_engine
from costsim_analytics.settings import Settings, split_read_urls

if TYPE_CHECKING:
    from costsim_analytics.api.metrics import ServiceMetrics
    from costsim_analytics.drivers.replicas import ReplicaRouter

log = logging.getLogger(__name__)


def build_engine(
    settings: Settings,
    *,
    pool_size: int | None = None,
    max_overflow: int | None = None,
    pre_ping: bool = False,
) -> Engine:
    """The database engine for ``settings`` (its pool sized by the settings unless given).

    ``pre_ping``: for a pool whose users check out connections outside the unit of work
    (the health probe's), which is not where a dropped connection is noticed and replaced.
    """
    options = replace(engine_options(settings, pool_size, max_overflow), pre_ping=pre_ping)
    return make_engine(settings.database_url, options)


def engine_options(
    settings: Settings, pool_size: int | None = None, max_overflow: int | None = None
) -> EngineOptions:
    """The pool and timeouts of the settings' engines."""
    return EngineOptions(
        pool_size=settings.db_pool_size if pool_size is None else pool_size,
        max_overflow=settings.db_max_overflow if max_overflow is None else max_overflow,
        pool_timeout_s=settings.db_pool_timeout_s,
        connect_timeout_s=settings.db_connect_timeout_s,
    )


def build_replicas(
    settings: Settings, metrics: ServiceMetrics | None = None
) -> ReplicaRouter | None:
    """The read replicas of COSTSIM_DATABASE_READ_URLS (None: none), not yet probing.

    Each has the primary's pool settings, enlarged by the streams a replica may serve
    (COSTSIM_MAX_STREAMS), and a short connect timeout.
    """
    urls = split_read_urls(settings.database_read_urls)
    if not urls:
        return None
    from costsim_analytics.drivers.replicas import ReplicaRouter

    options = engine_options(settings, max_overflow=settings.db_max_overflow + settings.max_streams)
    router = ReplicaRouter(
        urls,
        options,
        settings.replica_max_lag_s,
        on_read=None if metrics is None else metrics.count_read,
    )
    if metrics is not None:
        metrics.watch_replicas(router.statuses, [r.name for r in router.replicas])
    log.info(
        "read replicas: %s (max replay lag %ss)",
        ", ".join(r.name for r in router.replicas),
        settings.replica_max_lag_s,
    )
    return router


# Connections of the stream pool beyond COSTSIM_MAX_STREAMS: the dashboard's report lists.
STREAM_POOL_SPARE = 4


@dataclass(frozen=True)
class ServerEngines:
    """The server's connection pools: the main one, the streams' and the health probe's.

    Admission lets at most ``COSTSIM_MAX_STREAMS`` streams in, and each holds one connection
    of its own pool for its life: streams can never take the connections that unary calls or
    the probe need. An in-memory SQLite database is one per engine, so there it is shared.
    """

    main: Engine
    streams: Engine
    probe: Engine

    @classmethod
    def build(cls, main: Engine, settings: Settings) -> ServerEngines:
        """The stream and probe pools beside ``main`` (the caller's engine)."""
        if main.url.get_backend_name() == "sqlite" and main.url.database in (None, "", ":memory:"):
            return cls(main, main, main)
        streams = build_engine(
            settings, pool_size=settings.max_streams, max_overflow=STREAM_POOL_SPARE
        )
        probe = build_engine(settings, pool_size=1, max_overflow=0, pre_ping=True)
        return cls(main, streams, probe)

    def dispose(self) -> None:
        """Close the pools this object made (the main engine is its caller's)."""
        for engine in {id(e): e for e in (self.streams, self.probe) if e is not self.main}.values():
            engine.dispose()
