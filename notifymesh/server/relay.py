"""The frontend's side of Sender.Relay: one call per sender address carries every
client stream this frontend relays to that sender, each a logical stream on it
(sender.proto; the sender's side is sender/relay.py).

A gRPC call costs about 22 KB in the server and 29 KB in the client
(bench/grpc_stream_memory.py); one per client stream made the frontend hold
about 51 KB per subscriber. Now a client stream costs the frontend its own call
and a RelayedFrames here.

Bounds: a call's reader takes every RelayDown as it comes, into the queue of
each logical stream, so one slow client does not hold back the others on the
call. A stream's queue holds at most its window (the max_outstanding the sender
keeps to): the sender sends no more than that unacknowledged, and what it sends
beyond (room freed by messages whose ack deadline passed while they waited here)
is dropped, delivered again by storage after its deadline like any message not
acknowledged. Opens and closes waiting to go up: at most one of each per stream.
"""

import asyncio
import itertools
import logging
from typing import AsyncIterator, Callable

import grpc

from gen.notifymesh.internal.v1 import sender_pb2
from gen.notifymesh.v1 import pubsub_pb2
from notifymesh import errors
from notifymesh.log import fields

log = logging.getLogger(__name__)

OpenCall = Callable[[AsyncIterator[sender_pb2.RelayUp]], grpc.aio.StreamStreamCall]
_ENDED = "ended"  # queued: the sender ended the stream without error


class RelayedFrames:
    """One client stream on a RelayCall: its frames (serialized SubscribeResponses),
    until the sender ends it or the call breaks (raising as the sender's error map
    said, or as the call failed). cancel(): the client went away."""

    __slots__ = ("_call", "id", "_window", "_items", "_queued", "_waiter", "_done")

    def __init__(self, call: "RelayCall", stream_id: int, window: int):
        self._call, self.id, self._window = call, stream_id, window
        self._items: list = []  # lists of messages, then perhaps _ENDED or the error
        self._queued = 0  # messages in _items: at most _window
        self._waiter: asyncio.Future | None = None
        self._done = False

    def put(self, messages) -> None:
        room = self._window - self._queued
        if len(messages) > room:
            log.info("relayed messages over the stream's window dropped; storage delivers them again",
                     extra=fields(dropped=len(messages) - max(room, 0)))
            messages = messages[:max(room, 0)]
        if messages:
            self._queued += len(messages)
            self._push(messages)

    def end(self, outcome) -> None:
        """_ENDED or the error to raise."""
        if not self._done:
            self._done = True
            self._push(outcome)

    def _push(self, item) -> None:
        self._items.append(item)
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def cancel(self) -> None:
        self._call.close_stream(self.id)
        self.end(errors.Cancelled("relayed stream cancelled"))

    async def __aiter__(self):
        try:
            while True:
                while not self._items:
                    self._waiter = asyncio.get_running_loop().create_future()
                    await self._waiter
                    self._waiter = None
                items, self._items = self._items, []
                batch = [m for item in items if isinstance(item, list) for m in item]
                self._queued -= len(batch)
                if batch:
                    yield sender_pb2.SubscribeFrame(received_messages=batch).SerializeToString()
                if not isinstance(items[-1], list):
                    if items[-1] is _ENDED:
                        return
                    raise items[-1]
        finally:
            self._call.close_stream(self.id)  # the client went away: no-op if the stream ended


class RelayCall:
    """One Relay call to one sender and the logical streams on it."""

    def __init__(self, open_call: OpenCall):
        self._streams: dict[int, RelayedFrames] = {}
        self._ids = itertools.count(1)
        self._opens: list[sender_pb2.RelayUp.Open] = []
        self._closes: list[int] = []
        self._wake = asyncio.Event()
        self.broken = False
        self._call = open_call(self._ups())
        self._reader = asyncio.create_task(self._read())

    def open(self, request: pubsub_pb2.SubscribeRequest, window: int) -> RelayedFrames:
        stream = RelayedFrames(self, next(self._ids), window)
        self._streams[stream.id] = stream
        self._opens.append(sender_pb2.RelayUp.Open(stream=stream.id, request=request))
        self._wake.set()
        return stream

    def close_stream(self, stream_id: int) -> None:
        if self._streams.pop(stream_id, None) is not None and not self.broken:
            self._closes.append(stream_id)
            self._wake.set()

    def cancel(self) -> None:
        self._call.cancel()

    async def _ups(self) -> AsyncIterator[sender_pb2.RelayUp]:
        while not self.broken:
            await self._wake.wait()
            self._wake.clear()
            if self._opens or self._closes:
                up = sender_pb2.RelayUp(opens=self._opens, closes=self._closes)
                self._opens, self._closes = [], []
                yield up

    async def _read(self) -> None:
        error: errors.NotifymeshError = errors.Unavailable("the sender ended the relay call")
        try:
            async for down in self._call:
                streams = self._streams
                for frame in down.frames:
                    if (stream := streams.get(frame.stream)) is not None:
                        stream.put(list(frame.received_messages))
                for end in down.ends:
                    if (stream := streams.pop(end.stream, None)) is not None:
                        stream.end(_ENDED if end.code == 0 else errors.of_status(end.code, end.details))
        except asyncio.CancelledError:
            error = errors.Cancelled("relay call cancelled")
        except grpc.aio.AioRpcError as e:
            error = errors.from_rpc_error(e)
        finally:
            self.broken = True
            self._wake.set()
            streams, self._streams = list(self._streams.values()), {}
            if streams:
                log.info("relay call to the sender ended", extra=fields(streams=len(streams), error=str(error)))
            for stream in streams:  # each its own error: one raised in many tasks would grow its traceback
                stream.end(errors.of_status(error.code.value[0], error.details))


class SenderRelays:
    """This frontend's Relay call to each sender address: opened on first use, and
    again after it broke. Bound: one per sender address."""

    def __init__(self, open_call: Callable[[str], OpenCall], stream_max_outstanding: int):
        """open_call(addr)(ups): the call; stream_max_outstanding: the window of a
        stream that asked for none (config.stream_max_outstanding, as the sender has it)."""
        self._open_call, self._default_window = open_call, stream_max_outstanding
        self._calls: dict[str, RelayCall] = {}

    def subscribe(self, addr: str, request: pubsub_pb2.SubscribeRequest) -> RelayedFrames:
        call = self._calls.get(addr)
        if call is None or call.broken:
            for gone in [a for a, c in self._calls.items() if c.broken]:  # a sender's old address
                del self._calls[gone]
            call = self._calls[addr] = RelayCall(self._open_call(addr))
        return call.open(request, request.max_outstanding_messages or self._default_window)
