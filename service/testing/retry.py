"""How a caller survives a fault: which codes it retries, after how long, on which channel.

The rule the fault tests and ``bench/soak.py`` follow, and the one a client of the service
should follow for its idempotent calls (reads, and writes that carry a ``request_id``): retry
``UNAVAILABLE``, ``DEADLINE_EXCEEDED`` and ``RESOURCE_EXHAUSTED`` with the *same* request,
after the ``google.rpc.RetryInfo`` delay when the status carries one, else after a bounded,
jittered exponential backoff.

Example:
    >>> response = call_with_retries(  # doctest: +SKIP
    ...     lambda: stub.WriteProvenanceBatch(request, timeout=5), deadline_s=30
    ... )

"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status

R = TypeVar("R")

RETRYABLE = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
    }
)

# A channel whose server went away tries to reconnect after 0.1 s, then at most every second
# (gRPC's defaults start at 1 s and grow to 120 s: a restarted server would wait for them).
RECONNECT_OPTIONS: tuple[tuple[str, int], ...] = (
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1000),
)


def retry_delay_s(error: grpc.RpcError) -> float | None:
    """The delay the server's ``RetryInfo`` asks for, in seconds; None without one."""
    if not isinstance(error, grpc.Call):
        return None
    try:
        status = rpc_status.from_call(error)
    except ValueError:  # a status whose details do not match its code: not ours
        return None
    if status is None:
        return None
    for detail in status.details:
        if detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
            info = error_details_pb2.RetryInfo()
            detail.Unpack(info)
            return float(info.retry_delay.ToTimedelta().total_seconds())
    return None


@dataclass(frozen=True, slots=True)
class Backoff:
    """Exponential backoff with full jitter, bounded by ``max_s``."""

    initial_s: float = 0.05
    max_s: float = 1.0
    multiplier: float = 2.0

    def delay_s(self, attempt: int, rng: random.Random | None = None) -> float:
        """The wait before retry number ``attempt`` (1, 2, ...)."""
        ceiling = min(self.max_s, self.initial_s * self.multiplier ** (attempt - 1))
        return (rng or random).uniform(ceiling / 2, ceiling)


def call_with_retries(
    call: Callable[[], R],
    *,
    deadline_s: float = 30.0,
    backoff: Backoff | None = None,
    on_error: Callable[[grpc.RpcError], None] | None = None,
) -> R:
    """Run ``call`` until it succeeds, fails with a code not in :data:`RETRYABLE`, or time is up.

    ``on_error`` sees every failed attempt (to count codes); the last error is re-raised when
    the call fails for good. ``call`` must be safe to repeat: a read, or a write with its
    ``request_id``.
    """
    backoff = backoff or Backoff()
    give_up = time.monotonic() + deadline_s
    attempt = 0
    while True:
        attempt += 1
        try:
            return call()
        except grpc.RpcError as exc:
            if on_error is not None:
                on_error(exc)
            code = exc.code() if isinstance(exc, grpc.Call) else None
            if code not in RETRYABLE:
                raise
            asked = retry_delay_s(exc)
            delay = asked if asked is not None else backoff.delay_s(attempt)
            if time.monotonic() + delay > give_up:
                raise
            time.sleep(delay)
