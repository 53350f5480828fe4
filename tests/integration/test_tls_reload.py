"""Real sockets: a grpc.aio server on the reloading credentials with mTLS accepts a client
certificate from its CA, refuses one from another CA, reads the caller's identity from the
auth context, and serves a rotated certificate to new connections without a restart."""

import asyncio

import grpc
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from costsim_analytics.auth.tls import ReloadingTls, TlsFiles, identity_from_auth_context
from tests.security import CertificateAuthority, write_atomically

CHANNEL_OPTIONS = [
    # Each channel its own connection: a shared subchannel would reuse an earlier handshake.
    ("grpc.use_local_subchannel_pool", 1),
]


class RecordingHealth(health.aio.HealthServicer):  # type: ignore[name-defined,misc]
    """The health service, remembering the identity of each caller it served."""

    def __init__(self):
        super().__init__()
        self.identities = []

    async def Check(self, request, context):
        self.identities.append(identity_from_auth_context(context.auth_context()))
        return await super().Check(request, context)


async def serve(tls):
    server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
    servicer = RecordingHealth()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    port = server.add_secure_port("127.0.0.1:0", tls.grpc_credentials())
    assert port
    await servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    await server.start()
    return server, servicer, port


async def check(port, root, client):
    credentials = grpc.ssl_channel_credentials(
        root_certificates=root.pem,
        private_key=client.key_pem if client else None,
        certificate_chain=client.cert_pem if client else None,
    )
    async with grpc.aio.secure_channel(
        f"localhost:{port}", credentials, options=CHANNEL_OPTIONS
    ) as channel:
        response = await health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(), timeout=5
        )
        return response.status


async def refused(port, root, client):
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await check(port, root, client)
    return info.value.code()


def test_mtls_with_reloading_credentials(tmp_path):
    server_ca, client_ca, stranger_ca = (CertificateAuthority(f"CA {i}") for i in range(3))
    cert, key = server_ca.issue_server().write(tmp_path, "server")
    tls = ReloadingTls(TlsFiles(cert, key, client_ca.write(tmp_path, "clients")))
    good = client_ca.issue_client("spiffe://test/ns/sim/writer")
    foreign = stranger_ca.issue_client("spiffe://test/ns/sim/writer")

    async def scenario():
        server, servicer, port = await serve(tls)
        try:
            serving = health_pb2.HealthCheckResponse.SERVING
            assert await check(port, server_ca, good) == serving
            assert servicer.identities == ["spiffe://test/ns/sim/writer"]
            # A client certificate from another CA never gets to the servicer.
            assert await refused(port, server_ca, foreign) == grpc.StatusCode.UNAVAILABLE
            # No client certificate at all: refused at the handshake too (mTLS is required).
            assert await refused(port, server_ca, None) == grpc.StatusCode.UNAVAILABLE
            assert len(servicer.identities) == 1

            # Rotate the server certificate to one from a new CA: new connections get it.
            rotated_ca = CertificateAuthority("rotated server CA")
            rotated = rotated_ca.issue_server()
            write_atomically(cert, rotated.cert_pem)
            write_atomically(key, rotated.key_pem)
            assert await check(port, rotated_ca, good) == serving
            assert await refused(port, server_ca, good) == grpc.StatusCode.UNAVAILABLE
            assert tls.generation == 1
        finally:
            await server.stop(None)

    asyncio.run(scenario())
