"""A real PostgreSQL streaming replica of the test server, for the read-replica tests.

``pg_basebackup -R`` copies the test server (the whole cluster: databases created later
replicate too, since replication is physical) into a temporary directory, and the server
binaries of the same major version run it as a hot standby on a free loopback port. The
binaries are found with ``pg_config --bindir`` or under the usual Debian location. Run as
root, the copy and the process belong to the ``postgres`` OS user (PostgreSQL refuses to run
as root). The primary must accept replication connections from loopback (``.ci/run`` adds
them to its pg_hba.conf).
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import psycopg
from sqlalchemy.engine import URL, make_url

STANDBY_CONF = """\
listen_addresses = '127.0.0.1'
port = {port}
unix_socket_directories = '{sockets}'
hot_standby = on
hot_standby_feedback = on
max_standby_streaming_delay = 30s
wal_receiver_status_interval = 1s
logging_collector = off
# A throwaway copy: nothing to lose in a crash, and replay keeps up with a busy primary.
fsync = off
full_page_writes = off
"""
# pg_basebackup runs: a copy whose connection the server ended is made again.
BACKUP_ATTEMPTS = 3

HBA_CONF = """\
local all all trust
host all all 127.0.0.1/32 trust
host all all ::1/128 trust
"""
# Settings a standby may not have lower than its primary (it refuses to start otherwise).
_COPIED = (
    "max_connections",
    "max_worker_processes",
    "max_wal_senders",
    "max_prepared_transactions",
    "max_locks_per_transaction",
)


def _one(conn: psycopg.Connection[tuple[object, ...]], query: str) -> str:
    """The one value ``query`` returns, as text."""
    row = conn.execute(query.encode()).fetchone()
    assert row is not None
    return str(row[0])


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def server_bindir(major: int) -> Path:
    """The directory of ``pg_ctl`` and ``postgres`` for PostgreSQL ``major``."""
    candidates: list[str] = []
    pg_config = shutil.which("pg_config")
    if pg_config is not None:
        out = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True, check=False)
        candidates.append(out.stdout.strip())
    candidates += sorted(glob.glob(f"/usr/lib/postgresql/{major}/bin"))
    candidates += sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True)
    for directory in candidates:
        path = Path(directory)
        if (path / "pg_ctl").is_file() and (path / "postgres").is_file():
            version = subprocess.run(
                [str(path / "postgres"), "--version"], capture_output=True, text=True, check=False
            ).stdout
            if f" {major}." in version:
                return path
    raise RuntimeError(f"no PostgreSQL {major} server binaries (pg_ctl, postgres) found")


class StreamingReplica:
    """A hot standby of the server at ``primary_url``; :meth:`create` makes and starts it."""

    def __init__(self, primary_url: str) -> None:
        self.primary = make_url(primary_url)
        self.port = free_port()
        self._set_root(Path(tempfile.mkdtemp(prefix="costsim-replica-")))
        self._owner = "postgres" if os.geteuid() == 0 else ""
        self.bindir: Path | None = None

    # --- the primary ------------------------------------------------------------------------

    def _primary(self) -> psycopg.Connection[tuple[object, ...]]:
        u = self.primary
        return psycopg.connect(
            host=u.host,
            port=u.port or 5432,
            user=u.username,
            dbname=u.database,
            autocommit=True,
            connect_timeout=5,
        )

    # --- processes -------------------------------------------------------------------------

    def _run(self, *argv: str, timeout: float = 60) -> str:
        command = list(argv)
        if self._owner:
            command = ["runuser", "-u", self._owner, "--", *command]
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False)
        if done.returncode != 0:
            raise RuntimeError(
                f"{' '.join(argv[:2])} failed ({done.returncode}): {done.stderr.strip()}"
                f"\n{self.server_log()}"
            )
        return done.stdout

    def server_log(self) -> str:
        try:
            return self.log.read_text()[-4000:]
        except OSError:
            return ""

    def create(self) -> StreamingReplica:
        """Copy the primary, configure the copy as a standby, start it, wait for it."""
        with self._primary() as conn:
            major = int(_one(conn, "SHOW server_version_num")) // 10000
            copied = {name: _one(conn, f"SHOW {name}") for name in _COPIED}
        self.bindir = server_bindir(major)
        if self._owner:
            self._give_root_to_owner()
        self.root.chmod(0o700)
        u = self.primary
        backup = (
            str(self.bindir / "pg_basebackup"),
            "-R",
            "-c",
            "fast",
            "-X",
            "stream",
            "-D",
            str(self.data),
            "-h",
            str(u.host),
            "-p",
            str(u.port or 5432),
            "-U",
            str(u.username),
        )
        # A copy cut short (its connection ended by the server, which other work on a shared
        # server can do) leaves nothing behind (pg_basebackup removes the directory): try again.
        for attempt in range(1, BACKUP_ATTEMPTS + 1):
            try:
                self._run(*backup)
                break
            except RuntimeError:
                if attempt == BACKUP_ATTEMPTS or self.data.exists():
                    raise
                time.sleep(0.5 * attempt)
        conf = STANDBY_CONF.format(port=self.port, sockets=self.root)
        conf += "".join(f"{name} = {value}\n" for name, value in copied.items())
        for name, text in (
            ("postgresql.conf", conf),
            ("pg_hba.conf", HBA_CONF),
            ("pg_ident.conf", ""),
        ):
            path = self.data / name
            path.write_text(text)
            if self._owner:
                owner = pwd.getpwnam(self._owner)
                os.chown(path, owner.pw_uid, owner.pw_gid)
        self.start()
        return self

    def _give_root_to_owner(self) -> None:
        """Hand the directory to the server's OS user; in its home when TMPDIR is closed to it."""
        owner = pwd.getpwnam(self._owner)
        os.chown(self.root, owner.pw_uid, owner.pw_gid)
        try:
            self._run("test", "-w", str(self.root))
        except RuntimeError:
            shutil.rmtree(self.root, ignore_errors=True)
            self._set_root(Path(tempfile.mkdtemp(prefix="costsim-replica-", dir=owner.pw_dir)))
            os.chown(self.root, owner.pw_uid, owner.pw_gid)
            self._run("test", "-w", str(self.root))

    def _set_root(self, root: Path) -> None:
        self.root = root
        self.data = root / "data"
        self.log = root / "server.log"

    def start(self) -> None:
        """Start the standby (again) and wait until it accepts connections."""
        assert self.bindir is not None
        self._run(
            str(self.bindir / "pg_ctl"),
            "-D",
            str(self.data),
            "-l",
            str(self.log),
            "-w",
            "-t",
            "30",
            "start",
        )
        self.wait_ready()

    def stop(self, mode: str = "fast") -> None:
        """Stop the standby (``immediate``: as if it crashed).

        A restartpoint first, so that starting it again replays only what came after: on a
        server busy with other work, replaying from the last scheduled one takes long.
        """
        assert self.bindir is not None
        with self.connect() as conn:
            conn.execute("CHECKPOINT")
        self._run(str(self.bindir / "pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "stop")

    def destroy(self) -> None:
        """Stop it if it runs, and remove its directory."""
        if self.bindir is not None and (self.data / "postmaster.pid").exists():
            with contextlib.suppress(RuntimeError, subprocess.TimeoutExpired):
                self._run(
                    str(self.bindir / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "stop"
                )
        shutil.rmtree(self.root, ignore_errors=True)

    # --- connections -----------------------------------------------------------------------

    def url(self, database: str) -> str:
        """The SQLAlchemy URL of ``database`` on the standby."""
        url: URL = self.primary.set(host="127.0.0.1", port=self.port, database=database)
        return url.render_as_string(hide_password=False)

    def connect(self, database: str = "postgres") -> psycopg.Connection[tuple[object, ...]]:
        return psycopg.connect(
            host="127.0.0.1",
            port=self.port,
            user=self.primary.username,
            dbname=database,
            autocommit=True,
            connect_timeout=3,
        )

    def wait_ready(self, database: str = "postgres", timeout_s: float = 120.0) -> None:
        """Wait until ``database`` on the standby takes connections (it may not exist yet)."""
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                with self.connect(database) as conn:
                    conn.execute("SELECT 1")
                    return
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    raise RuntimeError(
                        f"the standby did not accept connections\n{self.server_log()}"
                    ) from None
                time.sleep(0.1)

    def wait_caught_up(self, timeout_s: float = 120.0) -> None:
        """Commit a transaction on the primary and wait until the standby has replayed it.

        The fresh commit is the standby's last replayed transaction afterwards, so the lag
        it reports from then on is measured from now, whatever else the server is doing.
        """
        with self._primary() as conn:
            conn.execute("SELECT txid_current()")
            target = _one(conn, "SELECT pg_current_wal_lsn()")
        deadline = time.monotonic() + timeout_s
        with self.connect() as conn:
            while True:
                row = conn.execute(
                    "SELECT pg_last_wal_replay_lsn() >= %s::pg_lsn", (target,)
                ).fetchone()
                if row is not None and row[0]:
                    return
                if time.monotonic() > deadline:
                    raise AssertionError(f"the standby did not replay up to {target}")
                time.sleep(0.02)

    def pause_replay(self) -> None:
        with self.connect() as conn:
            conn.execute("SELECT pg_wal_replay_pause()")

    def resume_replay(self) -> None:
        with self.connect() as conn:
            conn.execute("SELECT pg_wal_replay_resume()")
