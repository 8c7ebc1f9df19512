"""The sender's side of Sender.Relay (sender/relay.py): one frontend's client
streams as logical streams on one call, over the Dispatcher with the fake storage
and cluster of the dispatcher's tests."""

import asyncio

import grpc

from fakes import eventually, received
from gen.notifymesh.internal.v1 import sender_pb2, storage_pb2
from gen.notifymesh.v1 import pubsub_pb2
from sender.relay import Relay
from test_dispatcher import MERGED, SUB, TOPIC, ack_id, make_dispatcher


class Frontend:
    """The frontend's end of one Relay call: what it sends up, what it reads down."""

    def __init__(self, relay: Relay):
        self.relay = relay
        self._ups: asyncio.Queue = asyncio.Queue()
        self.reader = asyncio.create_task(relay.read(self._requests()))
        self.downs: list[sender_pb2.RelayDown] = []
        self.writer = asyncio.create_task(self._write())

    async def _requests(self):
        while (up := await self._ups.get()) is not None:
            yield up

    async def _write(self):
        async for down in self.relay.downs():
            self.downs.append(down)

    def open(self, *streams: tuple[int, str]) -> None:
        self._ups.put_nowait(sender_pb2.RelayUp(opens=[sender_pb2.RelayUp.Open(
            stream=stream_id, request=pubsub_pb2.SubscribeRequest(subscription=name, max_outstanding_messages=1))
            for stream_id, name in streams]))

    def close(self, *stream_ids: int) -> None:
        self._ups.put_nowait(sender_pb2.RelayUp(closes=stream_ids))

    def frames(self, stream_id: int) -> list[str]:
        """The ack ids written to the stream, in order."""
        return [pubsub_pb2.ReceivedMessage.FromString(raw).ack_id
                for down in self.downs for frame in down.frames if frame.stream == stream_id
                for raw in frame.received_messages]

    def ends(self) -> dict[int, tuple[grpc.StatusCode, str]]:
        codes = {code.value[0]: code for code in grpc.StatusCode}
        return {end.stream: (codes[end.code], end.details) for down in self.downs for end in down.ends}

    async def hang_up(self) -> None:
        for task in (self.reader, self.writer):
            task.cancel()
        await asyncio.gather(self.reader, self.writer, return_exceptions=True)
        await self.relay.close()


async def lease_one_each(storage, names: list[str]) -> None:
    """Answers the watch under way (of names, perhaps among others): each of names
    ready; then its lease: one message each."""
    await eventually(lambda: storage.pulls and storage.pulls[-1].wait_ms > 0
                     and set(names) <= {s.name for s in storage.pulls[-1].subscriptions}, timeout_s=5)
    ready = storage_pb2.PullResponse()
    for name in names:
        ready.subscriptions.add(name=name, ready=True)
    storage.answer(0, ready)
    await eventually(lambda: storage.pulls[-1].wait_ms == 0)
    leased = storage_pb2.PullResponse()
    for name in names:
        message = received(ack_id(0, 1, name))
        leased.subscriptions.add(name=name, received_messages=[message.SerializeToString()], ack_ids=[message.ack_id])
    storage.answer(0, leased)


async def test_one_message_to_many_streams_on_one_call_is_a_few_relay_messages():
    dispatcher, storage, cluster = make_dispatcher(partitions=1)
    names = [f"sub-{i}" for i in range(200)]
    for name in names:
        cluster.add_subscription(name, TOPIC)
    frontend = Frontend(Relay(dispatcher))
    frontend.open(*((i + 1, name) for i, name in enumerate(names)))
    await eventually(lambda: dispatcher.count_streams(names) == {name: 1 for name in names})  # client streams
    await lease_one_each(storage, names)
    await eventually(lambda: sum(len(down.frames) for down in frontend.downs) == len(names))
    for i, name in enumerate(names):
        assert frontend.frames(i + 1) == [ack_id(0, 1, name)]  # each stream its own message
    assert len(frontend.downs) < 10  # not one gRPC message per stream
    await frontend.hang_up()
    await dispatcher.close()


