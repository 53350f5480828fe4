"""The gRPC server: servicer, health, reflection, database probe and graceful shutdown.

Beside it, on the same event loop, the optional HTTP side port (``api/dashboard``): the
dashboard pages, ``/metrics``, ``/healthz`` and ``/readyz``.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import signal
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from costsim.analytics.v1 import analytics_pb2 as pb
from costsim.analytics.v1 import analytics_pb2_grpc as pb_grpc
from costsim_analytics.api.admission import (
    CLASSES,
    Admission,
    AdmissionLimits,
    FairPool,
    WorkerPools,
)
from costsim_analytics.api.auth import AuthInterceptor, Security
from costsim_analytics.api.dashboard.access import Access
from costsim_analytics.api.dashboard.app import POST_PATHS, Dashboard
from costsim_analytics.api.dashboard.httpserver import HttpServer
from costsim_analytics.api.decoding import DecodingInterceptor, MessageLimits
from costsim_analytics.api.metrics import MetricsInterceptor, ServiceMetrics
from costsim_analytics.api.servicer import AnalyticsServicer
from costsim_analytics.api.tracing import TracingInterceptor, traced_pages
from costsim_analytics.engines.errors import CostsimError
from costsim_analytics.handlers.registry import OperationRegistry
from costsim_analytics.tracing import Tracing

log = logging.getLogger(__name__)

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["AnalyticsService"].full_name
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING

Probe = Callable[[], None]


class Replicas(Protocol):
    """The read replicas' prober (``drivers/replicas.py``), as the server sees it."""

    def start(self) -> None:
        """Begin probing the replicas in the background."""

    def readiness_lines(self) -> list[str]:
        """One line per replica for ``/readyz``."""


# Partition upkeep runs at start and this often; after a failure it tries again sooner.
UPKEEP_INTERVAL_S = 3600.0
UPKEEP_RETRY_S = 60.0
# After the drain, how long the cancelled calls get to end (close their cursors) at most.
SETTLE_S = 5.0


def tune_gc() -> None:
    """Make the cyclic garbage collector run far less often.

    A 1,000-record batch allocates tens of thousands of short-lived containers, and the default
    thresholds (700 allocations) make the collector run dozens of times per batch, scanning
    the whole heap on older generations. Objects alive at start-up are frozen out of its scans.
    Measured by bench/ingest.py: server CPU per batch fell from about 40 ms to 24 ms.
    """
    gc.freeze()
    gc.set_threshold(50_000, 20, 20)


