"""The frontend's side of Sender.Relay (notifymesh.server.relay): client streams as
logical streams on one call per sender, driven with a fake call."""

import asyncio

import grpc
import pytest

from fakes import eventually, received
from gen.notifymesh.internal.v1 import sender_pb2
from gen.notifymesh.v1 import pubsub_pb2
from notifymesh import errors
from notifymesh.server.relay import SenderRelays


class FakeRelayCall:
    """A Relay call as grpc.aio gives it: reads the ups, and yields what the test sends down."""

    def __init__(self, ups):
        self.ups: list[sender_pb2.RelayUp] = []
        self._downs: asyncio.Queue = asyncio.Queue()
        self._reader = asyncio.ensure_future(self._read(ups))

    async def _read(self, ups):
        async for up in ups:
            self.ups.append(up)

    def send(self, down: sender_pb2.RelayDown) -> None:
        self._downs.put_nowait(down)

    def fail(self, code: grpc.StatusCode) -> None:
        self._downs.put_nowait(grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(), "call broke"))

    def opened(self) -> list[int]:
        return [o.stream for up in self.ups for o in up.opens]

    def closed(self) -> list[int]:
        return [c for up in self.ups for c in up.closes]

    async def __aiter__(self):
        while True:
            item = await self._downs.get()
            if isinstance(item, Exception):
                raise item
            yield item

    def cancel(self) -> None:
        self.fail(grpc.StatusCode.CANCELLED)


class Senders:
    def __init__(self):
        self.calls: dict[str, list[FakeRelayCall]] = {}
        self.relays = SenderRelays(self._open, stream_max_outstanding=3)

    def _open(self, addr: str):
        def call(ups):
            made = FakeRelayCall(ups)
            self.calls.setdefault(addr, []).append(made)
            return made
        return call


def request(name: str, max_outstanding: int = 0) -> pubsub_pb2.SubscribeRequest:
    return pubsub_pb2.SubscribeRequest(subscription=name, max_outstanding_messages=max_outstanding)


def frame(stream_id: int, *ack_ids: str) -> sender_pb2.RelayDown:
    return sender_pb2.RelayDown(frames=[sender_pb2.RelayDown.Frame(
        stream=stream_id, received_messages=[received(a).SerializeToString() for a in ack_ids])])


def ack_ids(raw_frame: bytes) -> list[str]:
    return [m.ack_id for m in pubsub_pb2.SubscribeResponse.FromString(raw_frame).received_messages]


async def test_client_streams_to_one_sender_share_one_call_and_each_gets_its_own_frames():
    senders = Senders()
    first, second = senders.relays.subscribe("s1:1", request("a")), senders.relays.subscribe("s1:1", request("b"))
    other = senders.relays.subscribe("s2:2", request("c"))
    [call], [call_2] = senders.calls["s1:1"], senders.calls["s2:2"]
    await eventually(lambda: call.opened() == [first.id, second.id] and call_2.opened() == [other.id])
    assert [o.request.subscription for up in call.ups for o in up.opens] == ["a", "b"]
    call.send(frame(second.id, "b1"))
    call.send(frame(first.id, "a1", "a2"))
    assert ack_ids(await anext(aiter(first))) == ["a1", "a2"]
    assert ack_ids(await anext(aiter(second))) == ["b1"]


async def test_a_stream_the_sender_ends_raises_its_status_and_the_others_go_on():
    senders = Senders()
    deleted, kept = senders.relays.subscribe("s1:1", request("a")), senders.relays.subscribe("s1:1", request("b"))
    [call] = senders.calls["s1:1"]
    call.send(sender_pb2.RelayDown(ends=[sender_pb2.RelayDown.End(
        stream=deleted.id, code=grpc.StatusCode.NOT_FOUND.value[0], details="subscription 'a' not found")]))
    with pytest.raises(errors.NotFound, match="'a' not found"):
        await anext(aiter(deleted))
    call.send(frame(kept.id, "b1"))
    assert ack_ids(await anext(aiter(kept))) == ["b1"]
    ended = senders.relays.subscribe("s1:1", request("c"))  # an end without error: the stream just ends
    call.send(sender_pb2.RelayDown(ends=[sender_pb2.RelayDown.End(stream=ended.id)]))
    assert [f async for f in ended] == []
    assert senders.calls["s1:1"] == [call]


async def test_a_client_that_does_not_read_holds_back_no_other_stream_and_at_most_its_window():
    senders = Senders()
    slow, fast = senders.relays.subscribe("s1:1", request("a", 2)), senders.relays.subscribe("s1:1", request("b"))
    [call] = senders.calls["s1:1"]
    for i in range(5):  # room freed by expired deadlines: the sender sends beyond the window
        call.send(frame(slow.id, f"a{i}"))
    call.send(frame(fast.id, "b1"))
    assert ack_ids(await anext(aiter(fast))) == ["b1"]
    assert ack_ids(await anext(aiter(slow))) == ["a0", "a1"]  # the rest comes again from storage


async def test_a_broken_call_ends_every_stream_on_it_and_the_next_stream_opens_a_new_call():
    senders = Senders()
    streams = [senders.relays.subscribe("s1:1", request(name)) for name in ("a", "b")]
    [call] = senders.calls["s1:1"]
    call.fail(grpc.StatusCode.UNAVAILABLE)
    for stream in streams:
        with pytest.raises(errors.Unavailable):
            await anext(aiter(stream))
    again = senders.relays.subscribe("s1:1", request("a"))
    assert len(senders.calls["s1:1"]) == 2
    senders.calls["s1:1"][1].send(frame(again.id, "a1"))
    assert ack_ids(await anext(aiter(again))) == ["a1"]


async def test_a_client_that_goes_away_closes_its_stream_on_the_call():
    senders = Senders()
    gone, staying = senders.relays.subscribe("s1:1", request("a")), senders.relays.subscribe("s1:1", request("b"))
    [call] = senders.calls["s1:1"]
    frames = aiter(gone)
    waiting = asyncio.ensure_future(anext(frames))
    await eventually(lambda: call.opened() == [gone.id, staying.id])
    waiting.cancel()
    await asyncio.gather(waiting, return_exceptions=True)
    await frames.aclose()
    await eventually(lambda: call.closed() == [gone.id])
    call.send(frame(gone.id, "a1"))  # already on its way: dropped
    call.send(frame(staying.id, "b1"))
    assert ack_ids(await anext(aiter(staying))) == ["b1"]
    staying.cancel()  # as the gateway does when it ends a relay
    await eventually(lambda: call.closed() == [gone.id, staying.id])
