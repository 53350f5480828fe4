"""How the client reaches the server: TLS, mTLS, bearer tokens, and the channel's options.

A token is sent as ``authorization: Bearer <token>`` on every call (plaintext loopback too: the
server accepts tokens without TLS only in its explicit insecure setup). A ``token_file`` is read
again whenever its modification time, size or inode changes, so a rotated token (a Kubernetes
projected service-account token, say) is used from the next call on without a restart.
The PEM files are watched the same way (:class:`RotatingChannel`): a rotated client
certificate is used from the next call on, on a new channel.

Example:
    >>> auth = Credentials(ca_file="ca.crt", token_file="token")  # doctest: +SKIP
    >>> channel = auth.channel("costsim.internal:50051")  # doctest: +SKIP

"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, TypeVar

import grpc

from costsim_analytics.client.errors import ClientError
from costsim_analytics.client.retry import SERVICE_CONFIG_JSON
from costsim_analytics.client.tracing import trace_metadata

StrPath = str | os.PathLike[str]
C = TypeVar("C")
# How often the TLS files are looked at for a rotation, and how long a replaced channel is kept
# for the calls still running on it.
TLS_CHECK_S = 1.0
RETIRED_GRACE_S = 600.0

# The server pings idle connections every 60 s and allows clients a ping per 10 s or more
# (README, COSTSIM_KEEPALIVE_TIME_S): a client pinging every 30 s notices a dead peer (a load
# balancer that dropped the connection) within a minute. A restarted server is reconnected to
# within a second (gRPC's default waits start at 1 s and grow to 120 s).
CHANNEL_OPTIONS: tuple[tuple[str, Any], ...] = (
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.http2.max_pings_without_data", 0),
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1000),
    ("grpc.enable_retries", 1),
    ("grpc.service_config", SERVICE_CONFIG_JSON),
    # No client-side size limit (gRPC's default is 4 MiB): the server enforces its own,
    # COSTSIM_MAX_MESSAGE_MB, and says so (RESOURCE_EXHAUSTED, not retried).
    ("grpc.max_receive_message_length", -1),
    ("grpc.max_send_message_length", -1),
)


class _TokenFile:
    """A token read from a file, read again when the file changes."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._stamp: tuple[int, int, int] | None = None
        self._token = ""
        self._lock = threading.Lock()

    def token(self) -> str:
        try:
            stat = os.stat(self._path)
        except OSError as exc:
            raise ClientError(f"cannot read the token file {self._path}: {exc}") from exc
        stamp = (stat.st_mtime_ns, stat.st_size, stat.st_ino)
        with self._lock:
            if stamp != self._stamp:
                self._token = self._path.read_text(encoding="utf-8").strip()
                self._stamp = stamp
            return self._token


