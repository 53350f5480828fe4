"""The clients of bench/soak.py: each one a thread that records every call it makes.

Steady clients (writers, a stream reader, a drift-stats caller, a probe, the canary, the
bad-input sender) run from start to end; the slow reader and the flood run in their phases.
Every attempt of every call lands in the :class:`Recorder` with its client, RPC, phase (by its
start time), latency and status code.
"""

from __future__ import annotations

import asyncio
import json
import random
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import grpc
from google.protobuf import timestamp_pb2

from costsim.analytics.v1 import analytics_pb2 as pb
from costsim.analytics.v1 import analytics_pb2_grpc as pb_grpc
from costsim_analytics.engines.canary.synthetic import synthetic_samples
from costsim_analytics.testing.retry import (
    RECONNECT_OPTIONS,
    RETRYABLE,
    Backoff,
    call_with_retries,
    retry_delay_s,
)

R = TypeVar("R")
TENANT = "soak"
BAD_TENANT = "soak-bad"
SEED_TENANT = "soak-seed"


class Schedule:
    """Named phases, each a share of the run, from :meth:`begin` on."""

    def __init__(self, seconds: float, shares: tuple[tuple[str, float], ...]) -> None:
        total = sum(share for _, share in shares)
        self.seconds = seconds
        self.bounds: list[tuple[str, float, float]] = []
        at = 0.0
        for name, share in shares:
            length = seconds * share / total
            self.bounds.append((name, at, at + length))
            at += length
        self.start = time.monotonic()

    def begin(self) -> None:
        """Start the clock (phase offsets count from now)."""
        self.start = time.monotonic()

    def phase_at(self, t: float) -> str:
        """The phase a moment belongs to ("setup" before, "drain" after the run)."""
        offset = t - self.start
        if offset < 0:
            return "setup"
        for name, begin, end in self.bounds:
            if begin <= offset < end:
                return name
        return "drain"

    def wait_until(self, offset: float, stop: threading.Event | None = None) -> None:
        """Sleep until ``offset`` seconds after :meth:`begin`."""
        delay = self.start + offset - time.monotonic()
        if delay > 0:
            (stop or threading.Event()).wait(delay)


@dataclass(frozen=True, slots=True)
class Sample:
    """One attempt of one call."""

    client: str
    rpc: str
    phase: str
    ms: float
    code: str


class Recorder:
    """Thread-safe store of every :class:`Sample`."""

    def __init__(self, schedule: Schedule) -> None:
        self.schedule = schedule
        self.samples: list[Sample] = []
        self._lock = threading.Lock()

    def add(self, client: str, rpc: str, started: float, code: str) -> None:
        """Record an attempt that started at ``started`` (monotonic) and ended now."""
        self.add_at(client, rpc, started, time.monotonic(), code)

    def add_at(self, client: str, rpc: str, started: float, ended: float, code: str) -> None:
        """Record an attempt from ``started`` to ``ended`` (monotonic seconds).

        The times may come from another process: Linux's monotonic clock is the system's.
        """
        sample = Sample(
            client, rpc, self.schedule.phase_at(started), (ended - started) * 1000, code
        )
        with self._lock:
            self.samples.append(sample)

    def timed(self, client: str, rpc: str, fn: Callable[[], R]) -> R:
        """Run ``fn`` (one attempt) and record it; RpcErrors are recorded and re-raised."""
        started = time.monotonic()
        code = "OK"
        try:
            return fn()
        except grpc.RpcError as exc:
            code = exc.code().name if isinstance(exc, grpc.Call) else "UNKNOWN"
            raise
        finally:
            self.add(client, rpc, started, code)


# Each client on a connection of its own (channels with equal options share one otherwise):
# in the insecure mode the connection is the principal that admission control counts.
OPTIONS = [*RECONNECT_OPTIONS, ("grpc.use_local_subchannel_pool", 1)]


def channel(address: str) -> grpc.Channel:
    """A channel of its own that reconnects fast after a restart."""
    return grpc.insecure_channel(address, options=OPTIONS)


def _plans() -> list[dict[str, Any]]:
    shapes = [plan for _, plan in synthetic_samples()]
    return [plan for plan in shapes if len(json.dumps(plan)) < 800]


