"""Transport security of the real mesh: TLS on the public port, mutual TLS on every
internal port and to etcd, certificates from the mesh's own CA only, and rotation
of a process's certificate while traffic runs."""

import asyncio
import socket
import ssl

import aetcd
import grpc
import pytest
from cryptography import x509
from grpc_health.v1 import health_pb2, health_pb2_grpc
from helpers import cli, new_topic, receive, unique

from deploy import pki
from notifymesh import errors
from notifymesh.client import Client
from notifymesh.credentials import CA_FILE
from notifymesh.server.cluster import TlsEtcdClient, connect_etcd
from notifymesh.server.tls import internal_options


@pytest.fixture(scope="module")
def other_ca(tmp_path_factory):
    """A CA that is not the mesh's, with a certificate of its own (other.pem) naming the same hosts."""
    tls = tmp_path_factory.mktemp("other-ca")
    pki.new_ca(tls, "some other CA")
    pki.issue(tls, "other")
    return tls


def storage_addr(mesh) -> str:
    return next(addr for node, addr in mesh.members().items() if node.startswith("storage"))


async def health(channel: grpc.aio.Channel) -> int:
    reply = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
    return reply.status


def tls_channel(addr: str, ca_dir, cert_dir=None, name: str = "client") -> grpc.aio.Channel:
    """A channel trusting ca_dir's CA, with cert_dir's certificate <name> (none without cert_dir)."""
    ca = (ca_dir / CA_FILE).read_bytes()
    key, cert = ((cert_dir / f"{name}.key").read_bytes(), (cert_dir / f"{name}.pem").read_bytes()) if cert_dir \
        else (None, None)
    return grpc.aio.secure_channel(addr, grpc.ssl_channel_credentials(ca, key, cert), options=internal_options())


async def test_a_plaintext_client_is_refused_on_the_public_and_the_internal_ports(mesh):
    for addr in (mesh.frontend_addr, storage_addr(mesh)):
        async with grpc.aio.insecure_channel(addr) as channel:
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await health(channel)
            assert refused.value.code() == grpc.StatusCode.UNAVAILABLE, addr
    async with tls_channel(mesh.frontend_addr, mesh.tls_dir) as channel:  # the same, over TLS: served
        assert await health(channel) == health_pb2.HealthCheckResponse.SERVING


async def test_the_public_port_needs_no_client_certificate_and_internal_ports_need_one_of_the_cluster_ca(
        mesh, other_ca):
    storage = storage_addr(mesh)
    async with tls_channel(mesh.frontend_addr, mesh.tls_dir) as channel:
        assert await health(channel) == health_pb2.HealthCheckResponse.SERVING
    async with tls_channel(storage, mesh.tls_dir, mesh.tls_dir) as channel:  # the cluster's client certificate
        assert await health(channel) == health_pb2.HealthCheckResponse.SERVING
    for cert_dir, name in ((None, ""), (other_ca, "other")):  # none, or one of another CA
        async with tls_channel(storage, mesh.tls_dir, cert_dir, name) as channel:
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await health(channel)
            assert refused.value.code() == grpc.StatusCode.UNAVAILABLE, name


async def test_a_client_refuses_a_frontend_whose_certificate_is_not_from_the_ca_it_trusts(mesh, other_ca):
    async with Client(mesh.frontend_addr, timeout_s=5, ca=other_ca / CA_FILE) as client:
        with pytest.raises(errors.Unavailable):
            await client.list_topics()
    done = cli(mesh, "--ca", str(other_ca / CA_FILE), "topic", "list")
    assert done.returncode == 1 and b"no TLS session with this client" in done.stderr, done.stderr
    assert cli(mesh, "--ca", str(mesh.tls_dir / CA_FILE), "topic", "list").returncode == 0


class Fixed:
    """Client credentials that never change (what ChannelCredentials gives TlsEtcdClient)."""

    def __init__(self, ca: bytes, key: bytes | None = None, cert: bytes | None = None):
        self.credentials = grpc.ssl_channel_credentials(ca, key, cert)

    def current(self) -> grpc.ChannelCredentials:
        return self.credentials