async def test_a_stream_ends_with_the_status_the_error_map_gives_while_the_others_go_on():
    dispatcher, storage, cluster = make_dispatcher(partitions=1)
    cluster.add_subscription("sub-deleted", TOPIC)
    cluster.add_subscription("sub-kept", TOPIC)
    cluster.owners["sub-elsewhere"] = "sender-2"
    cluster.add_subscription("sub-elsewhere", TOPIC)
    frontend = Frontend(Relay(dispatcher))
    frontend.open((1, "sub-deleted"), (2, "sub-kept"), (3, "sub-elsewhere"), (4, "no such/name"))
    await eventually(lambda: len(frontend.ends()) == 2)
    ends = frontend.ends()
    assert ends[3][0] == grpc.StatusCode.UNAVAILABLE and "sender-2" in ends[3][1]  # not this sender's
    assert ends[4][0] == grpc.StatusCode.INVALID_ARGUMENT

    del cluster.subscriptions.items["sub-deleted"]
    dispatcher.record_changed("sub-deleted")  # etcd said it was deleted
    await eventually(lambda: 1 in frontend.ends())
    assert frontend.ends()[1][0] == grpc.StatusCode.NOT_FOUND
    await lease_one_each(storage, ["sub-kept"])  # the other stream on the call goes on
    await eventually(lambda: frontend.frames(2) == [ack_id(0, 1, "sub-kept")])
    assert 2 not in frontend.ends()
    await frontend.hang_up()
    await dispatcher.close()


async def test_a_stream_ended_after_its_frames_is_told_its_end_after_them():
    dispatcher, storage, cluster = make_dispatcher(partitions=1)
    frontend = Frontend(Relay(dispatcher))
    frontend.writer.cancel()  # the call's writer is slow: frames and the end wait in the outbox
    frontend.open((1, SUB))
    await eventually(lambda: dispatcher.count_streams([SUB]) == {SUB: 1})
    await lease_one_each(storage, [SUB])
    await eventually(lambda: dispatcher.budget.used == 1)
    await dispatcher.close()  # ends the stream without error
    downs = []
    async for down in frontend.relay.downs():
        downs.append(down)
        if down.ends:
            break
    assert [f.stream for d in downs for f in d.frames] == [1]
    assert [(e.stream, e.code) for e in downs[-1].ends] == [(1, 0)]
    await frontend.hang_up()


async def test_a_closed_stream_and_a_call_that_ends_hand_their_messages_back():
    dispatcher, storage, cluster = make_dispatcher(partitions=1)
    cluster.add_subscription("sub-other", TOPIC)
    frontend = Frontend(Relay(dispatcher))
    frontend.open((1, SUB), (2, "sub-other"))
    await eventually(lambda: dispatcher.count_streams([SUB, "sub-other"]) == {SUB: 1, "sub-other": 1})
    await lease_one_each(storage, [SUB, "sub-other"])
    await eventually(lambda: frontend.frames(1) and frontend.frames(2))
    frontend.close(1)  # that client went away
    await eventually(lambda: (TOPIC, 0, MERGED, [ack_id(0, 1)], 0) in storage.deadlines)
    assert dispatcher.count_streams([SUB, "sub-other"]) == {"sub-other": 1}
    await frontend.hang_up()  # the frontend went away
    assert (TOPIC, 0, MERGED, [ack_id(0, 1, "sub-other")], 0) in storage.deadlines
    assert dispatcher.count_streams([SUB, "sub-other"]) == {} and dispatcher.budget.used == 0
    assert dispatcher.subscriptions == {}
    await dispatcher.close()


async def test_a_stream_closed_while_it_opens_is_removed_once_open():
    dispatcher, _, _ = make_dispatcher(partitions=1)
    relay = Relay(dispatcher)

    async def open_then_close():
        yield sender_pb2.RelayUp(opens=[sender_pb2.RelayUp.Open(
            stream=1, request=pubsub_pb2.SubscribeRequest(subscription=SUB))])
        yield sender_pb2.RelayUp(closes=[1])
    await relay.read(open_then_close())
    await eventually(lambda: not relay._tasks)
    assert dispatcher.count_streams([SUB]) == {} and dispatcher.subscriptions == {}
    await relay.close()
    await dispatcher.close()


async def test_a_stream_id_opened_twice_ends_the_open_stream_too():
    """The frontend has one stream of an id: the end it reads for the second open
    ends that one, so the sender must not go on serving it."""
    dispatcher, storage, cluster = make_dispatcher(partitions=1)
    frontend = Frontend(Relay(dispatcher))
    frontend.open((1, SUB))
    await eventually(lambda: dispatcher.count_streams([SUB]) == {SUB: 1})
    await lease_one_each(storage, [SUB])
    await eventually(lambda: frontend.frames(1))
    frontend.open((1, SUB))
    await eventually(lambda: 1 in frontend.ends())
    assert frontend.ends()[1][0] == grpc.StatusCode.INVALID_ARGUMENT
    await eventually(lambda: dispatcher.count_streams([SUB]) == {})
    assert (TOPIC, 0, MERGED, [ack_id(0, 1)], 0) in storage.deadlines  # its leased message handed back
    await frontend.hang_up()
    await dispatcher.close()
