"""``serve --processes N``: one parent that supervises N server processes on one port.

A Python gRPC server does its work on one core. To use more, the parent runs N ordinary
``serve`` processes (``serve --worker-of PARENT_PID``) that all listen on the same gRPC port
(and the same HTTP side port) with ``SO_REUSEPORT``: the kernel spreads new connections over
them. The parent itself serves nothing. It

* reserves the ports first: a socket bound with ``SO_REUSEPORT`` and kept open (never
  listening, so the kernel gives it no connection), so that port 0 resolves to one real port
  that every child then binds, and the port stays this server's across restarts;
* prints the readiness lines ``serve`` prints once every child is listening;
* restarts a child that dies, after a backoff (:class:`RestartPolicy`); five fast exits in a
  row of one child are a crash loop, and the parent then stops the others and exits 1;
* forwards SIGTERM and SIGINT (each child drains as a single server does; the parent waits for
  them and exits 0) and SIGHUP (the children re-read the policy and the TLS files);
* gives the children a fresh ``PROMETHEUS_MULTIPROC_DIR``, so that ``/metrics`` on any of them
  sums the counters of all (``api/metrics.py``), marks a dead child's live gauges dead, and
  removes the directory when it exits.

A child asks the kernel for SIGTERM when its parent dies (``PR_SET_PDEATHSIG``), so children
never outlive a parent that was killed.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import FrameType

log = logging.getLogger(__name__)

READY_PREFIX = "costsim-analytics listening on "
DASHBOARD_PREFIX = "costsim-analytics dashboard on "
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
# prctl(2): the signal a process gets when the thread that started it dies.
PR_SET_PDEATHSIG = 1
POLL_S = 0.1
# Exit status of a child that refused to start (the CLI's "refusing to start" / "cannot start").
REFUSED = 2


@dataclass(frozen=True, slots=True)
class RestartPolicy:
    """When a dead child is started again.

    The first restart waits ``initial_delay_s``; each further one twice as long, up to
    ``max_delay_s``. A child that lived ``stable_after_s`` or more resets both the delay and
    the count of fast exits; ``max_fast_exits`` fast exits in a row are a crash loop.
    """

    initial_delay_s: float = 0.5
    max_delay_s: float = 10.0
    stable_after_s: float = 30.0
    max_fast_exits: int = 5


class Backoff:
    """The restart state of one child slot under a :class:`RestartPolicy`.

    Example:
        >>> backoff = Backoff(RestartPolicy())
        >>> [backoff.after_exit(lived_s=1.0) for _ in range(5)]
        [0.5, 1.0, 2.0, 4.0, None]
        >>> backoff = Backoff(RestartPolicy())
        >>> [backoff.after_exit(lived_s) for lived_s in (1.0, 1.0, 60.0, 1.0)]
        [0.5, 1.0, 0.5, 1.0]

    """

    def __init__(self, policy: RestartPolicy) -> None:
        self.policy = policy
        self.fast_exits = 0
        self._delay_s = policy.initial_delay_s

    def after_exit(self, lived_s: float) -> float | None:
        """The wait before the next start of a child that lived ``lived_s``; None: give up."""
        policy = self.policy
        if lived_s >= policy.stable_after_s:
            self.fast_exits = 0
            self._delay_s = policy.initial_delay_s
        else:
            self.fast_exits += 1
            if self.fast_exits >= policy.max_fast_exits:
                return None
        delay = self._delay_s
        self._delay_s = min(delay * 2, policy.max_delay_s)
        return delay


def die_with_parent(parent_pid: int) -> None:
    """Ask for SIGTERM (a graceful drain) when the parent dies; exit if it already has (Linux).

    Raises:
        SystemExit: the parent is not ``parent_pid`` any more (it died before the request).
        OSError: prctl refused.
    """
    if sys.platform == "linux":
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0) != 0:
            errno = ctypes.get_errno()
            raise OSError(errno, f"prctl(PR_SET_PDEATHSIG): {os.strerror(errno)}")
    if os.getppid() != parent_pid:
        raise SystemExit(f"the supervising process {parent_pid} is gone")


def reserve_port(listen: str) -> tuple[socket.socket, str]:
    """A socket bound to ``listen`` (host:port, port 0: a free one) with SO_REUSEPORT.

    Returns the socket (keep it open: it holds the port) and ``host:port`` with the real port.

    Raises:
        OSError: the address cannot be bound (taken by a server without SO_REUSEPORT, or not
            an address of this host).
    """
    host, _, port = listen.rpartition(":")
    bare = host.strip("[]")
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            bare or None, int(port), type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
        sock = socket.socket(family, kind, proto)
    except (OSError, ValueError) as exc:
        raise OSError(f"cannot listen on {listen}: {exc}") from exc
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(address)
    except OSError as exc:
        sock.close()
        raise OSError(f"cannot listen on {listen}: {exc.strerror or exc}") from exc
    return sock, f"{host}:{sock.getsockname()[1]}"


@dataclass
class _Child:
    """One slot: its process (None while it waits for a restart) and its restart state."""

    slot: int
    backoff: Backoff
    proc: subprocess.Popen[str] | None = None
    started: float = 0.0
    restart_at: float = 0.0
    ready: threading.Event = field(default_factory=threading.Event)
    ever_ready: bool = False


class Supervisor:
    """Runs ``processes`` children on the ports of ``listen`` and ``http_listen`` ("": off).

    ``env`` is the children's environment (the parent's, with the command line's settings as
    ``COSTSIM_*`` variables); the reserved addresses and the metrics directory are added to it.
    ``drain_timeout_s`` is how long a stopping child gets before it is killed. ``command`` is
    what a child runs (``--worker-of PID`` is added); by default this package's ``serve``.
    """

    def __init__(
        self,
        processes: int,
        *,
        listen: str,
        http_listen: str,
        env: Mapping[str, str],
        drain_timeout_s: float,
        policy: RestartPolicy | None = None,
        command: Sequence[str] | None = None,
    ) -> None:
        self.processes = processes
        self._listen = listen
        self._http_listen = http_listen
        self._env = dict(env)
        self._drain_timeout_s = drain_timeout_s
        self._policy = policy or RestartPolicy()
        self._command = list(command or (sys.executable, "-m", "costsim_analytics", "serve"))
        self._children: list[_Child] = []
        self._wake = threading.Event()
        self._stop_signal: int | None = None
        self._reload = False
        self._address = ""
        self._http_url = ""
        self._metrics_dir = ""

    # --- signals ----------------------------------------------------------------------------

    def _on_stop(self, signum: int, _frame: FrameType | None) -> None:
        self._stop_signal = signum
        self._wake.set()

    def _on_reload(self, _signum: int, _frame: FrameType | None) -> None:
        self._reload = True
        self._wake.set()

    def _on_child(self, _signum: int, _frame: FrameType | None) -> None:
        self._wake.set()

    # --- the loop ---------------------------------------------------------------------------

    def run(self) -> int:
        """Serve until SIGTERM or SIGINT (0), a crash loop (1) or a child refusing to start (2).

        Raises:
            OSError: a port cannot be reserved.
        """
        grpc_socket, self._address = reserve_port(self._listen)
        http_socket: socket.socket | None = None
        http_address = ""
        try:
            if self._http_listen:
                http_socket, http_address = reserve_port(self._http_listen)
        except OSError:
            grpc_socket.close()
            raise
        self._metrics_dir = tempfile.mkdtemp(prefix="costsim-metrics-")
        self._env.update(
            {
                "COSTSIM_LISTEN": self._address,
                "COSTSIM_HTTP_LISTEN": http_address or "off",
                "COSTSIM_PROCESSES": "1",
                MULTIPROC_ENV: self._metrics_dir,
            }
        )
        handlers = {
            signal.SIGTERM: self._on_stop,
            signal.SIGINT: self._on_stop,
            signal.SIGHUP: self._on_reload,
            signal.SIGCHLD: self._on_child,
        }
        previous = {sig: signal.signal(sig, handler) for sig, handler in handlers.items()}
        try:
            self._children = [_Child(slot, Backoff(self._policy)) for slot in range(self.processes)]
            for child in self._children:
                self._start(child)
            code = self._supervise()
            self._stop_all()
            return code
        finally:
            for child in self._children:  # an exception above: no child is left behind
                if child.proc is not None and child.proc.poll() is None:
                    child.proc.kill()
                    child.proc.wait()
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            grpc_socket.close()
            if http_socket is not None:
                http_socket.close()
            shutil.rmtree(self._metrics_dir, ignore_errors=True)

    def _supervise(self) -> int:
        announced = False
        while self._stop_signal is None:
            self._wake.wait(POLL_S)
            self._wake.clear()
            if self._reload:
                self._reload = False
                log.info("SIGHUP: forwarding to the %d server processes", self.processes)
                self._signal_all(signal.SIGHUP)
            now = time.monotonic()
            for child in self._children:
                if child.proc is not None and (code := child.proc.poll()) is not None:
                    fatal = self._exited(child, code, now)
                    if fatal is not None:
                        return fatal
                if child.proc is None and now >= child.restart_at and self._stop_signal is None:
                    self._start(child)
            if not announced and all(
                c.proc is not None and c.ready.is_set() for c in self._children
            ):
                announced = True
                self._announce()
        log.info("%s: stopping the server processes", signal.Signals(self._stop_signal).name)
        return 0

    def _exited(self, child: _Child, code: int, now: float) -> int | None:
        """Handle a child's exit: schedule its restart, or the status to exit with."""
        assert child.proc is not None
        pid, lived_s = child.proc.pid, now - child.started
        child.proc = None
        self._mark_dead(pid)
        how = f"signal {signal.Signals(-code).name}" if code < 0 else f"status {code}"
        if code == REFUSED and not child.ever_ready:
            log.error("server process %d refused to start (%s): stopping", pid, how)
            return REFUSED
        delay = child.backoff.after_exit(lived_s)
        if delay is None:
            log.error(
                "server process %d (slot %d) exited (%s) %d times in a row within %.0f s of"
                " starting: a crash loop, stopping",
                pid,
                child.slot,
                how,
                child.backoff.fast_exits,
                self._policy.stable_after_s,
            )
            return 1
        log.warning(
            "server process %d (slot %d) exited (%s) after %.1f s; restarting in %.1f s",
            pid,
            child.slot,
            how,
            lived_s,
            delay,
        )
        child.restart_at = now + delay
        return None

    def _start(self, child: _Child) -> None:
        child.ready = threading.Event()
        # From the main thread, which lives as long as the parent: PR_SET_PDEATHSIG fires when
        # the thread that started a child ends, not the process.
        proc = subprocess.Popen(
            [*self._command, "--worker-of", str(os.getpid())],
            stdout=subprocess.PIPE,
            env=self._env,
            text=True,
        )
        child.proc, child.started = proc, time.monotonic()
        threading.Thread(
            target=self._read, args=(child, proc), name=f"worker-{proc.pid}", daemon=True
        ).start()
        log.info("started server process %d (slot %d)", proc.pid, child.slot)

    def _read(self, child: _Child, proc: subprocess.Popen[str]) -> None:
        """Watch a child's standard output for its readiness; pass anything else on."""
        assert proc.stdout is not None
        ready = child.ready
        with proc.stdout:
            for line in proc.stdout:
                if line.startswith(READY_PREFIX):
                    child.ever_ready = True
                    ready.set()
                    self._wake.set()
                elif line.startswith(DASHBOARD_PREFIX):
                    self._http_url = line.removeprefix(DASHBOARD_PREFIX).strip()
                else:
                    sys.stdout.write(line)
                    sys.stdout.flush()

    def _announce(self) -> None:
        pids = ", ".join(str(c.proc.pid) for c in self._children if c.proc is not None)
        log.info("%d server processes listening on %s (%s)", self.processes, self._address, pids)
        if self._http_url:
            print(f"{DASHBOARD_PREFIX}{self._http_url}", flush=True)
        print(f"{READY_PREFIX}{self._address}", flush=True)

    def _signal_all(self, sig: int) -> None:
        for child in self._children:
            if child.proc is not None and child.proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    child.proc.send_signal(sig)

    def _stop_all(self) -> None:
        """SIGTERM every child, wait for their drains, kill what outlives the timeout."""
        self._signal_all(signal.SIGTERM)
        deadline = time.monotonic() + self._drain_timeout_s
        for child in self._children:
            if child.proc is None:
                continue
            try:
                child.proc.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.error("server process %d did not drain in time: killing it", child.proc.pid)
                child.proc.kill()
                child.proc.wait()
            self._mark_dead(child.proc.pid)
            child.proc = None
        log.info("stopped")

    def _mark_dead(self, pid: int) -> None:
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid, self._metrics_dir)  # type: ignore[no-untyped-call]


def worker_env(overrides: Mapping[str, object]) -> dict[str, str]:
    """This process's environment with the command line's settings as ``COSTSIM_*`` variables.

    Example:
        >>> env = worker_env({"max_batch": 50, "insecure": True, "listen": None})
        >>> env["COSTSIM_MAX_BATCH"], env["COSTSIM_INSECURE"]
        ('50', 'true')

    """
    env = dict(os.environ)
    for name, value in overrides.items():
        if value is None:
            continue
        text = str(value).lower() if isinstance(value, bool) else str(value)
        env[f"COSTSIM_{name.upper()}"] = text
    return env


def supervise(
    processes: int,
    *,
    listen: str,
    http_listen: str,
    overrides: Mapping[str, object],
    drain_timeout_s: float,
    policy: RestartPolicy | None = None,
) -> int:
    """Run :class:`Supervisor` with the children's environment from ``overrides``."""
    return Supervisor(
        processes,
        listen=listen,
        http_listen=http_listen,
        env=worker_env(overrides),
        drain_timeout_s=drain_timeout_s,
        policy=policy,
    ).run()
