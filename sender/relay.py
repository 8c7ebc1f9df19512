"""One frontend's Relay call: every client stream that frontend relays to this
sender, as logical streams on the one call (sender.proto, Sender.Relay).

A logical stream is what a Sender.Subscribe call per client stream was: a
subscriber's Stream in the Dispatcher, with its ownership check, its window
(max_outstanding) and its trace_context. What is handed to it goes into this
call's outbox instead of a queue of its own, and the call writes the outbox as
few RelayDown messages as it can, so one message to N streams is not N gRPC
messages.

Bounds: the outbox holds, per stream, only what the Dispatcher handed it and
this call has not written yet: at most its window, and over all streams at most
the sender's budget (config.sender_max_outstanding). Opens and closes under way
are at most one of each per logical stream.
"""

import asyncio
from typing import AsyncIterator

import grpc

from gen.notifymesh.internal.v1 import sender_pb2
from gen.notifymesh.v1 import pubsub_pb2
from notifymesh.server import validation
from notifymesh.server.status import answered
from sender.dispatch import END, Dispatcher, Stream, SubscriptionDispatcher

# Bytes of messages in one RelayDown; more go in the next one (the channel's limit
# is config.max_message_bytes, 1 MiB by default).
DOWN_BYTES = 256 * 1024


class RelayedStream(Stream):
    """A client's Subscribe stream, relayed by a frontend on a Relay call."""

    def __init__(self, relay: "Relay", stream_id: int, request: pubsub_pb2.SubscribeRequest):
        super().__init__(request.max_outstanding_messages, queue=None, subscriber=True,
                         trace_context=request.trace_context)
        self.relay, self.id, self.name = relay, stream_id, request.subscription
        self.dispatcher: SubscriptionDispatcher | None = None  # once connected

    def put(self, item) -> None:
        self.relay.deliver(self, item)


class Relay:
    """The logical streams of one Relay call, and its outbox."""

    def __init__(self, dispatcher: Dispatcher):
        self._dispatcher = dispatcher
        self._streams: dict[int, RelayedStream] = {}  # open (or opening) on this call
        self._frames: dict[int, list[bytes]] = {}  # stream id -> messages not written yet (its window at most)
        self._ends: dict[int, tuple[int, str]] = {}  # stream id -> its status, to write after its frames
        self._ready = asyncio.Event()
        self._tasks: set[asyncio.Task] = set()  # opens and disconnects under way
        self._done = False

    # -- up: what the frontend asks ----------------------------------------------

    async def read(self, requests: AsyncIterator[sender_pb2.RelayUp]) -> None:
        """Opens and closes logical streams as the frontend asks, until it half-closes."""
        async for up in requests:
            for opened in up.opens:
                if (open_already := self._streams.pop(opened.stream, None)) is not None:
                    # The frontend takes the end for both (it has one stream of that id),
                    # so the open one is closed here too: its leased messages go back.
                    self._frames.pop(opened.stream, None)
                    self._spawn(self._disconnect(open_already))
                    self._end(opened.stream, grpc.StatusCode.INVALID_ARGUMENT,
                              f"stream id {opened.stream} opened twice on one Relay call")
                    continue
                stream = self._streams[opened.stream] = RelayedStream(self, opened.stream, opened.request)
                self._spawn(self._open(stream))
            for stream_id in up.closes:
                if (stream := self._streams.pop(stream_id, None)) is not None:
                    self._frames.pop(stream_id, None)
                    self._spawn(self._disconnect(stream))

    async def _open(self, stream: RelayedStream) -> None:
        try:
            validation.name("subscription", stream.name)
            dispatcher = await self._dispatcher.connect(stream.name, stream)
        except Exception as e:
            if self._streams.get(stream.id) is stream:
                del self._streams[stream.id]
                self._end_with(stream.id, e)
            return
        stream.dispatcher = dispatcher
        if self._streams.get(stream.id) is not stream:  # closed while it opened
            await self._dispatcher.disconnect(stream.name, dispatcher, stream)

    async def _disconnect(self, stream: RelayedStream) -> None:
        if stream.dispatcher is not None:  # else its open is under way and disconnects it
            await self._dispatcher.disconnect(stream.name, stream.dispatcher, stream)

    def _spawn(self, coroutine) -> None:
        task = asyncio.create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- down: what the Dispatcher hands out -------------------------------------

    def deliver(self, stream: RelayedStream, item) -> None:
        """RelayedStream.put: a batch of messages, END, or the error it ends with."""
        if self._streams.get(stream.id) is not stream:
            return  # closed: its unacked messages are handed back by its disconnect
        if isinstance(item, list):
            self._frames.setdefault(stream.id, []).extend(item)
        else:
            del self._streams[stream.id]
            self._spawn(self._disconnect(stream))
            if item is END:
                self._end(stream.id, grpc.StatusCode.OK, "")
            else:
                self._end_with(stream.id, item)
        self._ready.set()

    def _end_with(self, stream_id: int, error: BaseException) -> None:
        self._end(stream_id, *answered(error, "Sender.Relay"))

    def _end(self, stream_id: int, code: grpc.StatusCode, details: str) -> None:
        self._ends[stream_id] = (code.value[0], details)
        self._ready.set()

    async def downs(self) -> AsyncIterator[sender_pb2.RelayDown]:
        """What to write to the call, as it comes, until close()."""
        while not self._done:
            await self._ready.wait()
            self._ready.clear()
            while self._frames or self._ends:
                yield self._take()

    def _take(self) -> sender_pb2.RelayDown:
        """Up to DOWN_BYTES of the outbox (at least one message), then the ends of
        the streams with no frame left."""
        down = sender_pb2.RelayDown()
        size = 0
        for stream_id in list(self._frames):
            messages = self._frames[stream_id]
            count = 0
            while count < len(messages) and (size == 0 or size + len(messages[count]) <= DOWN_BYTES):
                size += len(messages[count])
                count += 1
            if count:
                down.frames.add(stream=stream_id, received_messages=messages[:count])
            if count == len(messages):
                del self._frames[stream_id]
            else:
                del messages[:count]
                break
        for stream_id in [s for s in self._ends if s not in self._frames]:
            code, details = self._ends.pop(stream_id)
            down.ends.add(stream=stream_id, code=code, details=details)
        return down

    def stop(self) -> None:
        """Ends downs(): the frontend half-closed the call."""
        self._done = True
        self._ready.set()

    async def close(self) -> None:
        """The call ended: every stream on it goes, its unacked messages handed back."""
        self.stop()
        for task in list(self._tasks):  # opens finish first, so their streams are removed below
            await asyncio.gather(task, return_exceptions=True)
        streams, self._streams = list(self._streams.values()), {}
        self._frames.clear()
        await asyncio.gather(*(self._disconnect(s) for s in streams), return_exceptions=True)