PLANS = _plans()


def record(run_id: str, tenant: str, rng: random.Random) -> pb.ProvenanceRecord:
    """A successful simulation record the canary can replay (payload as JSON text)."""
    v1 = round(rng.uniform(1, 200), 2)
    payload = {
        "input": rng.choice(PLANS),
        "output": {"cost_cents": v1, "feasible": True},
        "status": "success",
    }
    return pb.ProvenanceRecord(
        run_id=run_id,
        tenant_id=tenant,
        variant_slug="v2",
        source="sandbox",
        model_version="soak-1",
        v1_cost=v1,
        v2_cost=round(v1 * rng.uniform(0.9, 1.1), 2),
        payload_json=json.dumps(payload),
        runtime_ms=rng.randint(5, 500),
    )


def since(seconds: float) -> timestamp_pb2.Timestamp:
    """A timestamp ``seconds`` ago."""
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(datetime.now(UTC) - timedelta(seconds=seconds))
    return stamp


@dataclass
class Batch:
    """A writer's batch: its request and the ids it was answered with."""

    request: pb.WriteProvenanceBatchRequest
    ids: tuple[int, ...] = ()
    attempts: int = 0
    gave_up: bool = False


class Client(threading.Thread):
    """A steady client: :meth:`step` again and again until stopped, ``pause_s`` apart."""

    name_: str = "client"
    pause_s: float = 0.1

    def __init__(self, address: str, recorder: Recorder, stop: threading.Event) -> None:
        super().__init__(daemon=True, name=self.name_)
        self.channel = channel(address)
        self.stub = pb_grpc.AnalyticsServiceStub(self.channel)
        self.recorder = recorder
        self.stop_event = stop
        self.rng = random.Random(self.name_)

    def run(self) -> None:
        try:
            while not self.stop_event.is_set():
                self.step()
                self.stop_event.wait(self.pause_s)
        finally:
            self.channel.close()

    def step(self) -> None:
        raise NotImplementedError

    def call(self, rpc: str, fn: Callable[[], R]) -> R | None:
        """One recorded attempt; a failure is recorded and swallowed (reads need no retry)."""
        try:
            return self.recorder.timed(self.name_, rpc, fn)
        except grpc.RpcError:
            return None


class Writer(Client):
    """Batches with a request id each, retried with that id until acknowledged (60 s at most).

    A batch begun is finished even after the stop, so every batch is acknowledged or counted
    as given up.
    """

    pause_s = 0.1

    def __init__(self, n: int, size: int, *args: Any) -> None:
        self.name_ = f"writer-{n}"
        self.size = size
        self.batches: list[Batch] = []
        super().__init__(*args)

    def step(self) -> None:
        n = len(self.batches)
        request = pb.WriteProvenanceBatchRequest(request_id=f"soak-{self.name_}-{n}")
        for k in range(self.size):
            request.records.append(record(f"soak-{self.name_}-{n}-{k}", TENANT, self.rng))
        batch = Batch(request)
        self.batches.append(batch)

        def attempt() -> pb.WriteProvenanceBatchResponse:
            batch.attempts += 1
            return self.recorder.timed(
                self.name_,
                "WriteProvenanceBatch",
                lambda: self.stub.WriteProvenanceBatch(request, timeout=10),
            )

        try:
            response = call_with_retries(attempt, deadline_s=60)
        except grpc.RpcError:
            batch.gave_up = True
            return
        batch.ids = tuple(response.ids)


class StreamReader(Client):
    """QueryProvenance over the last minute, resumed by its last page token when cut."""

    name_ = "reader"
    pause_s = 0.2

    def step(self) -> None:
        request = pb.QueryProvenanceRequest(start_time=since(60), page_size=500)
        last: list[str] = []

        def read() -> None:
            for message in self.stub.QueryProvenance(request, timeout=30):
                last[:] = [message.page_token]

        for attempt in range(1, 6):
            try:
                self.recorder.timed(self.name_, "QueryProvenance", read)
                return
            except grpc.RpcError as exc:
                if exc.code() not in RETRYABLE:
                    return
                if last:  # resume right after the last message received
                    request.page_token = last[0]
                delay = retry_delay_s(exc)
                self.stop_event.wait(delay if delay is not None else Backoff().delay_s(attempt))


