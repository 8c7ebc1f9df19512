"""The client gzips publish requests above its threshold, and only those: the bytes
on the wire are counted by a TCP forwarder between it and a fake frontend."""

import asyncio

import grpc
import pytest

from gen.notifymesh.v1 import pubsub_pb2, pubsub_pb2_grpc
from notifymesh.client import COMPRESS_OVER_BYTES, Client


class Publisher(pubsub_pb2_grpc.PublisherServicer):
    def __init__(self):
        self.received: list[bytes] = []

    async def Publish(self, request, context):
        self.received.extend(m.data for m in request.messages)
        return pubsub_pb2.PublishResponse(message_ids=[str(i) for i in range(len(request.messages))])


async def counting_forwarder(target_port: int, counted: list[int]) -> asyncio.Server:
    """Forwards to target_port; adds the bytes sent towards it to counted[0]."""
    async def pump(reader, writer, count: bool):
        while data := await reader.read(65536):
            if count:
                counted[0] += len(data)
            writer.write(data)
            await writer.drain()
        writer.close()

    async def connection(reader, writer):
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", target_port)
        await asyncio.gather(pump(reader, up_writer, True), pump(up_reader, writer, False), return_exceptions=True)

    return await asyncio.start_server(connection, "127.0.0.1", 0)


@pytest.fixture
async def wire(monkeypatch):
    monkeypatch.setenv("NOTIFYMESH_PLAINTEXT", "1")  # the fake serves plaintext
    publisher, server = Publisher(), grpc.aio.server()
    pubsub_pb2_grpc.add_PublisherServicer_to_server(publisher, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    counted = [0]
    forwarder = await counting_forwarder(port, counted)
    yield publisher, counted, f"127.0.0.1:{forwarder.sockets[0].getsockname()[1]}"
    forwarder.close()
    await server.stop(0)


async def test_a_publish_above_the_threshold_goes_compressed_and_one_below_does_not(wire):
    publisher, counted, addr = wire
    text = b'{"user": "alice", "event": "order.shipped", "items": ["book", "lamp"]}\n'
    big, small = text * (2 * COMPRESS_OVER_BYTES // len(text)), text * (COMPRESS_OVER_BYTES // 2 // len(text))
    async with Client(addr) as client:
        await client.publish("t", [b"warm-up"])  # the connection's own bytes, not counted below
        before = counted[0]
        await client.publish("t", [big])
        compressed = counted[0] - before
        before = counted[0]
        await client.publish("t", [small])
        plain = counted[0] - before
    assert publisher.received[1:] == [big, small]  # intact once decompressed
    assert compressed < len(big) / 10, compressed
    assert plain > len(small), plain
