"""Client certificates mapped to principals (issue 17), on the frontend's second,
mutual-TLS port (its public port + frontend_mtls_port_offset): a mapped CN acts
with its role and patterns, an unmapped one and another CA's certificate are
refused, and the frontend's internal RPCs (Inbox.Wake, Node.Describe) are served
there only."""

import grpc
import pytest
from helpers import aio_channel, unique

from deploy import pki
from gen.notifymesh.internal.v1 import inbox_pb2, inbox_pb2_grpc, node_pb2, node_pb2_grpc
from gen.notifymesh.v1 import pubsub_pb2, pubsub_pb2_grpc
from notifymesh.server.config import Config
from notifymesh.server.tls import TlsFiles, client_channel


def _mtls_addr(mesh) -> str:
    return f"127.0.0.1:{mesh.frontend_ports[0] + Config.frontend_mtls_port_offset}"


async def _publish(files: TlsFiles, addr: str, topic: str):
    async with client_channel(addr, files, aio=True) as channel:
        return await pubsub_pb2_grpc.PublisherStub(channel).Publish(pubsub_pb2.PublishRequest(
            topic=topic, messages=[pubsub_pb2.PubsubMessage(data=b"x")]), timeout=10)


async def test_a_mapped_certificate_publishes_on_its_topics_only(mesh, client):
    tls_dir = mesh.data_dir / "tls"
    pki.issue(tls_dir, "billing-svc")
    await client.map_certificate("billing-svc", "publisher", topics=["billing.*"])
    billing, other = unique("billing.x"), unique("other.y")
    for topic in (billing, other):
        await client.create_topic(topic)
    files = TlsFiles(tls_dir, "billing-svc")
    published = await _publish(files, _mtls_addr(mesh), billing)
    assert len(published.message_ids) == 1
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await _publish(files, _mtls_addr(mesh), other)
    assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "billing-svc" in refused.value.details()
    assert f"needs publish on topic {other}" in refused.value.details()


async def test_an_unmapped_certificate_is_unauthenticated(mesh, client):
    tls_dir = mesh.data_dir / "tls"
    pki.issue(tls_dir, "stranger-svc")
    topic = unique("billing.unmapped")
    await client.create_topic(topic)
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await _publish(TlsFiles(tls_dir, "stranger-svc"), _mtls_addr(mesh), topic)
    assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "'stranger-svc' is not mapped" in refused.value.details()


async def test_a_certificate_of_another_ca_is_refused_at_the_handshake(mesh, client, tmp_path):
    pki.issue(mesh.data_dir / "tls", "billing-svc")
    pki.new_ca(tmp_path, "another CA")
    pki.issue(tmp_path, "billing-svc")
    await client.map_certificate("billing-svc", "publisher", topics=["billing.*"])
    topic = unique("billing.ca")
    await client.create_topic(topic)
    # The same CN from the cluster CA is served; from another CA the handshake fails.
    assert len((await _publish(TlsFiles(mesh.data_dir / "tls", "billing-svc"), _mtls_addr(mesh), topic))
               .message_ids) == 1
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await _publish(TlsFiles(tmp_path, "billing-svc"), _mtls_addr(mesh), topic)
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_inbox_wake_is_refused_on_the_public_port_and_served_on_the_mtls_port(mesh):
    request = inbox_pb2.WakeInboxRequest(changes=b"", mac=b"x" * 32)
    async with aio_channel(mesh.data_dir, mesh.frontend_addr) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await inbox_pb2_grpc.InboxStub(channel).Wake(request, timeout=10)
    assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "served only on the frontend's mutual-TLS port" in refused.value.details()
    # On the mutual-TLS port the call reaches the servicer, which checks its MAC.
    async with aio_channel(mesh.data_dir, _mtls_addr(mesh)) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as forged:
            await inbox_pb2_grpc.InboxStub(channel).Wake(request, timeout=10)
    assert "mutual-TLS" not in forged.value.details()


async def test_an_internal_rpc_is_refused_on_the_public_port_with_an_admin_key_and_served_on_the_mtls_port(mesh):
    async with aio_channel(mesh.data_dir, mesh.frontend_addr) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await node_pb2_grpc.NodeStub(channel).Describe(node_pb2.DescribeRequest(), timeout=10,
                                                           metadata=mesh.auth_metadata())
    assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "/notifymesh.internal.v1.Node/Describe is internal: served only on the frontend's mutual-TLS port" \
        in refused.value.details()
    # A service's certificate of the cluster CA (a sender's, as the mesh's own callers use).
    async with client_channel(_mtls_addr(mesh), TlsFiles(mesh.tls_dir, "sender-1"), aio=True) as channel:
        described = await node_pb2_grpc.NodeStub(channel).Describe(node_pb2.DescribeRequest(), timeout=10)
    assert described.kind == "frontend" and {m.kind for m in described.members} >= {"storage", "sender", "frontend"}
