"""A minimal HTTP/1.1 server on the asyncio event loop the gRPC server runs on.

It serves the side port's few read-only GET routes and nothing more: one request per
connection (``Connection: close``), no request bodies, a bounded request head and a read
timeout. Being on the same loop, it needs no thread of its own, its page work goes through the
same bounded worker pool as the RPCs, and it starts and stops with the gRPC server.

Example:
    >>> async def app(request: Request) -> Response:  # doctest: +SKIP
    ...     return Response(200, b"ok", "text/plain")
    >>> server = HttpServer(app, "127.0.0.1:0")  # doctest: +SKIP
    >>> await server.start(); print(server.address)  # doctest: +SKIP

"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from http import HTTPStatus
from urllib.parse import parse_qs, unquote, urlsplit

log = logging.getLogger(__name__)

MAX_HEAD_BYTES = 16 * 1024
READ_TIMEOUT_S = 10.0
HEADERS = (
    # Nothing on these pages comes from anywhere else: no script, no external style or font.
    ("Content-Security-Policy", "default-src 'none'; style-src 'unsafe-inline'; img-src 'self'"),
    ("X-Content-Type-Options", "nosniff"),
    ("Referrer-Policy", "no-referrer"),
    ("Cache-Control", "no-store"),
)


@dataclass(frozen=True, slots=True)
class Request:
    """A parsed request head: the path is percent-decoded, the query parsed."""

    method: str
    path: str
    raw_path: str
    query: dict[str, list[str]] = field(default_factory=dict)

    def arg(self, name: str, default: str = "") -> str:
        """The first value of a query parameter."""
        return self.query.get(name, [default])[0]


@dataclass(frozen=True, slots=True)
class Response:
    """A complete answer."""

    status: int
    body: bytes
    content_type: str = "text/html; charset=utf-8"
    headers: tuple[tuple[str, str], ...] = ()


App = Callable[[Request], Awaitable[Response]]


def parse_head(head: bytes) -> Request:
    """The request line of ``head``.

    Raises:
        ValueError: not an HTTP/1.x request line.
    """
    line = head.split(b"\r\n", 1)[0].decode("latin-1")
    parts = line.split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
        raise ValueError(f"bad request line {line[:80]!r}")
    method, target, _ = parts
    url = urlsplit(target)
    return Request(
        method=method,
        path=unquote(url.path),
        raw_path=url.path,
        query=parse_qs(url.query),
    )


def render(response: Response, *, head_only: bool = False) -> bytes:
    """The bytes on the wire."""
    reason = HTTPStatus(response.status).phrase
    lines = [
        f"HTTP/1.1 {response.status} {reason}",
        f"Content-Type: {response.content_type}",
        f"Content-Length: {len(response.body)}",
        "Connection: close",
        *(f"{name}: {value}" for name, value in (*HEADERS, *response.headers)),
    ]
    head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
    return head if head_only else head + response.body


def plain(status: int, text: str) -> Response:
    """A short text/plain answer."""
    return Response(status, text.encode(), "text/plain; charset=utf-8")


class HttpServer:
    """Serves ``app`` on ``listen`` (``host:port``; port 0 picks a free one)."""

    def __init__(self, app: App, listen: str) -> None:
        host, _, port = listen.rpartition(":")
        self._host = host.strip("[]")
        self._port = int(port)
        self._app = app
        self._listen = listen
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Task[None]] = set()
        self.address = ""

    async def start(self) -> None:
        """Bind and listen (raises OSError when the address is taken)."""
        try:
            self._server = await asyncio.start_server(
                self._connection, self._host, self._port, limit=MAX_HEAD_BYTES
            )
        except OSError as exc:
            raise OSError(f"cannot listen on {self._listen} (HTTP): {exc.strerror or exc}") from exc
        host, port = self._server.sockets[0].getsockname()[:2]
        self.address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"

    async def stop(self, grace_s: float) -> None:
        """Stop listening; give requests in flight ``grace_s`` seconds, then cancel them."""
        if self._server is None:
            return
        self._server.close()
        pending = set(self._connections)
        if pending:
            _, late = await asyncio.wait(pending, timeout=grace_s)
            for task in late:
                task.cancel()
            await asyncio.gather(*late, return_exceptions=True)
        await self._server.wait_closed()

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        try:
            response, head_only = await self._answer(reader)
            if response is not None:
                writer.write(render(response, head_only=head_only))
                await writer.drain()
        except ConnectionError:
            pass  # the client went away
        finally:
            self._connections.discard(task)
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    async def _answer(self, reader: asyncio.StreamReader) -> tuple[Response | None, bool]:
        try:
            async with asyncio.timeout(READ_TIMEOUT_S):
                head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError:
            return None, False  # closed before a whole request head: nothing to answer
        except asyncio.LimitOverrunError:
            return plain(431, "request head too large\n"), False
        except TimeoutError:
            return plain(408, "request head not received in time\n"), False
        try:
            request = parse_head(head)
        except ValueError:
            return plain(400, "bad request\n"), False
        if request.method not in ("GET", "HEAD"):
            refused = plain(405, "read-only: GET and HEAD only\n")
            return replace(refused, headers=(("Allow", "GET, HEAD"),)), False
        try:
            response = await self._app(request)
        except Exception:
            log.exception("http %s %s failed", request.method, request.raw_path)
            response = plain(500, "internal error; the server log has the details\n")
        return response, request.method == "HEAD"
