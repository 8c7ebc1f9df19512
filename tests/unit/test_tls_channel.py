"""notifymesh.server.tls.client_channel, the one mutual-TLS client channel of the
tools and tests (deploy/healthcheck.py, LocalMesh.channel, tests' aio_channel),
against a real gRPC server that requires a client certificate of the cluster CA."""

import asyncio

import grpc
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from deploy import pki
from notifymesh.server.tls import TlsFiles, client_channel, server_credentials


@pytest.fixture
async def mtls_server(tmp_path):
    pki.ensure(tmp_path, {"storage-1": ["127.0.0.1"], "client": []})
    server = grpc.aio.server()
    servicer = health.aio.HealthServicer()
    await servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    port = server.add_secure_port("127.0.0.1:0", server_credentials(TlsFiles(tmp_path, "storage-1"), True))
    await server.start()
    yield f"127.0.0.1:{port}", tmp_path
    await server.stop(None)


def check(channel) -> int:
    return health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5).status


async def test_blocking_and_aio_channels_present_the_certificate(mtls_server):
    addr, tls = mtls_server
    files = TlsFiles(tls, "client")
    with client_channel(addr, files) as channel:  # blocking, as the probe and LocalMesh use it
        assert await asyncio.to_thread(check, channel) == health_pb2.HealthCheckResponse.SERVING
    async with client_channel(addr, files, aio=True) as channel:
        assert (await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)).status \
            == health_pb2.HealthCheckResponse.SERVING


async def test_without_files_it_is_plaintext_which_the_internal_port_refuses(mtls_server):
    addr, _ = mtls_server
    async with client_channel(addr, None, aio=True) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=2)
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE


def test_a_certificate_that_is_not_its_keys_is_refused_before_dialling(tmp_path):
    pki.ensure(tmp_path, {"a": [], "b": []})
    (tmp_path / "a.key").write_bytes((tmp_path / "b.key").read_bytes())
    with pytest.raises(ValueError, match="is not the certificate"):
        client_channel("127.0.0.1:1", TlsFiles(tmp_path, "a"))
