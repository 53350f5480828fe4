"""PostgreSQL streaming read replicas: one engine each, their replay lag, and the choice.

A :class:`ReplicaRouter` probes every replica in the background (one thread each, every
``refresh_s``, each probe bounded by a short connect and statement timeout) and keeps what it
found. A read that may go to a replica asks :meth:`ReplicaRouter.connect` for a connection: it
gets one on a usable replica (``engines/replicas.py`` decides which), or on the primary when
none is usable or the chosen one refuses the connection (which marks it unusable until its
next probe answers). Nothing here fails a read because of a replica.

Replicas are named by ``host:port/database`` (never their credentials) in metrics, logs and
the readiness detail.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from itertools import count

from sqlalchemy import Connection, Engine, text
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import make_url

from costsim_analytics.drivers.database import EngineOptions, make_engine
from costsim_analytics.drivers.errors import is_unreachable
from costsim_analytics.engines.replicas import UNKNOWN, ReplicaState, pick, usable

log = logging.getLogger(__name__)

# Replay lag in seconds: 0 when everything received is replayed (an idle primary sends
# nothing, and the replica is then as fresh as it can be), else the age of the last
# transaction replayed. NULL (no timestamp yet) is an unknown lag.
LAG_SQL = text(
    "SELECT pg_is_in_recovery(), CASE WHEN pg_last_wal_receive_lsn() = pg_last_wal_replay_lsn()"
    " THEN 0 ELSE EXTRACT(EPOCH FROM now() - pg_last_xact_replay_timestamp()) END"
)
# libpq's smallest connect timeout (it reads 1 as 2).
REPLICA_CONNECT_TIMEOUT_S = 2
PROBE_STATEMENT_TIMEOUT_MS = 500

PRIMARY = "primary"
REPLICA = "replica"


def replica_name(url: str) -> str:
    """``host:port/database`` of a replica URL, without user or password.

    Example:
        >>> replica_name("postgresql+psycopg://reader:secret@db-r1:5433/costsim")
        'db-r1:5433/costsim'

    """
    parsed = make_url(url)
    return f"{parsed.host or 'localhost'}:{parsed.port or 5432}/{parsed.database or ''}"


@dataclass(frozen=True)
class Replica:
    """One replica: its name, its read pool and its probe's pool."""

    name: str
    engine: Engine
    probe: Engine


@dataclass(frozen=True, slots=True)
class ReplicaStatus:
    """A replica's last probe, for metrics and the readiness detail."""

    name: str
    state: ReplicaState
    usable: bool


