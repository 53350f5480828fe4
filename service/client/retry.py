"""When the client tries a call again, and after how long.

gRPC's own retry policy (the channel's service config, :data:`SERVICE_CONFIG`) retries
``UNAVAILABLE`` a few times within each attempt's deadline and honours the server's
``grpc-retry-pushback-ms``. On top of it, in code, the client retries what gRPC cannot judge:
``RESOURCE_EXHAUSTED`` only when the server said when to retry (``google.rpc.RetryInfo``: never
a message over the size limit), ``UNAVAILABLE`` once gRPC's attempts are spent, and broken
streams, which resume from their last page token instead of starting again. Each wait is the
server's ``RetryInfo`` delay when it gave one, else jittered exponential backoff; and every
retry spends from a :class:`RetryBudget`, so that a client facing a failing server slows down
instead of multiplying its load.

Example:
    >>> policy = RetryPolicy(initial_backoff_s=0.1, max_backoff_s=2.0, jitter=0.0)
    >>> [policy.backoff_s(n) for n in (1, 2, 3, 6)]
    [0.1, 0.2, 0.4, 2.0]

"""

from __future__ import annotations

import json
import random
import threading
import time
from dataclasses import dataclass, field

import grpc

from costsim_analytics.client.errors import RpcError, from_grpc

SERVICE = "costsim.analytics.v1.AnalyticsService"

# gRPC's retry policy for every method (all are safe to repeat: the client gives every write a
# request id), the pushback trailer honoured. RESOURCE_EXHAUSTED is left to the code, which
# can tell admission control (retry after RetryInfo) from a message too large (never).
#
# Calls are spread over every address the target resolves to (round_robin; gRPC's default,
# pick_first, sends them all to the first): with a Kubernetes headless Service
# (deploy/kubernetes/service.yaml) a dns:/// target resolves to every ready pod.
SERVICE_CONFIG: dict[str, object] = {
    "loadBalancingConfig": [{"round_robin": {}}],
    "methodConfig": [
        {
            "name": [{"service": SERVICE}],
            "retryPolicy": {
                "maxAttempts": 4,
                "initialBackoff": "0.1s",
                "maxBackoff": "2s",
                "backoffMultiplier": 2,
                "retryableStatusCodes": ["UNAVAILABLE"],
            },
        }
    ],
    "retryThrottling": {"maxTokens": 10, "tokenRatio": 0.1},
}
SERVICE_CONFIG_JSON = json.dumps(SERVICE_CONFIG)


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How the client waits between attempts of one call (in code, beyond gRPC's own).

    Attributes:
        initial_backoff_s: the first wait without a server-given delay.
        max_backoff_s: the longest wait, also the cap on a server-given delay.
        multiplier: growth of the wait per attempt.
        jitter: share of each wait drawn at random (0: none; 0.5: between half and all of it).
        max_attempts: attempts of one call in all (the first included); the writer ignores it
            and keeps trying its batches until it is closed.
        budget: shared by every call of the client (see :class:`RetryBudget`).
    """

    initial_backoff_s: float = 0.1
    max_backoff_s: float = 5.0
    multiplier: float = 2.0
    jitter: float = 0.5
    max_attempts: int = 6
    budget: RetryBudget = field(default_factory=lambda: RetryBudget())

    def backoff_s(self, attempt: int, rng: random.Random | None = None) -> float:
        """The wait after failed attempt number ``attempt`` (1, 2, ...), without server advice."""
        ceiling = min(self.max_backoff_s, self.initial_backoff_s * self.multiplier ** (attempt - 1))
        if self.jitter <= 0:
            return ceiling
        return (rng or random).uniform(ceiling * (1 - self.jitter), ceiling)

    def delay_s(self, error: RpcError, attempt: int, rng: random.Random | None = None) -> float:
        """The wait before the next attempt: the server's delay (capped), else the backoff."""
        if error.retry_delay_s is not None:
            return min(max(error.retry_delay_s, 0.0), self.max_backoff_s)
        return self.backoff_s(attempt, rng)


class RetryBudget:
    """A token bucket that bounds retries to a share of successful calls (gRFC A6 throttling).

    Each failure that would be retried takes one token, each success gives back ``ratio``;
    retries are allowed while more than half of ``max_tokens`` remain. A healthy client never
    notices it; against a server that fails every call it lets through about one retry per
    ``1 / ratio`` successes, plus the first few. Thread-safe.

    Example:
        >>> budget = RetryBudget(max_tokens=4, ratio=0.5)
        >>> [budget.allow_retry() for _ in range(4)]
        [True, True, False, False]
        >>> for _ in range(4):
        ...     budget.succeeded()
        >>> budget.allow_retry()
        True

    """

    def __init__(self, max_tokens: float = 10.0, ratio: float = 0.1) -> None:
        self.max_tokens = max_tokens
        self.ratio = ratio
        self._tokens = max_tokens
        self._lock = threading.Lock()

    @property
    def tokens(self) -> float:
        """Tokens left."""
        return self._tokens

    def allow_retry(self) -> bool:
        """Take a token for a failed call; whether a retry is allowed now."""
        with self._lock:
            self._tokens = max(0.0, self._tokens - 1)
            return self._tokens > self.max_tokens / 2

    def succeeded(self) -> None:
        """Give a token's share back for a call that succeeded."""
        with self._lock:
            self._tokens = min(self.max_tokens, self._tokens + self.ratio)


def should_retry(error: RpcError, attempt: int, policy: RetryPolicy) -> bool:
    """Whether a failed call is tried again: retryable, attempts left, and within budget."""
    if not error.retryable or attempt >= policy.max_attempts:
        return False
    return policy.budget.allow_retry()


def pause_before_retry(
    exc: grpc.RpcError, attempt: int, policy: RetryPolicy, deadline: float
) -> float:
    """How long to wait before trying a failed call again, or raise its error when not to.

    Raises:
        RpcError: the call's error, when it is not retried (not retryable, no attempt or
            budget left) or when the wait would end past ``deadline`` (``time.monotonic()``).
    """
    error = from_grpc(exc)
    delay = policy.delay_s(error, attempt)
    if time.monotonic() + delay >= deadline or not should_retry(error, attempt, policy):
        raise error from None
    return delay