class DriftCaller(Client):
    """GetDriftStats over the last minute."""

    name_ = "drift"

    def step(self) -> None:
        request = pb.GetDriftStatsRequest(start_time=since(60))
        self.call("GetDriftStats", lambda: self.stub.GetDriftStats(request, timeout=10))


class Probe(Client):
    """The cheapest unary call (ListGoldenDatasets), to see queueing alone."""

    name_ = "probe"
    pause_s = 0.05

    def step(self) -> None:
        request = pb.ListGoldenDatasetsRequest()
        self.call("ListGoldenDatasets", lambda: self.stub.ListGoldenDatasets(request, timeout=10))


class Canary(Client):
    """RunCanary every ``pause_s`` with a request id, retried with it (60 s at most)."""

    name_ = "canary"

    def __init__(self, every_s: float, *args: Any) -> None:
        self.pause_s = every_s
        self.runs = 0
        self.statuses: dict[str, int] = {}
        super().__init__(*args)

    def step(self) -> None:
        self.runs += 1
        request = pb.RunCanaryRequest(
            sample_count=100, lookback_days=1, seed=self.runs, request_id=f"soak-canary-{self.runs}"
        )

        def attempt() -> pb.RunCanaryResponse:
            return self.recorder.timed(
                self.name_, "RunCanary", lambda: self.stub.RunCanary(request, timeout=60)
            )

        try:
            response = call_with_retries(attempt, deadline_s=60)
        except grpc.RpcError:
            return  # recorded; the next run is a new one
        status = pb.CanaryStatus.Name(response.report.status)
        self.statuses[status] = self.statuses.get(status, 0) + 1


def _bad_requests() -> list[tuple[str, pb.WriteProvenanceBatchRequest | Any]]:
    rng = random.Random(7)

    def batch(**overrides: Any) -> pb.WriteProvenanceBatchRequest:
        rec = record("soak-bad", BAD_TENANT, rng)
        for key, value in overrides.items():
            setattr(rec, key, value)
        return pb.WriteProvenanceBatchRequest(records=[rec])

    deep = '{"a":' * 100 + "1" + "}" * 100
    far = timestamp_pb2.Timestamp(seconds=253_402_300_800 + 86_400)  # the year 10000
    return [
        ("WriteProvenanceBatch", batch(run_id="bad\x00id")),
        ("WriteProvenanceBatch", batch(payload_json=deep)),
        ("WriteProvenanceBatch", batch(model_version="m" * 10_000)),
        ("WriteProvenanceBatch", batch(v1_cost=-1.0)),
        ("WriteProvenanceBatch", pb.WriteProvenanceBatchRequest()),
        ("QueryProvenance", pb.QueryProvenanceRequest(page_token="not-a-token")),
        ("GetDriftStats", pb.GetDriftStatsRequest(start_time=far)),
        ("RunCanary", pb.RunCanaryRequest(sample_count=-5)),
    ]


class BadInput(Client):
    """Requests that must be refused with INVALID_ARGUMENT and change nothing."""

    name_ = "bad_input"
    pause_s = 0.2

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.requests = _bad_requests()
        self.sent = 0

    def step(self) -> None:
        rpc, request = self.requests[self.sent % len(self.requests)]
        self.sent += 1
        method = getattr(self.stub, rpc)
        if rpc == "QueryProvenance":
            self.call(rpc, lambda: list(method(request, timeout=10)))
        else:
            self.call(rpc, lambda: method(request, timeout=10))