class AnalyticsServer:
    """Owns the grpc.aio server and keeps the health status in step with the database.

    ``probe`` raises when the database is unreachable or its schema is not at head; the
    server reports SERVING only while it succeeds, and recovers by itself when it does again.
    It only reads: ``upkeep`` (partition upkeep, which writes) is a task of its own.
    ``http_listen`` (empty: none) is the side port of the dashboard, metrics and probes.
    ``max_message_bytes`` bounds the messages it sends; ``message_limits`` those it receives,
    per RPC (``api/decoding.py``; None: ``max_message_bytes`` for every RPC).
    ``tracing`` (None: off) adds the server span of every RPC and page (``api/tracing.py``).
    ``replicas`` (None: none) are probed while the server runs; ``/readyz`` lists them, and
    never fails because of them (their reads fall back to the primary).
    ``reuse_port``: both ports are shared with the other processes of one supervisor.
    """

    def __init__(
        self,
        registry: OperationRegistry,
        probe: Probe,
        *,
        metrics: ServiceMetrics,
        security: Security,
        upkeep: Callable[[], object] | None = None,
        listen: str,
        workers: int = 8,
        stream_workers: int = 4,
        principal_worker_share: float = 0.5,
        limits: AdmissionLimits | None = None,
        send_timeout_s: float = 30.0,
        on_stopped: Callable[[], None] | None = None,
        max_message_bytes: int = 80 * 1024 * 1024,
        message_limits: MessageLimits | None = None,
        health_interval_s: float = 1.0,
        grace_period_s: float = 10.0,
        http_listen: str = "",
        connection_options: Sequence[tuple[str, int]] = (),
        tracing: Tracing | None = None,
        replicas: Replicas | None = None,
        reuse_port: bool = False,
    ) -> None:
        self._probe = probe
        self._replicas = replicas
        self._tracing = tracing
        self._upkeep = upkeep
        self.metrics = metrics
        self._health_interval_s = health_interval_s
        self._grace_period_s = grace_period_s
        limits = limits or AdmissionLimits()

        # One pool per class of call (api/admission.py), and the probe's own thread: a health
        # check never queues behind handler work.
        # Each takes the queued work of principals in turn (FairPool), so a flood from one
        # caller queues behind itself, not in front of everyone else.
        def pool(size: int, name: str) -> FairPool:
            return FairPool(size, name, per_key=max(1, int(size * principal_worker_share)))

        self._pools = WorkerPools(
            stream=pool(stream_workers, "stream"),
            long=pool(limits.long.total, "long"),
            unary=pool(workers, "handler"),
        )
        self._probe_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="probe")
        self._on_stopped = on_stopped
        self.admission = Admission(
            limits,
            lambda cls, reason: metrics.admission_refusals.labels(cls, reason).inc(),
        )
        for cls in CLASSES:
            gauge = metrics.calls_in_flight.labels(cls)
            metrics.track(gauge, lambda cls=cls: self.admission.in_flight(cls))  # type: ignore[misc]
        self._security = security
        sizes = message_limits or MessageLimits.of_service(
            query_bytes=max_message_bytes,
            batch_bytes=max_message_bytes,
            samples_bytes=max_message_bytes,
        )
        # Metrics outermost (after the span, when traced): a refused call is counted with the
        # code it was refused with. Requests too large for their RPC or undecodable are refused
        # before authentication. Without tracing there is no tracing interceptor at all.
        tracers: list[grpc.aio.ServerInterceptor[Any, Any]] = (
            [] if tracing is None else [TracingInterceptor(tracing.tracer())]
        )
        self.interceptors: tuple[grpc.aio.ServerInterceptor[Any, Any], ...] = (
            *tracers,
            MetricsInterceptor(self.metrics),
            DecodingInterceptor(sizes),
            AuthInterceptor(security.authenticator, self.metrics),
        )
        self._server = grpc.aio.server(
            interceptors=self.interceptors,
            options=[
                ("grpc.max_receive_message_length", sizes.largest),
                ("grpc.max_send_message_length", max_message_bytes),
                # A leftover server on the same port must not steal this one's connections;
                # the processes of one supervisor share theirs (api/supervisor.py).
                ("grpc.so_reuseport", 1 if reuse_port else 0),
                *connection_options,
            ],
        )
        pb_grpc.add_AnalyticsServiceServicer_to_server(
            AnalyticsServicer(registry, self._pools, self.admission, send_timeout_s=send_timeout_s),
            self._server,
        )
        self._health = health.aio.HealthServicer()  # type: ignore[attr-defined]
        health_pb2_grpc.add_HealthServicer_to_server(self._health, self._server)
        reflection.enable_server_reflection(
            (SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), self._server
        )
        if security.tls is None:
            self.port = self._server.add_insecure_port(listen)
        else:
            self.port = self._server.add_secure_port(listen, security.tls.grpc_credentials())
        if self.port == 0:
            raise OSError(f"cannot listen on {listen}")
        self._listen_host = listen.rsplit(":", 1)[0]
        self._serving: bool | None = None
        self._stopping = asyncio.Event()
        self._http = self._side_port(registry, http_listen, reuse_port) if http_listen else None

    def _side_port(
        self, registry: OperationRegistry, http_listen: str, reuse_port: bool
    ) -> HttpServer:
        """The HTTP side port: the same TLS certificate and the same authenticator."""
        security = self._security
        access = Access(
            security.authenticator,
            self.metrics,
            metrics_auth=security.metrics_auth,
            tls=security.tls is not None,
        )
        replicas = self._replicas
        dashboard = Dashboard(
            registry,
            self._pools.unary,
            self.metrics,
            lambda: self.serving,
            access,
            self.admission,
            detail=None if replicas is None else replicas.readiness_lines,
        )
        # A client certificate is optional at the TLS layer here (verified when presented),
        # unlike on the gRPC port: a browser with only a token must reach the sign-in page.
        # The dashboard itself still refuses a request without a token or a certificate.
        tls = None if security.tls is None else security.tls.ssl_context(require_client_cert=False)
        tracing = self._tracing
        app = dashboard if tracing is None else traced_pages(dashboard, tracing.tracer())
        return HttpServer(app, http_listen, tls=tls, post_paths=POST_PATHS, reuse_port=reuse_port)

    @property
    def address(self) -> str:
        """host:port actually bound."""
        return f"{self._listen_host}:{self.port}"

    @property
    def http_url(self) -> str:
        """``http://host:port`` (``https://`` with TLS) of the side port; empty when it is off."""
        if self._http is None:
            return ""
        return f"{self._http.scheme}://{self._http.address}"

    @property
    def serving(self) -> bool:
        """Whether the health status is SERVING (the last database probe passed)."""
        return bool(self._serving)

    async def _set_serving(self, serving: bool, why: str = "") -> None:
        if serving == self._serving:
            return
        self._serving = serving
        self.metrics.serving.set(1 if serving else 0)
        status = SERVING if serving else NOT_SERVING
        for name in ("", SERVICE_NAME):
            await self._health.set(name, status)
        if serving:
            log.info("health: SERVING")
        else:
            log.warning("health: NOT_SERVING (%s)", why or "shutting down")

    async def _watch_database(self) -> None:
        loop = asyncio.get_running_loop()
        while not self._stopping.is_set():
            try:
                await loop.run_in_executor(self._probe_pool, self._probe)
            except CostsimError as exc:
                await self._set_serving(False, exc.message)
            except Exception as exc:
                await self._set_serving(False, f"{type(exc).__name__}: {exc}")
            else:
                await self._set_serving(True)
            self.metrics.publish()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), self._health_interval_s)

    async def _keep_partitions(self) -> None:
        """Run the upkeep now and then every hour until the server stops."""
        assert self._upkeep is not None
        loop = asyncio.get_running_loop()
        while not self._stopping.is_set():
            delay = UPKEEP_INTERVAL_S
            # Inserts never wait for it (the default partition takes any row): log, retry.
            try:
                await loop.run_in_executor(self._pools.long, self._upkeep)
            except CostsimError as exc:  # the database is down: the probe says so too
                log.warning("partition upkeep: %s; retrying in %ss", exc.message, UPKEEP_RETRY_S)
                delay = UPKEEP_RETRY_S
            except Exception:
                log.exception("partition upkeep failed; retrying in %ss", UPKEEP_RETRY_S)
                delay = UPKEEP_RETRY_S
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), delay)

    def _reload(self) -> None:
        log.info("SIGHUP: reloading the policy and the TLS certificates")
        try:
            self._security.reload()
        except Exception:  # a reload must never take the server down; the old files stay
            log.exception("reload failed; keeping the policy and certificates in force")

    def request_stop(self) -> None:
        """Begin a graceful shutdown (safe from a signal handler)."""
        self._stopping.set()

    async def run(self, on_ready: Callable[[str], None] | None = None) -> None:
        """Serve until :meth:`request_stop` or SIGTERM/SIGINT, then drain and stop."""
        tune_gc()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.request_stop)
        loop.add_signal_handler(signal.SIGHUP, self._reload)
        # Known to the health service from the first call on; SERVING once the probe passes.
        await self._set_serving(False, "starting")
        if self._http is not None:
            try:  # first: a taken port fails before any RPC is served
                await self._http.start()
            except OSError:
                self._shutdown_pools(wait=False)
                raise
            log.info("dashboard on %s", self.http_url)
        await self._server.start()
        if self._replicas is not None:
            self._replicas.start()
        watcher = asyncio.create_task(self._watch_database())
        upkeep = asyncio.create_task(self._keep_partitions()) if self._upkeep else None
        log.info("listening on %s", self.address)
        if on_ready is not None:
            on_ready(self.address)
        try:
            await self._stopping.wait()
        finally:
            log.info("shutting down: NOT_SERVING, draining for up to %ss", self._grace_period_s)
            await self._set_serving(False)
            await self._server.stop(self._grace_period_s)
            await self._settle()
            # After the drain, so /readyz answers 503 (not a refused connection) meanwhile.
            if self._http is not None:
                await self._http.stop(self._grace_period_s)
            await watcher
            if upkeep is not None:
                await upkeep
            self._shutdown_pools(wait=True)
            if self._on_stopped is not None:
                self._on_stopped()
            log.info("stopped")

    async def _settle(self, timeout_s: float = SETTLE_S) -> None:
        """Let the calls the drain cancelled end before their threads go away.

        ``grpc.aio.Server.stop`` returns once it has cancelled what outlived the grace, not once
        the handlers have seen it: a stream still has to close its cursor in a worker thread and
        give its slot back. Wait (bounded) until no admitted call is left.
        """
        deadline = asyncio.get_running_loop().time() + timeout_s
        while any(self.admission.in_flight(cls) for cls in CLASSES):
            if asyncio.get_running_loop().time() >= deadline:
                log.warning("shutting down with calls still in flight")
                return
            await asyncio.sleep(0.02)

    def _shutdown_pools(self, *, wait: bool) -> None:
        for pool in (self._pools.stream, self._pools.long, self._pools.unary, self._probe_pool):
            pool.shutdown(wait=wait, cancel_futures=True)