async def test_etcd_refuses_a_client_without_a_certificate_of_the_cluster_ca(mesh, other_ca):
    host, _, port = mesh.etcd_endpoint.rpartition(":")
    ca = (mesh.tls_dir / CA_FILE).read_bytes()  # each trusts etcd's certificate: etcd is the one refusing
    foreign = Fixed(ca, (other_ca / "other.key").read_bytes(), (other_ca / "other.pem").read_bytes())
    for etcd in (aetcd.Client(host=host, port=int(port), timeout=3), TlsEtcdClient(Fixed(ca), host=host,
                 port=int(port), timeout=3), TlsEtcdClient(foreign, host=host, port=int(port), timeout=3)):
        with pytest.raises(Exception):
            await etcd.get(b"/notifymesh/config")
        await etcd.close()
    etcd = connect_etcd(mesh.etcd_endpoint, mesh.client_tls())
    await etcd.get(b"/notifymesh/config")  # the cluster's client certificate: served
    await etcd.close()


def served_certificate(addr: str, mesh) -> x509.Certificate:
    """The certificate a new TLS connection to addr is shown (offering the CLI's certificate)."""
    host, _, port = addr.rpartition(":")
    context = ssl.create_default_context(cafile=mesh.tls_dir / CA_FILE)
    context.load_cert_chain(mesh.tls_dir / "client.pem", mesh.tls_dir / "client.key")
    context.set_alpn_protocols(["h2"])
    with socket.create_connection((host, int(port)), timeout=5) as raw:
        with context.wrap_socket(raw, server_hostname=host) as tls:
            return x509.load_der_x509_certificate(tls.getpeercert(binary_form=True))


async def test_rotating_certificates_while_traffic_runs_loses_nothing_and_new_connections_see_the_new_ones(
        own_mesh):
    mesh = own_mesh
    members = mesh.members()
    rotated = ["frontend-1", "storage-1", "sender-1"]
    before = {name: served_certificate(members[name], mesh).serial_number for name in rotated}
    async with Client(mesh.frontend_addr) as client:
        topic, sub = await new_topic(client, "rotate", topic_options=dict(replication_factor=3))
        published, failures, stop = [], [], asyncio.Event()

        async def publish_loop():
            while not stop.is_set():
                try:
                    published.extend(await client.publish(topic, [unique("m").encode()]))
                except errors.NotifymeshError as e:
                    failures.append(e)
                await asyncio.sleep(0.01)

        stream = asyncio.ensure_future(receive(client, sub, count=10**9, timeout=20))
        loop = asyncio.ensure_future(publish_loop())
        await asyncio.sleep(2)
        for name in rotated:  # new keys and certificates from the same CA, files replaced in place
            await asyncio.to_thread(pki.issue, mesh.tls_dir, name, [mesh.network.address(name)])
        await asyncio.sleep(4)  # the processes' channels look at their files every second
        async with Client(mesh.frontend_addr) as fresh:  # a new connection, and new calls between services
            topic2, sub2 = await new_topic(fresh, "rotated", topic_options=dict(replication_factor=3))
            await fresh.publish(topic2, [b"after"])
            assert len(await receive(fresh, sub2, 1, timeout=20)) == 1
        await asyncio.sleep(1)
        stop.set()
        await loop
        received = await stream
    assert not failures, failures[:3]
    assert len(published) > 10  # traffic ran throughout (a loaded machine publishes slowly)
    assert set(published) <= {m.message.message_id for m in received}  # the old stream kept going, lost nothing
    for name in rotated:
        now = served_certificate(members[name], mesh)
        assert now.serial_number != before[name], name
        assert now == x509.load_pem_x509_certificate((mesh.tls_dir / f"{name}.pem").read_bytes()), name
    for name in ("storage-1", "sender-1"):  # their own channels were rebuilt with the new client certificate
        assert "client certificate reloaded" in mesh.processes[name].log_path.read_text(), name


async def test_every_service_accepts_gzip_and_a_large_publish_arrives_intact(mesh, client):
    for node, addr in mesh.members().items():
        async with tls_channel(addr, mesh.tls_dir, mesh.tls_dir) as channel:
            reply = await health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=5, compression=grpc.Compression.Gzip)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING, node
    topic, sub = await new_topic(client, "gzip")
    data = b'{"event": "order.shipped", "user": "alice"}\n' * 3000  # 130 KiB: over the client's threshold
    [message_id] = await client.publish(topic, [data])
    [got] = await receive(client, sub, 1)
    assert (got.message.message_id, got.message.data) == (message_id, data)
