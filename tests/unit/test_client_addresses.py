"""A Client of several frontend addresses: spread over them, carries on when one
dies, streams included. The frontends are two in-process gRPC servers."""

import asyncio
import time

import grpc
import pytest

from gen.notifymesh.v1 import cluster_pb2, cluster_pb2_grpc, pubsub_pb2, pubsub_pb2_grpc
from notifymesh import errors
from notifymesh.channel import client_target, parse_addresses
from notifymesh.client import Client


class Frontend(cluster_pb2_grpc.ClusterAdminServicer, pubsub_pb2_grpc.SubscriberServicer):
    """Counts its GetClusterStatus calls; a Subscribe stream gets a frame naming it each 50 ms."""

    def __init__(self, name: str):
        self.name, self.calls = name, 0

    async def GetClusterStatus(self, request, context):
        self.calls += 1
        return cluster_pb2.ClusterStatus()

    async def Subscribe(self, request, context):
        while True:
            yield pubsub_pb2.SubscribeResponse(received_messages=[
                pubsub_pb2.ReceivedMessage(ack_id=self.name, message=pubsub_pb2.PubsubMessage(message_id=self.name))])
            await asyncio.sleep(0.05)


async def serve(name: str) -> tuple[Frontend, grpc.aio.Server, str]:
    frontend = Frontend(name)
    server = grpc.aio.server()
    cluster_pb2_grpc.add_ClusterAdminServicer_to_server(frontend, server)
    pubsub_pb2_grpc.add_SubscriberServicer_to_server(frontend, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    return frontend, server, f"127.0.0.1:{port}"


@pytest.fixture
async def two_frontends(monkeypatch):
    monkeypatch.setenv("NOTIFYMESH_PLAINTEXT", "1")  # these fakes serve plaintext
    a, b = await serve("a"), await serve("b")
    yield a, b
    await asyncio.gather(a[1].stop(0), b[1].stop(0))


@pytest.mark.parametrize("bad", ["localhost", "127.0.0.1:50051,10.0.0.2", "host:", "[::1]", ""])
def test_an_address_without_a_port_is_refused_clearly(bad):
    with pytest.raises(errors.InvalidArgument, match="port|no frontend address"):
        Client(bad or ",")


def test_addresses_come_as_a_comma_list_or_a_list():
    assert parse_addresses("a:1, b:2") == ["a:1", "b:2"] == parse_addresses(["a:1", "b:2"])
    with pytest.raises(errors.InvalidArgument, match="1 to 65535"):
        parse_addresses("a:1,b:99999")
    target = client_target("localhost:1,127.0.0.1:2")  # a host name is resolved to its addresses
    assert target.target == "ipv4:127.0.0.1:1,127.0.0.1:2"
    assert client_target("unix:/tmp/x.sock").target == "unix:/tmp/x.sock"


async def test_calls_are_spread_over_the_frontends_and_go_on_when_one_dies(two_frontends):
    (a, server_a, addr_a), (b, _, addr_b) = two_frontends
    async with Client(f"{addr_a},{addr_b}") as client:
        for _ in range(100):
            await client.get_cluster_status()
        assert a.calls + b.calls == 100
        assert min(a.calls, b.calls) >= 40, f"not a fair share: {a.calls} and {b.calls}"
        await server_a.stop(0)
        for _ in range(20):
            await client.get_cluster_status()
        assert a.calls + b.calls == 120


async def test_a_stream_broken_by_its_frontends_death_moves_to_the_other_promptly(two_frontends):
    servers = {name: (server, addr) for name, server, addr in
               ((frontend.name, server, addr) for frontend, server, addr in two_frontends)}
    async with Client(",".join(addr for _, addr in servers.values())) as client:
        frames = client.subscribe_frames("s")
        first = (await anext(frames))[0].ack_id
        await servers[first][0].stop(0)
        killed_at = time.monotonic()
        while (served_by := (await asyncio.wait_for(anext(frames), 5))[0].ack_id) == first:
            pass  # frames already on their way
        moved_after = time.monotonic() - killed_at
        await frames.aclose()
    assert served_by != first
    assert moved_after < 2, f"the stream took {moved_after:.2f}s to move"


def test_the_cli_refuses_an_address_without_a_port(capsys):
    from notifymesh import cli
    with pytest.raises(SystemExit):
        cli.parser().parse_args(["--addr", "127.0.0.1:50051,localhost", "topic", "list"])
    assert "'localhost' has no port" in capsys.readouterr().err
    assert cli.parser().parse_args(["--addr", "a:1, b:2", "topic", "list"]).addr == "a:1,b:2"


async def test_calls_reach_a_frontend_back_from_a_restart_when_the_other_dies_at_once(two_frontends):
    """The client's channel retries a dead frontend only every second or so (its
    reconnect backoff); a call in that window must wait for it, not fail."""
    (a, server_a, addr_a), (b, server_b, addr_b) = two_frontends
    async with Client(f"{addr_a},{addr_b}", timeout_s=10) as client:
        await client.get_cluster_status()
        await server_a.stop(0)
        for _ in range(10):  # a's reconnect backoff grows to its most
            await client.get_cluster_status()
            await asyncio.sleep(0.2)
        back = grpc.aio.server()
        cluster_pb2_grpc.add_ClusterAdminServicer_to_server(a, back)
        back.add_insecure_port(addr_a)
        await back.start()
        await server_b.stop(0)
        try:
            calls_before = a.calls
            for _ in range(5):
                await client.get_cluster_status()
            assert a.calls == calls_before + 5
        finally:
            await back.stop(0)
