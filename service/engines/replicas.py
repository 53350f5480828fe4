"""Which read replica may answer a read: the staleness rule, with no I/O.

A replica is usable when its last probe reached it, it is a standby (``pg_is_in_recovery()``;
a promoted or misconfigured one is a primary of its own whose data may have diverged), and its
replay lag is known and at most the configured maximum. Lag is what the replica reports:
0 when it has replayed everything it received, else the age of the last transaction it
replayed (``pg_last_xact_replay_timestamp()``). A replica that has received nothing since
it started reports no timestamp: its lag is unknown, and it is not used.

Example:
    >>> usable(ReplicaState(reachable=True, in_recovery=True, lag_s=0.4), max_lag_s=5.0)
    True
    >>> usable(ReplicaState(reachable=True, in_recovery=True, lag_s=7.0), max_lag_s=5.0)
    False
    >>> pick([ReplicaState(True, True, 9.0), ReplicaState(True, True, 1.0)], 5.0, turn=0)
    1

"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class ReplicaState:
    """What the last probe of one replica found.

    Attributes:
        reachable: the probe connected and got an answer.
        in_recovery: the server is a standby replaying the primary's WAL.
        lag_s: replay lag in seconds; None when unknown (unreachable, or nothing replayed yet).
    """

    reachable: bool
    in_recovery: bool
    lag_s: float | None


# Before the first probe nothing is known: not usable, so reads start on the primary.
UNKNOWN = ReplicaState(reachable=False, in_recovery=False, lag_s=None)


def usable(state: ReplicaState, max_lag_s: float) -> bool:
    """Whether a replica in ``state`` may answer reads that tolerate ``max_lag_s`` of staleness."""
    lag = state.lag_s
    return (
        state.reachable
        and state.in_recovery
        and lag is not None
        and math.isfinite(lag)
        # A negative lag is the two servers' clocks disagreeing about a fresh transaction.
        and lag <= max_lag_s
    )


def pick(states: Sequence[ReplicaState], max_lag_s: float, *, turn: int) -> int | None:
    """The index of the replica to read from, or None (read from the primary).

    The usable replicas take turns (round robin by ``turn``, a counter the caller advances),
    so reads spread over every replica within the staleness bound.
    """
    candidates = [i for i, state in enumerate(states) if usable(state, max_lag_s)]
    if not candidates:
        return None
    return candidates[turn % len(candidates)]
