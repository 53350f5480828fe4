"""The composition root: settings -> engine -> unit of work -> handlers -> server.

Nothing is built at import time; tests call these functions with their own settings.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from typing import TYPE_CHECKING

from sqlalchemy import Engine

from costsim_analytics.drivers.artifacts import LocalArtifactStore
from costsim_analytics.drivers.locks import canary_lock
from costsim_analytics.drivers.schema import check_schema
from costsim_analytics.engines.canary.evaluation import CanaryConfig, Progress
from costsim_analytics.engines.canary.judge import JUDGES
from costsim_analytics.engines.golden.comparison import GoldenConfig
from costsim_analytics.engines.limits import MIB, WorkLimits
from costsim_analytics.exposure import check_listen, security_mode
from costsim_analytics.handlers.call import Call
from costsim_analytics.handlers.canary import RUN_REPLAY, CanaryRunHandler, ReconcileHandler
from costsim_analytics.handlers.explain import ExplainCanaryRunHandler
from costsim_analytics.handlers.golden import (
    CREATE_REPLAY,
    PROMOTE_REPLAY,
    ActivateGoldenDatasetHandler,
    CompareGoldenHandler,
    CreateGoldenDatasetHandler,
    GetGoldenDatasetHandler,
    ListGoldenDatasetsHandler,
    PromoteCanaryRunHandler,
)
from costsim_analytics.handlers.idempotency import ReplayTable, idempotency, request_ids
from costsim_analytics.handlers.ports import ArtifactStore
from costsim_analytics.handlers.provenance import (
    BATCH_REPLAY,
    DriftStatsHandler,
    QueryProvenanceHandler,
    WriteProvenanceBatchHandler,
)
from costsim_analytics.handlers.registry import (
    OP_CANARY_EXPLAIN,
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
    OP_PARTITION_UPKEEP,
    OP_PROVENANCE_BATCH,
    OP_PROVENANCE_QUERY,
    OP_RETENTION,
    Middleware,
    OperationRegistry,
)
from costsim_analytics.handlers.reports import GetCanaryReportHandler, QueryCanaryReportsHandler
from costsim_analytics.handlers.retention import PartitionUpkeepHandler, RetentionHandler
from costsim_analytics.handlers.routing import route_reads
from costsim_analytics.handlers.uow import ReadReplicas, SqlAlchemyUnitOfWorkFactory
from costsim_analytics.pools import ServerEngines, build_replicas
from costsim_analytics.settings import Settings, artifacts_location
from costsim_analytics.tracing import Tracing

log = logging.getLogger(__name__)

if TYPE_CHECKING:
    from costsim_analytics.api.auth import Security
    from costsim_analytics.api.metrics import ServiceMetrics
    from costsim_analytics.api.server import AnalyticsServer
    from costsim_analytics.drivers.replicas import ReplicaRouter

# The idempotent operations: a request_id makes a retry replay the first answer.
IDEMPOTENT = (
    ReplayTable()
    .add(OP_PROVENANCE_BATCH, BATCH_REPLAY)
    .add(OP_CANARY_RUN, RUN_REPLAY)
    .add(OP_GOLDEN_CREATE, CREATE_REPLAY)
    .add(OP_GOLDEN_PROMOTE, PROMOTE_REPLAY)
)


def configure_logging(level: str) -> None:
    """One log format for the whole process."""
    logging.basicConfig(
        level=level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # Alembic announces its context on every schema probe; keep that out of the service log.
    logging.getLogger("alembic").setLevel(logging.WARNING)


def build_registry(
    engine: Engine,
    settings: Settings,
    metrics: ServiceMetrics | None = None,
    progress: Progress | None = None,
    *,
    stream_engine: Engine | None = None,
    tracing: Tracing | None = None,
    replicas: ReadReplicas | None = None,
) -> OperationRegistry:
    """Every operation's handler on one unit-of-work factory, with the cross-cutting concerns.

    The middleware, outermost first (each skips the operations it does not concern):

    1. metrics: counts the results of writes and canary runs (the server's only);
    2. (the caller's principal is decided at the transport edge, ``api/auth.py``, once per
       RPC, and reaches handlers as ``Call.principal``);
    3. (admission control too, ``api/admission.py``: it must refuse a call before the call
       queues for a worker thread, which is before any middleware runs; the call's deadline
       reaches handlers as ``Call.deadline``);
    4. request ids: the one length rule for every idempotent operation;
    5. idempotency: replay a finished request, or let the handler take the key;
    6. read routing: with ``replicas``, the reads of ``handlers/routing.py``'s operations go
       to a replica, falling back to the primary.

    The streaming queries read through ``stream_engine`` (the stream pool, see
    :class:`ServerEngines`) when given. With ``tracing``, artifact I/O makes spans and a canary
    run's stages are events of its span (the engines are instrumented by :func:`build_server`).
    """
    uow = SqlAlchemyUnitOfWorkFactory(engine, replicas)
    streams = uow if stream_engine is None else SqlAlchemyUnitOfWorkFactory(stream_engine, replicas)
    artifacts = artifact_store(settings, tracing)
    page = settings.max_page_size
    registry = OperationRegistry()
    registry.register(
        OP_PROVENANCE_BATCH,
        WriteProvenanceBatchHandler(
            uow, max_batch=settings.max_batch, max_json_depth=settings.max_json_depth
        ),
    )
    registry.register(OP_PROVENANCE_QUERY, QueryProvenanceHandler(streams, max_page_size=page))
    registry.register(OP_DRIFT_STATS, DriftStatsHandler(uow))
    registry.register(OP_CANARY_REPORTS, QueryCanaryReportsHandler(streams, max_page_size=page))
    registry.register(OP_CANARY_REPORT, GetCanaryReportHandler(uow))
    registry.register(
        OP_CANARY_RUN, build_canary_handler(engine, settings, progress, artifacts, tracing)
    )
    registry.register(OP_CANARY_EXPLAIN, ExplainCanaryRunHandler(uow, artifacts))
    registry.register(OP_CANARY_RECONCILE, ReconcileHandler(uow, artifacts))
    registry.register(OP_RETENTION, RetentionHandler(uow, artifacts))
    registry.register(OP_PARTITION_UPKEEP, PartitionUpkeepHandler(uow))
    limits = work_limits(settings)
    registry.register(
        OP_GOLDEN_CREATE,
        CreateGoldenDatasetHandler(uow, max_json_depth=settings.max_json_depth, limits=limits),
    )
    registry.register(OP_GOLDEN_PROMOTE, PromoteCanaryRunHandler(uow, artifacts, limits=limits))
    registry.register(OP_GOLDEN_GET, GetGoldenDatasetHandler(uow))
    registry.register(OP_GOLDEN_LIST, ListGoldenDatasetsHandler(uow))
    registry.register(OP_GOLDEN_ACTIVATE, ActivateGoldenDatasetHandler(uow))
    registry.register(
        OP_GOLDEN_COMPARE, CompareGoldenHandler(uow, golden_config(settings), limits=limits)
    )
    middleware: list[Middleware] = [] if metrics is None else [metrics.middleware()]
    middleware += [request_ids(IDEMPOTENT), idempotency(uow, IDEMPOTENT)]
    if replicas is not None:
        middleware.append(route_reads())
    registry.wrap(*middleware)
    return registry


def work_limits(settings: Settings) -> WorkLimits:
    """The per-call work bounds (samples, plan size, artifact bytes)."""
    return WorkLimits(
        max_samples=settings.max_samples,
        max_plan_bytes=settings.max_plan_bytes,
        max_plan_steps=settings.max_plan_steps,
        max_artifact_bytes=settings.canary_max_artifact_mb * MIB,
    )


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


def artifact_store(settings: Settings, tracing: Tracing | None = None) -> ArtifactStore:
    """The artifact store COSTSIM_ARTIFACTS_URL (else COSTSIM_ARTIFACTS_DIR) names.

    An ``s3://`` URL gets a boto3 client that finds its endpoint, region and credentials the
    standard way (``AWS_ENDPOINT_URL_S3`` / ``AWS_ENDPOINT_URL``, ``AWS_REGION`` or
    ``AWS_DEFAULT_REGION``, ``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY``, the AWS config
    files, an instance role), with bounded requests: COSTSIM_ARTIFACTS_CONNECT_TIMEOUT_S and
    _READ_TIMEOUT_S per attempt, COSTSIM_ARTIFACTS_MAX_ATTEMPTS attempts in botocore's
    ``standard`` retry mode (transient errors and throttling only, jittered backoff).
    Traced, its I/O is in spans.
    """
    store = _artifact_store(settings)
    return store if tracing is None else tracing.artifacts(store)


def _artifact_store(settings: Settings) -> ArtifactStore:
    location = artifacts_location(settings)
    if location.kind == "local":
        assert location.path is not None
        local = LocalArtifactStore(location.path)
        log.info("canary artifacts in %s", local.location)
        return local
    import boto3
    from botocore.config import Config

    from costsim_analytics.drivers.artifacts.s3 import S3ArtifactStore

    config = Config(
        connect_timeout=settings.artifacts_connect_timeout_s,
        read_timeout=settings.artifacts_read_timeout_s,
        # total_max_attempts counts the first attempt (botocore's max_attempts does not).
        retries={"mode": "standard", "total_max_attempts": settings.artifacts_max_attempts},
        # Checksums are sent explicitly (Content-MD5 and SHA-256, see drivers/artifacts/s3.py);
        # botocore's own CRC trailers would only add a header some S3-compatible servers refuse.
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
    )
    # botocore reads AWS_DEFAULT_REGION; AWS_REGION (what the other SDKs read) is honoured too.
    region = os.environ.get("AWS_REGION") or None
    client = boto3.session.Session().client("s3", region_name=region, config=config)
    store = S3ArtifactStore(client, location.bucket, location.prefix)
    log.info("canary artifacts in %s", store.location)
    return store


def build_canary_handler(
    engine: Engine,
    settings: Settings,
    progress: Progress | None = None,
    artifacts: ArtifactStore | None = None,
    tracing: Tracing | None = None,
) -> CanaryRunHandler:
    """The RunCanary handler (``progress`` reports its stages, for ``canary run --local``).

    Traced, each stage is also an event of the current span.
    """
    if tracing is not None:
        progress = _both(tracing.canary_stage, progress)
    return CanaryRunHandler(
        SqlAlchemyUnitOfWorkFactory(engine),
        artifacts if artifacts is not None else artifact_store(settings, tracing),
        lambda: canary_lock(engine, settings.artifacts_dir),
        defaults=canary_config(settings),
        lock_timeout_s=settings.canary_lock_timeout_s,
        synthetic_fallback=settings.canary_synthetic_fallback,
        max_candidates=settings.canary_max_candidates,
        progress=progress,
        golden_dataset=settings.canary_golden_dataset,
        golden_config=golden_config(settings),
        max_json_depth=settings.max_json_depth,
        limits=work_limits(settings),
    )


def _both(first: Progress, then: Progress | None) -> Progress:
    if then is None:
        return first

    def both(stage: str) -> None:
        first(stage)
        then(stage)

    return both


def build_security(settings: Settings) -> Security:
    """Authentication, TLS and policy for ``settings`` (docs/security.md).

    Raises:
        SecurityConfigError: half a setup (a certificate without its key, tokens without a
            policy, ...), or an insecure setup on a non-loopback address without
            ``COSTSIM_INSECURE``.
        TlsError, PolicyError, KeyConfigError: a file that cannot be used.
    """
    from costsim_analytics.api.auth import Security
    from costsim_analytics.auth.authn import Authenticator
    from costsim_analytics.auth.policy import PolicyStore
    from costsim_analytics.auth.tls import ReloadingTls, TlsFiles
    from costsim_analytics.auth.tokens import JwksFile, KeySource, StaticSecret, TokenVerifier

    mode = security_mode(settings)
    check_listen(mode, [settings.listen, settings.http_listen], allow_insecure=settings.insecure)
    for warning in mode.warnings:
        log.warning("%s", warning)
    tls = None
    if settings.tls_cert is not None and settings.tls_key is not None:
        tls = ReloadingTls(TlsFiles(settings.tls_cert, settings.tls_key, settings.tls_client_ca))
    if mode.insecure:
        return Security(Authenticator.insecure(), tls, metrics_auth=settings.metrics_auth)
    keys: KeySource | None = None
    if settings.jwt_jwks_file is not None:
        keys = JwksFile(settings.jwt_jwks_file)
    elif settings.jwt_hs256_secret_file is not None:
        keys = StaticSecret.from_file(settings.jwt_hs256_secret_file)
    verifier = None
    if keys is not None:
        verifier = TokenVerifier(
            keys, audience=settings.jwt_audience, issuer=settings.jwt_issuer or None
        )
    assert settings.policy_file is not None  # security_mode: not insecure means a policy
    policy = PolicyStore(settings.policy_file)
    return Security(
        Authenticator(policy, verifier), tls, policy, metrics_auth=settings.metrics_auth
    )


def connection_options(settings: Settings) -> list[tuple[str, int]]:
    """Keepalive and connection age for the gRPC server (README, "Connections").

    The server pings idle connections (a dead peer or a silent middlebox is noticed), lets
    clients ping every 10 s, and sends GOAWAY to connections older than the maximum age, so
    that clients behind a load balancer spread over new replicas; calls in flight on a closing
    connection get the grace to finish.
    """
    s = settings
    return [
        ("grpc.keepalive_time_ms", int(s.keepalive_time_s * 1000)),
        ("grpc.keepalive_timeout_ms", int(s.keepalive_timeout_s * 1000)),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
        ("grpc.http2.max_ping_strikes", 2),
        ("grpc.max_connection_age_ms", int(s.max_connection_age_s * 1000)),
        ("grpc.max_connection_age_grace_ms", int(s.max_connection_age_grace_s * 1000)),
    ]


def health_probe(engine: Engine) -> Callable[[], None]:
    """The server's health probe: reads the schema version, writes nothing."""
    return lambda: check_schema(engine)


def build_server(
    engine: Engine,
    settings: Settings,
    security: Security | None = None,
    tracing: Tracing | None = None,
    *,
    reuse_port: bool = False,
) -> AnalyticsServer:
    """The gRPC server for ``settings`` on ``engine`` (``security`` built from them if None).

    ``reuse_port``: one of the processes of ``serve --processes`` (``api/supervisor.py``).

    ``tracing`` (``Tracing.from_env``; None: off) adds the server spans, and database child
    spans on every engine the server reads and writes through (``engine`` and the stream
    pool). Off, nothing of it is installed.
    """
    # Imported here so that in-process users of the handlers need not load grpc.
    from costsim_analytics.api.admission import AdmissionLimits, Bound
    from costsim_analytics.api.decoding import MessageLimits
    from costsim_analytics.api.metrics import ServiceMetrics
    from costsim_analytics.api.server import AnalyticsServer

    security = security or build_security(settings)
    metrics = ServiceMetrics()
    engines = ServerEngines.build(engine, settings)
    replicas = build_replicas(settings, metrics)
    read_engines = [] if replicas is None else [r.engine for r in replicas.replicas]
    if tracing is not None:
        for traced in {id(e): e for e in (engines.main, engines.streams, *read_engines)}.values():
            tracing.instrument(traced)
    registry = build_registry(
        engine,
        settings,
        metrics,
        stream_engine=engines.streams,
        tracing=tracing,
        replicas=replicas,
    )
    upkeep = registry.get(OP_PARTITION_UPKEEP)
    s = settings
    limits = AdmissionLimits(
        stream=Bound(s.max_streams, s.max_streams_per_principal),
        long=Bound(s.max_long_calls, s.max_long_calls_per_principal),
        unary=Bound(s.max_unary_calls, s.max_unary_calls_per_principal),
        retry_after_s=s.admission_retry_after_s,
    )
    return AnalyticsServer(
        registry,
        probe=health_probe(engines.probe),
        metrics=metrics,
        security=security,
        upkeep=lambda: upkeep(None, Call()),
        listen=settings.listen,
        workers=settings.workers,
        stream_workers=settings.stream_workers,
        principal_worker_share=settings.principal_worker_share,
        limits=limits,
        send_timeout_s=settings.stream_send_timeout_s,
        on_stopped=engines.dispose if replicas is None else _both_done(engines.dispose, replicas),
        max_message_bytes=settings.max_message_mb * 1024 * 1024,
        message_limits=MessageLimits.from_settings(settings),
        health_interval_s=settings.health_interval_s,
        grace_period_s=settings.grace_period_s,
        http_listen=settings.http_listen,
        connection_options=connection_options(settings),
        tracing=tracing,
        replicas=replicas,
        reuse_port=reuse_port,
    )


def _both_done(dispose: Callable[[], None], replicas: ReplicaRouter) -> Callable[[], None]:
    def stopped() -> None:
        replicas.stop()
        dispose()

    return stopped