class ReplicaRouter:
    """The read replicas of one server and where each read goes.

    ``on_read`` is told the target (``"primary"`` or ``"replica"``) of every connection
    :meth:`connect` hands out. :meth:`start` begins the probes; :meth:`stop` ends them and
    closes the pools.
    """

    def __init__(
        self,
        urls: Sequence[str],
        options: EngineOptions,
        max_lag_s: float,
        *,
        refresh_s: float = 1.0,
        on_read: Callable[[str], None] | None = None,
    ) -> None:
        read_options = replace(
            options, connect_timeout_s=min(options.connect_timeout_s, REPLICA_CONNECT_TIMEOUT_S)
        )
        probe_options = EngineOptions(
            pool_size=1,
            max_overflow=0,
            pool_timeout_s=1.0,
            connect_timeout_s=REPLICA_CONNECT_TIMEOUT_S,
            statement_timeout_ms=PROBE_STATEMENT_TIMEOUT_MS,
            pre_ping=True,  # the probe connects outside a unit of work
        )
        self.replicas: list[Replica] = []
        for index, url in enumerate(urls):
            name = replica_name(url)
            if any(r.name == name for r in self.replicas):
                name = f"{name}#{index + 1}"
            self.replicas.append(
                Replica(name, make_engine(url, read_options), make_engine(url, probe_options))
            )
        self.max_lag_s = max_lag_s
        self._refresh_s = refresh_s
        self._on_read = on_read or (lambda _target: None)
        self._states: dict[str, ReplicaState] = {r.name: UNKNOWN for r in self.replicas}
        self._turns = count()
        self._stopping = threading.Event()
        self._threads: list[threading.Thread] = []

    # --- probes ---------------------------------------------------------------------------

    def probe(self, replica: Replica) -> ReplicaState:
        """Measure one replica now (and remember it); unreachable on any failure."""
        try:
            with replica.probe.connect() as conn:
                in_recovery, lag = conn.execute(LAG_SQL).one()
                conn.rollback()
            state = ReplicaState(True, bool(in_recovery), None if lag is None else float(lag))
        except Exception as exc:
            if not is_unreachable(exc):
                log.warning("replica %s: probe failed", replica.name, exc_info=True)
            state = ReplicaState(reachable=False, in_recovery=False, lag_s=None)
        self._set(replica, state)
        return state

    def refresh(self) -> None:
        """Probe every replica once, one after the other."""
        for replica in self.replicas:
            self.probe(replica)

    def start(self) -> None:
        """Probe each replica every ``refresh_s`` in a thread of its own, from now on."""
        if self._threads:
            return
        for replica in self.replicas:
            thread = threading.Thread(
                target=self._probe_loop, args=(replica,), name="replica-probe", daemon=True
            )
            thread.start()
            self._threads.append(thread)

    def _probe_loop(self, replica: Replica) -> None:
        while not self._stopping.is_set():
            self.probe(replica)
            self._stopping.wait(self._refresh_s)

    def stop(self) -> None:
        """End the probes and close every replica pool."""
        self._stopping.set()
        for thread in self._threads:
            thread.join(timeout=5)
        for replica in self.replicas:
            replica.engine.dispose()
            replica.probe.dispose()

    def _set(self, replica: Replica, state: ReplicaState) -> None:
        before = self._states.get(replica.name, UNKNOWN)
        self._states[replica.name] = state
        was, now = usable(before, self.max_lag_s), usable(state, self.max_lag_s)
        if was != now or before is UNKNOWN:  # a change, or the first probe's finding
            if now:
                log.info("replica %s: usable (lag %.3fs)", replica.name, state.lag_s)
            else:
                log.warning("replica %s: not usable (%s)", replica.name, self._why(state))

    def _why(self, state: ReplicaState) -> str:
        if not state.reachable:
            return "unreachable"
        if not state.in_recovery:
            return "not a standby"
        if state.lag_s is None:
            return "replay lag unknown"
        return f"replay lag {state.lag_s:.3f}s > {self.max_lag_s}s"

    # --- routing --------------------------------------------------------------------------

    def statuses(self) -> list[ReplicaStatus]:
        """Every replica's last probe, in configuration order."""
        return [
            ReplicaStatus(r.name, state, usable(state, self.max_lag_s))
            for r in self.replicas
            for state in (self._states[r.name],)
        ]

    def choose(self) -> Replica | None:
        """A usable replica (round robin among them), or None: read from the primary."""
        states = [self._states[r.name] for r in self.replicas]
        index = pick(states, self.max_lag_s, turn=next(self._turns))
        return None if index is None else self.replicas[index]

    def connect(self, primary: Engine, *, replica: bool = True) -> tuple[Connection, bool]:
        """A connection for a read, and whether it is on a replica (never when not ``replica``).

        A replica that refuses the connection is unusable until its next probe answers; the
        read then goes to the primary (whose own failures propagate, as for any read).
        """
        chosen = self.choose() if replica else None
        if chosen is not None:
            try:
                conn = chosen.engine.connect()
            except Exception as exc:
                if not is_unreachable(exc):
                    raise
                why = str(getattr(exc, "orig", exc)).strip().splitlines()[:1]
                log.warning("replica %s: %s; reading from the primary", chosen.name, *why or [""])
                if not isinstance(exc, sa_exc.TimeoutError):  # a busy pool is no dead replica
                    self._set(chosen, replace(self._states[chosen.name], reachable=False))
            else:
                self._on_read(REPLICA)
                return conn, True
        conn = primary.connect()
        self._on_read(PRIMARY)
        return conn, False

    def readiness_lines(self) -> list[str]:
        """One line per replica for ``/readyz`` (replicas never make the server unready)."""
        lines = []
        for status in self.statuses():
            lag = status.state.lag_s
            lag_text = "unknown" if lag is None else f"{lag:.3f}s"
            verdict = "usable" if status.usable else f"skipped: {self._why(status.state)}"
            lines.append(f"replica {status.name}: lag {lag_text}, {verdict}")
        return lines
