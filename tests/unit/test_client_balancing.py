"""The client's service config spreads calls over every address of its target (round_robin)."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import pytest

from costsim_analytics.client import Credentials

METHOD = "/costsim.analytics.v1.AnalyticsService/GetCanaryReport"
DEPLOY_CONFIG = Path(__file__).resolve().parents[2] / "deploy" / "grpc-service-config.json"


def identity(body: bytes) -> bytes:
    return body


@pytest.fixture
def servers() -> Iterator[tuple[list[int], Counter[int]]]:
    """Two servers on loopback that answer METHOD and count the calls each one got."""
    calls: Counter[int] = Counter()
    started = []
    ports = []
    for index in range(2):
        server = grpc.server(ThreadPoolExecutor(max_workers=2))

        def answer(_request: bytes, _context: object, index: int = index) -> bytes:
            calls[index] += 1
            return b""

        handler = grpc.method_handlers_generic_handler(
            "costsim.analytics.v1.AnalyticsService",
            {
                "GetCanaryReport": grpc.unary_unary_rpc_method_handler(
                    answer, request_deserializer=identity, response_serializer=identity
                )
            },
        )
        server.add_generic_rpc_handlers((handler,))
        ports.append(server.add_insecure_port("127.0.0.1:0"))
        server.start()
        started.append(server)
    yield ports, calls
    for server in started:
        server.stop(None)


def spread(calls: Counter[int]) -> None:
    """Both servers got a fair share (the first calls may go out before both are connected)."""
    assert sum(calls.values()) == 20
    assert len(calls) == 2 and min(calls.values()) >= 5, calls


def call_many(channel: grpc.Channel, times: int) -> None:
    call = channel.unary_unary(METHOD, request_serializer=identity, response_deserializer=identity)
    for _ in range(times):
        call(b"", timeout=10, wait_for_ready=True)


def test_the_client_spreads_calls_over_every_address(
    servers: tuple[list[int], Counter[int]],
) -> None:
    ports, calls = servers
    target = "ipv4:" + ",".join(f"127.0.0.1:{port}" for port in ports)
    with Credentials().channel(target, [("grpc.use_local_subchannel_pool", 1)]) as channel:
        call_many(channel, 20)
    spread(calls)


def test_the_deploy_service_config_spreads_them_too(
    servers: tuple[list[int], Counter[int]],
) -> None:
    ports, calls = servers
    target = "ipv4:" + ",".join(f"127.0.0.1:{port}" for port in ports)
    options = [
        ("grpc.service_config", DEPLOY_CONFIG.read_text()),
        ("grpc.use_local_subchannel_pool", 1),
    ]
    assert json.loads(DEPLOY_CONFIG.read_text())["loadBalancingConfig"] == [{"round_robin": {}}]
    with grpc.insecure_channel(target, options) as channel:
        call_many(channel, 20)
    spread(calls)


def test_without_it_grpc_sends_every_call_to_one_address(
    servers: tuple[list[int], Counter[int]],
) -> None:
    """The baseline the two tests above differ from: gRPC's default policy, pick_first."""
    ports, calls = servers
    target = "ipv4:" + ",".join(f"127.0.0.1:{port}" for port in ports)
    with grpc.insecure_channel(target, [("grpc.use_local_subchannel_pool", 1)]) as channel:
        call_many(channel, 20)
    assert sorted(calls.values()) == [20]