@dataclass(frozen=True)
class Credentials:
    """How the client proves who it is and whom it trusts.

    Attributes:
        token: a bearer token (a JWT) sent with every call.
        token_file: a file holding the token, read again when it changes; ``token`` wins.
        tls: speak TLS (implied by ``ca_file`` or ``cert_file``); trusts the system's roots
            unless ``ca_file`` is given.
        ca_file: PEM bundle of the CAs that sign the server's certificate.
        cert_file: PEM client certificate chain, for mTLS (with ``key_file``).
        key_file: its PEM private key.
        server_name: the name to check the server's certificate against, when the target's
            host is not in it (an IP address, a load balancer's name).
    """

    token: str = ""
    token_file: StrPath | None = None
    tls: bool = False
    ca_file: StrPath | None = None
    cert_file: StrPath | None = None
    key_file: StrPath | None = None
    server_name: str = ""
    _file: _TokenFile | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("cert_file and key_file go together (mTLS)")
        if self.token_file is not None and not self.token:
            object.__setattr__(self, "_file", _TokenFile(Path(self.token_file)))

    def tls_files(self) -> tuple[tuple[int, int, int], ...] | None:
        """What the PEM files look like now (to see a rotation); None when one cannot be read."""
        stamps = []
        for path in (self.ca_file, self.cert_file, self.key_file):
            if path is None:
                continue
            try:
                stat = os.stat(path)
            except OSError:
                return None
            stamps.append((stat.st_mtime_ns, stat.st_size, stat.st_ino))
        return tuple(stamps)

    @property
    def secure(self) -> bool:
        """Whether the channel speaks TLS."""
        return self.tls or self.ca_file is not None or self.cert_file is not None

    def metadata(self) -> tuple[tuple[str, str], ...]:
        """The call metadata: the token (none without one) and the caller's trace context.

        The trace context (``traceparent``) only when opentelemetry-api is installed and a
        span is current (``client/tracing.py``).
        """
        token = self.token or (self._file.token() if self._file is not None else "")
        bearer = (("authorization", f"Bearer {token}"),) if token else ()
        return bearer + trace_metadata()

    def channel_credentials(self) -> grpc.ChannelCredentials:
        """TLS credentials from the PEM files (read now)."""

        def read(path: StrPath | None) -> bytes | None:
            return Path(path).read_bytes() if path is not None else None

        return grpc.ssl_channel_credentials(
            root_certificates=read(self.ca_file),
            private_key=read(self.key_file),
            certificate_chain=read(self.cert_file),
        )

    def options(self, extra: Sequence[tuple[str, Any]] = ()) -> list[tuple[str, Any]]:
        """The channel options: :data:`CHANNEL_OPTIONS`, the server name, then ``extra``."""
        options = list(CHANNEL_OPTIONS)
        if self.server_name:
            options.append(("grpc.ssl_target_name_override", self.server_name))
        overridden = {key for key, _ in extra}
        return [(k, v) for k, v in options if k not in overridden] + list(extra)

    def channel(self, target: str, extra: Sequence[tuple[str, Any]] = ()) -> grpc.Channel:
        """A blocking channel to ``target``."""
        if self.secure:
            return grpc.secure_channel(target, self.channel_credentials(), self.options(extra))
        return grpc.insecure_channel(target, self.options(extra))

    def aio_channel(self, target: str, extra: Sequence[tuple[str, Any]] = ()) -> grpc.aio.Channel:
        """An asyncio channel to ``target``."""
        if self.secure:
            return grpc.aio.secure_channel(target, self.channel_credentials(), self.options(extra))
        return grpc.aio.insecure_channel(target, self.options(extra))


class RotatingChannel(Generic[C]):
    """A channel made again when its certificate files change (a rotated client certificate).

    TLS credentials are read once per channel, so a rotation needs a new channel: at most every
    :data:`TLS_CHECK_S` the files are looked at, and when they changed the next call gets a
    channel built from them. The one it replaces is kept :data:`RETIRED_GRACE_S` for the calls
    still running on it, then handed back by :meth:`retired` to be closed. Thread-safe.
    """

    def __init__(self, credentials: Credentials, make: Callable[[], C]) -> None:
        self._credentials = credentials
        self._make = make
        self._lock = threading.Lock()
        self.channel = make()
        self.generation = 0
        self._stamp = credentials.tls_files() if credentials.secure else None
        self._checked = time.monotonic()
        self._retired: list[tuple[float, C]] = []

    def current(self) -> tuple[C, int]:
        """The channel to call on, and its generation (which changes with every rotation)."""
        if self._stamp is None or time.monotonic() - self._checked < TLS_CHECK_S:
            return self.channel, self.generation
        with self._lock:
            now = time.monotonic()
            if now - self._checked >= TLS_CHECK_S:
                self._checked = now
                stamp = self._credentials.tls_files()
                if stamp is not None and stamp != self._stamp:
                    fresh = self._make()
                    self._retired.append((now, self.channel))
                    self.channel, self._stamp = fresh, stamp
                    self.generation += 1
            return self.channel, self.generation

    def retired(self, everything: bool = False) -> list[C]:
        """Replaced channels whose grace is over (or all of them), to close."""
        with self._lock:
            cutoff = time.monotonic() - RETIRED_GRACE_S
            done = [c for t, c in self._retired if everything or t < cutoff]
            self._retired = [(t, c) for t, c in self._retired if not (everything or t < cutoff)]
            return done
