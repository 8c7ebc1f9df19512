"""A stream the server cancelled before taking it up reconnects. grpc's server
cancels (status CANCELLED) calls beyond its pending limit
(grpc.server.max_pending_requests) and calls left untaken 30 s
(grpc.server_max_unrequested_time_in_server): 50,000 streams opened at once on
one frontend lost about 7,000 that way (docs/benchmarks.md, issue 19). Here a
real server with a pending limit of 2 and a busy loop cancels most of 40 streams
opened at once."""

import asyncio
import time

import grpc
import pytest

from gen.notifymesh.v1 import pubsub_pb2, pubsub_pb2_grpc
from notifymesh.client import Client

STREAMS = 40


class Subscriber(pubsub_pb2_grpc.SubscriberServicer):
    def __init__(self):
        self.taken = 0

    async def Subscribe(self, request, context):
        self.taken += 1
        time.sleep(0.01)  # the loop busy: calls arriving meanwhile wait untaken, beyond the limit
        yield pubsub_pb2.SubscribeResponse(received_messages=[pubsub_pb2.ReceivedMessage(ack_id=request.subscription)])
        await asyncio.Event().wait()


@pytest.fixture
async def crowded(monkeypatch):
    monkeypatch.setenv("NOTIFYMESH_PLAINTEXT", "1")  # the fake serves plaintext
    subscriber = Subscriber()
    server = grpc.aio.server(options=[("grpc.server.max_pending_requests", 2),
                                      ("grpc.server.max_pending_requests_hard_limit", 4)])
    pubsub_pb2_grpc.add_SubscriberServicer_to_server(subscriber, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    yield subscriber, f"127.0.0.1:{port}"
    await server.stop(0)


async def test_streams_the_server_cancelled_before_taking_them_up_subscribe_again(crowded):
    subscriber, addr = crowded
    async with Client(addr) as client:
        async def first_frame(name: str) -> str:
            async for frame in client.subscribe_frames(name):
                return frame[0].ack_id

        names = [f"s{i}" for i in range(STREAMS)]
        assert await asyncio.wait_for(asyncio.gather(*(first_frame(n) for n in names)), 60) == names
    assert subscriber.taken == STREAMS  # the server took each once: the others it had cancelled untaken