@dataclass
class SlowReader:
    """One client that opens ``streams`` QueryProvenance streams and reads one message each.

    ``refused``: the streams answered with an error instead of a first message (by code);
    ``cut``: the opened ones the server ended before the phase did (a slow-reader cut-off).
    """

    address: str
    recorder: Recorder
    streams: int
    opened: int = 0
    refused: dict[str, int] = field(default_factory=dict)
    cut: dict[str, int] = field(default_factory=dict)

    def hold(self, end_at: float) -> None:
        """Open the streams, hold them unread until the monotonic time ``end_at``, cancel them."""
        with channel(self.address) as ch:
            stub = pb_grpc.AnalyticsServiceStub(ch)
            request = pb.QueryProvenanceRequest(page_size=10_000)
            calls = [
                (time.monotonic(), stub.QueryProvenance(request, timeout=600))
                for _ in range(self.streams)
            ]
            # The first message of each in a thread: the phase's end must not wait for them.
            opened: list[tuple[float, Any]] = []
            opener = threading.Thread(target=self._open, args=(calls, opened), daemon=True)
            opener.start()
            time.sleep(max(0.0, end_at - time.monotonic()))
            for started, call in calls:
                if (started, call) in opened and call.done():  # the server ended it
                    self._count(self.cut, started, call.code())
                call.cancel()
            opener.join(10)

    def _open(self, calls: list[tuple[float, Any]], opened: list[tuple[float, Any]]) -> None:
        for started, call in calls:
            try:
                next(call)
            except grpc.RpcError as exc:
                if exc.code() != grpc.StatusCode.CANCELLED:  # not by hold() at the phase's end
                    self._count(self.refused, started, exc.code())
            else:
                self.opened += 1
                opened.append((started, call))

    def _count(self, into: dict[str, int], started: float, code: grpc.StatusCode) -> None:
        into[code.name] = into.get(code.name, 0) + 1
        self.recorder.add("slow_reader", "QueryProvenance", started, code.name)


@dataclass
class Flood:
    """One client firing ``streams`` streams and ``unary`` calls at once, wave after wave.

    It runs in a process of its own (:func:`flood`), so that its work on the client side does
    not slow the steady clients down through this process's GIL. ``calls`` holds (rpc, start,
    end, code) of each call it made; the phase's end cancels the wave in flight (those calls are
    not counted: the flood ended them, not the server).
    """

    address: str
    streams: int
    unary: int
    waves: int = 0
    cancelled: int = 0
    calls: list[tuple[str, float, float, str]] = field(default_factory=list)

    def run(self, end_at: float) -> None:
        """Fire waves until the monotonic time ``end_at``."""
        asyncio.run(self._run(end_at))

    async def _run(self, end_at: float) -> None:
        async with grpc.aio.insecure_channel(self.address, options=OPTIONS) as ch:
            stub = pb_grpc.AnalyticsServiceStub(ch)
            while (remaining := end_at - time.monotonic()) > 0:
                self.waves += 1
                calls = [self._stream(stub) for _ in range(self.streams)]
                calls += [self._unary(stub) for _ in range(self.unary)]
                tasks = [asyncio.ensure_future(c) for c in calls]
                _, pending = await asyncio.wait(tasks, timeout=remaining)
                for task in pending:
                    task.cancel()
                await asyncio.gather(*pending, return_exceptions=True)
                self.cancelled += len(pending)

    async def _timed(self, rpc: str, call: Callable[[], Any]) -> None:
        started = time.monotonic()
        code = "OK"
        try:
            await call()
        except grpc.RpcError as exc:
            code = exc.code().name if isinstance(exc, grpc.aio.AioRpcError) else "UNKNOWN"
        self.calls.append((rpc, started, time.monotonic(), code))

    async def _stream(self, stub: Any) -> None:
        async def read() -> None:
            request = pb.QueryProvenanceRequest(start_time=since(60), page_size=200)
            async for _ in stub.QueryProvenance(request, timeout=30):
                pass

        await self._timed("QueryProvenance", read)

    async def _unary(self, stub: Any) -> None:
        request = pb.GetDriftStatsRequest(start_time=since(60))
        await self._timed("GetDriftStats", lambda: stub.GetDriftStats(request, timeout=10))


def flood(address: str, streams: int, unary: int, end_at: float) -> Flood:
    """Run a :class:`Flood` until ``end_at`` (in a worker process); return it, calls and all."""
    f = Flood(address, streams, unary)
    f.run(end_at)
    return f


def ready() -> bool:
    """A no-op a worker process runs first, so that its imports are done before the phase."""
    return True


def chunks(items: list[Any], size: int) -> Iterator[list[Any]]:
    """``items`` in lists of ``size``."""
    for start in range(0, len(items), size):
        yield items[start : start + size]
