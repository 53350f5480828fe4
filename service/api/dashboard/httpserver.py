"""A minimal HTTP/1.1 server on the asyncio event loop the gRPC server runs on.

It serves the side port's few routes and nothing more: one request per connection
(``Connection: close``), a bounded request head and a read timeout. GET and HEAD go to every
route; POST only to the paths named in ``post_paths`` (the sign-in form), and only with a
``Content-Length`` body of at most :data:`MAX_BODY_BYTES` read within :data:`READ_TIMEOUT_S`
(no chunked bodies: 411; too large: 413, before any of it is read). With a TLS context
it serves HTTPS, and a verified client certificate is handed to the app as
``Request.peer_identity``. Being on the same loop, it needs no thread of its own, its page
work goes through the same bounded worker pool as the RPCs, and it starts and stops with the
gRPC server.

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
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from http import HTTPStatus
from urllib.parse import parse_qs, unquote, urlsplit

from costsim_analytics.auth.tls import identity_from_peercert

log = logging.getLogger(__name__)

MAX_HEAD_BYTES = 16 * 1024
MAX_BODY_BYTES = 16 * 1024
READ_TIMEOUT_S = 10.0
HEADERS = (
    # Nothing on these pages comes from anywhere else: no script, no external style or font;
    # forms post only to this server, and no other site may frame a page (the sign-in form).
    (
        "Content-Security-Policy",
        "default-src 'none'; style-src 'unsafe-inline'; img-src 'self'; "
        "form-action 'self'; frame-ancestors 'none'",
    ),
    ("X-Content-Type-Options", "nosniff"),
    ("Referrer-Policy", "no-referrer"),
    ("Cache-Control", "no-store"),
)


@dataclass(frozen=True, slots=True)
class Request:
    """A parsed request: the path is percent-decoded, the query parsed, header names lowercase.

    ``body`` is only ever set for a POST to one of the server's ``post_paths``;
    ``peer_identity`` is the verified client certificate's identity (HTTPS with a client CA),
    and ``secure`` tells whether the request came over TLS.
    """

    method: str
    path: str
    raw_path: str
    query: dict[str, list[str]] = field(default_factory=dict)
    headers: tuple[tuple[str, str], ...] = ()
    body: bytes = b""
    peer_identity: str | None = None
    secure: bool = False

    def arg(self, name: str, default: str = "") -> str:
        """The first value of a query parameter."""
        return self.query.get(name, [default])[0]

    def header_values(self, name: str) -> list[str]:
        """Every value of the header ``name`` (case-insensitive), in order."""
        lowered = name.lower()
        return [value for key, value in self.headers if key == lowered]

    def header(self, name: str) -> str | None:
        """The first value of the header ``name``; None when absent."""
        values = self.header_values(name)
        return values[0] if values else None


@dataclass(frozen=True, slots=True)
class Response:
    """A complete answer."""

    status: int
    body: bytes
    content_type: str = "text/html; charset=utf-8"
    headers: tuple[tuple[str, str], ...] = ()


App = Callable[[Request], Awaitable[Response]]


def _header_fields(lines: list[str]) -> tuple[tuple[str, str], ...]:
    fields = []
    for line in lines:
        if not line:
            continue
        name, colon, value = line.partition(":")
        # No obsolete line folding, no space before the colon (RFC 9112 section 5).
        if not colon or not name or name != name.strip() or line[0] in " \t":
            raise ValueError(f"bad header line {line[:80]!r}")
        fields.append((name.lower(), value.strip(" \t")))
    return tuple(fields)


def parse_head(head: bytes) -> Request:
    """The request line and header fields of ``head``.

    Raises:
        ValueError: not an HTTP/1.x request line, or a malformed header line.
    """
    line, *header_lines = head.decode("latin-1").split("\r\n")
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
        headers=_header_fields(header_lines),
    )


def content_length(request: Request) -> int:
    """The declared body length of a request that may carry a body.

    Raises:
        LookupError: no ``Content-Length``, or a ``Transfer-Encoding`` (chunked bodies are not
            accepted: with both headers a request is ambiguous, the classic smuggling shape).
        ValueError: several or malformed ``Content-Length`` values.
    """
    if request.header_values("transfer-encoding"):
        raise LookupError("Transfer-Encoding is not accepted")
    values = request.header_values("content-length")
    if not values:
        raise LookupError("Content-Length required")
    if len(values) > 1 or not values[0].isdigit() or not values[0].isascii():
        raise ValueError("bad Content-Length")
    return int(values[0])


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
    """Serves ``app`` on ``listen`` (``host:port``; port 0 picks a free one).

    ``tls`` makes it HTTPS; ``post_paths`` are the only paths that accept a POST (with a
    bounded body); any other method, or a POST elsewhere, is 405.
    """

    def __init__(
        self,
        app: App,
        listen: str,
        *,
        tls: ssl.SSLContext | None = None,
        post_paths: frozenset[str] = frozenset(),
        reuse_port: bool = False,
    ) -> None:
        host, _, port = listen.rpartition(":")
        self._reuse_port = reuse_port
        self._host = host.strip("[]")
        self._port = int(port)
        self._app = app
        self._listen = listen
        self._tls = tls
        self._post_paths = post_paths
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Task[None]] = set()
        self.address = ""

    @property
    def scheme(self) -> str:
        """``https`` with a TLS context, else ``http``."""
        return "http" if self._tls is None else "https"

    async def start(self) -> None:
        """Bind and listen (raises OSError when the address is taken)."""
        try:
            self._server = await asyncio.start_server(
                self._connection,
                self._host,
                self._port,
                limit=MAX_HEAD_BYTES,
                ssl=self._tls,
                ssl_handshake_timeout=READ_TIMEOUT_S if self._tls is not None else None,
                reuse_port=self._reuse_port or None,
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
            response, head_only = await self._answer(reader, writer)
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

    async def _answer(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> tuple[Response | None, bool]:
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
        request = replace(
            request,
            # Only a certificate the TLS layer verified against the client CA is in peercert.
            peer_identity=identity_from_peercert(writer.get_extra_info("peercert")),
            secure=self._tls is not None,
        )
        allowed = request.method in ("GET", "HEAD") or (
            request.method == "POST" and request.path in self._post_paths
        )
        if not allowed:
            refused = plain(405, "method not allowed here\n")
            allow = "GET, HEAD, POST" if request.path in self._post_paths else "GET, HEAD"
            return replace(refused, headers=(("Allow", allow),)), False
        if request.method == "POST":
            body = await self._body(request, reader, writer)
            if not isinstance(body, bytes):
                return body, False
            request = replace(request, body=body)
        try:
            response = await self._app(request)
        except Exception:
            log.exception("http %s %s failed", request.method, request.raw_path)
            response = plain(500, "internal error; the server log has the details\n")
        return response, request.method == "HEAD"

    async def _body(
        self, request: Request, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> bytes | Response | None:
        """The body of a POST, or the answer that refuses it (None: the client went away)."""
        try:
            length = content_length(request)
        except LookupError as exc:
            return plain(411, f"{exc}\n")
        except ValueError:
            return plain(400, "bad request: Content-Length\n")
        if length > MAX_BODY_BYTES:  # refused before a byte of it is read
            return plain(413, f"request body larger than {MAX_BODY_BYTES} bytes\n")
        if (request.header("expect") or "").lower() == "100-continue":
            writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        try:
            async with asyncio.timeout(READ_TIMEOUT_S):
                await writer.drain()
                return await reader.readexactly(length)
        except asyncio.IncompleteReadError:
            return None
        except TimeoutError:
            return plain(408, "request body not received in time\n")
