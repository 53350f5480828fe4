"""The side port's HTTP server on real sockets: header parsing, the one bounded POST, HTTPS
with an optional client certificate."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Awaitable, Callable

import pytest

from costsim_analytics.api.dashboard import httpserver
from costsim_analytics.api.dashboard.httpserver import (
    MAX_BODY_BYTES,
    HttpServer,
    Request,
    Response,
    parse_head,
    plain,
)
from costsim_analytics.auth.tls import ReloadingTls, TlsFiles
from tests.security import CertificateAuthority

seen: list[Request] = []


async def echo(request: Request) -> Response:
    seen.append(request)
    text = f"{request.method} {request.path} {len(request.body)} {request.peer_identity}"
    return plain(200, text)


async def exchange(
    raw: bytes,
    *,
    tls: ssl.SSLContext | None = None,
    client: ssl.SSLContext | None = None,
    then: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]] | None = None,
) -> bytes:
    """Send ``raw`` to a fresh server (``then`` continues the conversation); all it answers."""
    server = HttpServer(echo, "127.0.0.1:0", tls=tls, post_paths=frozenset({"/login"}))
    await server.start()
    try:
        host, port = server.address.rsplit(":", 1)
        reader, writer = await asyncio.open_connection(
            host, int(port), ssl=client, server_hostname="localhost" if client else None
        )
        writer.write(raw)
        await writer.drain()
        if then is not None:
            await then(reader, writer)
        answer = await asyncio.wait_for(reader.read(), 5)
        writer.close()
        return answer
    finally:
        await server.stop(1.0)


def send(raw: bytes, **kwargs) -> bytes:
    seen.clear()
    return asyncio.run(exchange(raw, **kwargs))


def status_of(answer: bytes) -> int:
    return int(answer.split(b" ", 2)[1])


def post(body: bytes, *headers: str, path: str = "/login") -> bytes:
    head = [f"POST {path} HTTP/1.1", "Host: x", *headers]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


def test_parse_head_reads_header_fields_lowercased():
    request = parse_head(b"GET / HTTP/1.1\r\nHost: a\r\nCookie:  x=1 \r\ncookie: y=2\r\n\r\n")
    assert request.header("HOST") == "a" and request.header_values("cookie") == ["x=1", "y=2"]
    assert request.header("authorization") is None
    for bad in (b"GET / HTTP/1.1\r\nno colon\r\n\r\n", b"GET / HTTP/1.1\r\nA : b\r\n\r\n"):
        with pytest.raises(ValueError, match="bad header line"):
            parse_head(bad)
    with pytest.raises(ValueError, match="bad header line"):
        parse_head(b"GET / HTTP/1.1\r\nA: b\r\n folded\r\n\r\n")


def test_get_still_works_and_a_malformed_header_is_400():
    assert send(b"GET /x HTTP/1.1\r\nHost: x\r\n\r\n").endswith(b"GET /x 0 None")
    assert status_of(send(b"GET / HTTP/1.1\r\nbroken header\r\n\r\n")) == 400


def test_a_post_with_a_content_length_body_reaches_the_app():
    body = b"token=" + b"a" * 100
    answer = send(post(body, f"Content-Length: {len(body)}", "Content-Type: x"))
    assert status_of(answer) == 200 and answer.endswith(b"POST /login 106 None")
    assert seen[0].body == body


def test_post_elsewhere_and_other_methods_are_405_without_reading_a_body():
    answer = send(post(b"x", "Content-Length: 1", path="/"))
    assert status_of(answer) == 405 and b"Allow: GET, HEAD\r\n" in answer
    answer = send(b"PUT /login HTTP/1.1\r\nContent-Length: 0\r\n\r\n")
    assert status_of(answer) == 405 and b"Allow: GET, HEAD, POST\r\n" in answer
    assert seen == []


def test_bodies_over_the_limit_are_413_before_being_read():
    answer = send(post(b"", f"Content-Length: {MAX_BODY_BYTES + 1}"))
    assert status_of(answer) == 413 and seen == []
    exact = b"a" * MAX_BODY_BYTES
    assert status_of(send(post(exact, f"Content-Length: {MAX_BODY_BYTES}"))) == 200


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        ((), 411),
        (("Transfer-Encoding: chunked",), 411),
        (("Transfer-Encoding: chunked", "Content-Length: 3"), 411),
        (("Content-Length: 3", "Content-Length: 3"), 400),
        (("Content-Length: -3",), 400),
        (("Content-Length: 0x10",), 400),
        (("Content-Length: ３",), 400),
    ],
)
def test_only_one_plain_content_length_is_accepted(headers, status):
    raw = ("\r\n".join(["POST /login HTTP/1.1", *headers]) + "\r\n\r\nabc").encode("utf-8")
    assert status_of(send(raw)) == status and seen == []


def test_a_body_that_never_arrives_times_out(monkeypatch):
    monkeypatch.setattr(httpserver, "READ_TIMEOUT_S", 0.2)
    assert status_of(send(post(b"only-part", "Content-Length: 100"))) == 408


def test_expect_100_continue_gets_an_interim_answer():
    async def then(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        interim = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
        writer.write(b"abcd")
        await writer.drain()

    answer = send(post(b"", "Content-Length: 4", "Expect: 100-continue"), then=then)
    assert status_of(answer) == 200 and seen[0].body == b"abcd"


# --- HTTPS -----------------------------------------------------------------------------------


@pytest.fixture
def pki(tmp_path):
    ca, other = CertificateAuthority(), CertificateAuthority("another CA")
    cert, key = ca.issue_server().write(tmp_path, "server")
    tls = ReloadingTls(TlsFiles(cert, key, ca.write(tmp_path, "clients")))
    return ca, other, tls, tmp_path


def client_context(ca: CertificateAuthority, folder, issued=None) -> ssl.SSLContext:
    context = ssl.create_default_context(cadata=ca.pem.decode())
    if issued is not None:
        cert, key = issued.write(folder, "client")
        context.load_cert_chain(cert, key)
    return context


def test_https_with_an_optional_client_certificate(pki):
    ca, other, tls, folder = pki
    server = tls.ssl_context(require_client_cert=False)
    get = b"GET /x HTTP/1.1\r\nHost: localhost\r\n\r\n"
    # No certificate: the connection works, with no peer identity (a browser with a token).
    assert send(get, tls=server, client=client_context(ca, folder)).endswith(b"0 None")
    assert seen[0].secure
    # A certificate from the client CA: its identity reaches the app.
    viewer = ca.issue_client("spiffe://test/ns/ops/viewer")
    answer = send(get, tls=server, client=client_context(ca, folder, viewer))
    assert answer.endswith(b"spiffe://test/ns/ops/viewer")
    # One from another CA is verified, and refused at the handshake: the app never sees it.
    stranger = other.issue_client("spiffe://test/ns/ops/viewer")
    try:
        answer = send(get, tls=server, client=client_context(ca, folder, stranger))
    except (ssl.SSLError, ConnectionError):
        answer = b""  # TLS 1.2 fails the handshake; TLS 1.3 the first read, with an alert
    assert answer == b"" and seen == []
