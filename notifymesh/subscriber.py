"""A streaming subscriber with flow control and batched acks (asyncio).

    async with Client(addr) as client, Subscriber(client, "orders-audit") as subscriber:
        async for delivery in subscriber:
            handle(delivery.data)
            delivery.ack()

or `await subscriber.run(callback)`. A delivery is outstanding from its arrival
until ack() or nack(): the server sends at most max_outstanding_messages
outstanding ones to this stream, and the subscriber stops reading the stream
while max_outstanding_bytes are outstanding. Acks and nacks issued within
ack_latency_s go out as one call. A broken stream is opened again; what it had
delivered and was not acknowledged comes back after the ack deadline.
"""

import asyncio
import inspect
import logging
from collections import defaultdict
from typing import Awaitable, Callable

from gen.notifymesh.v1 import pubsub_pb2
from notifymesh.client import Client
from notifymesh.log import fields

log = logging.getLogger(__name__)

MAX_ACK_IDS_PER_CALL = 1000  # the server's default max_batch_messages
_END = object()  # queued when the stream ends or the subscriber closes


class Delivery:
    """One delivery of a message; ack() or nack() it exactly once (a second call is ignored)."""

    __slots__ = ("received", "size", "_subscriber", "_settled")

    def __init__(self, received: pubsub_pb2.ReceivedMessage, subscriber: "Subscriber"):
        self.received = received
        self.size = received.ByteSize()
        self._subscriber = subscriber
        self._settled = False

    @property
    def message(self) -> pubsub_pb2.PubsubMessage:
        return self.received.message

    @property
    def data(self) -> bytes:
        return self.received.message.data

    @property
    def attributes(self) -> dict[str, str]:
        return dict(self.received.message.attributes)

    @property
    def message_id(self) -> str:
        return self.received.message.message_id

    @property
    def delivery_attempt(self) -> int:
        return self.received.delivery_attempt

    @property
    def ack_id(self) -> str:
        return self.received.ack_id

    def ack(self) -> None:
        """The message is done with; it is not delivered to this subscription again."""
        if not self._settled:
            self._settled = True
            self._subscriber._settle(self, nacked=False)

    def nack(self, delay_s: float | None = None) -> None:
        """Asks for the message again after delay_s; by default after the
        subscription's retry backoff (at once without a retry policy)."""
        if not self._settled:
            self._settled = True
            self._subscriber._settle(self, nacked=True, delay_s=delay_s)


class Subscriber:
    def __init__(self, client: Client, subscription: str, max_outstanding_messages: int = 1000,
                 max_outstanding_bytes: int = 100 * 1024 * 1024, ack_latency_s: float = 0.005,
                 reconnect: bool = True):
        if max_outstanding_messages < 1 or max_outstanding_bytes < 1 or ack_latency_s < 0:
            raise ValueError("max_outstanding_messages and _bytes must be positive, ack_latency_s not negative")
        self.subscription = subscription
        self.max_outstanding_messages, self.max_outstanding_bytes = max_outstanding_messages, max_outstanding_bytes
        self.ack_latency_s = ack_latency_s
        self.reconnect = reconnect
        self.outstanding_messages = 0  # delivered here, neither acked nor nacked
        self.outstanding_bytes = 0
        self.ack_errors = 0  # acks or nacks the server did not take: those messages come again
        self._client = client
        self._queue: asyncio.Queue = asyncio.Queue()
        self._room = asyncio.Event()
        self._room.set()
        self._reader: asyncio.Task | None = None
        self._callbacks: set[asyncio.Task] = set()
        self._acks: list[str] = []
        self._nacks: dict[float | None, list[str]] = defaultdict(list)  # delay -> ack ids
        self._ack_timer: asyncio.TimerHandle | None = None
        self._ack_calls: set[asyncio.Task] = set()
        self._closed = False

    async def __aenter__(self) -> "Subscriber":
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()

    def __aiter__(self) -> "Subscriber":
        if self._reader is None and not self._closed:
            self._reader = asyncio.create_task(self._read())
        return self

    async def __anext__(self) -> Delivery:
        item = await self._queue.get()
        if item is _END:
            self._queue.put_nowait(_END)  # for any other consumer
            raise StopAsyncIteration
        if isinstance(item, BaseException):
            self._queue.put_nowait(_END)
            raise item
        return item

    async def run(self, callback: Callable[[Delivery], Awaitable[None] | None]) -> None:
        """Calls callback(delivery) for each delivery until close() or a stream error
        (raised here). An async callback runs as a task, so up to
        max_outstanding_messages run at once. A callback that raises nacks its
        delivery (redelivered after the retry backoff); one that returns leaves it
        as it is (ack or nack it there)."""
        async for delivery in self:
            try:
                result = callback(delivery)
            except Exception:
                log.exception("subscriber callback failed; nacking", extra=fields(message_id=delivery.message_id))
                delivery.nack()
                continue
            if inspect.isawaitable(result):
                task = asyncio.create_task(self._await_callback(result, delivery))
                self._callbacks.add(task)
                task.add_done_callback(self._callbacks.discard)

    async def close(self) -> None:
        """Stops receiving, nacks what arrived but was not handed out (it comes again
        at once, possibly to another subscriber), waits for running callbacks, and
        sends the acks and nacks issued so far."""
        if self._closed:
            return
        self._closed = True
        if self._reader is not None:
            self._reader.cancel()
            await asyncio.gather(self._reader, return_exceptions=True)
        while not self._queue.empty():
            item = self._queue.get_nowait()
            if isinstance(item, Delivery):
                item.nack(delay_s=0)
        self._queue.put_nowait(_END)
        if self._callbacks:
            await asyncio.wait(list(self._callbacks))
        self._send_acks()
        if self._ack_calls:
            await asyncio.wait(list(self._ack_calls))

    async def _await_callback(self, result: Awaitable, delivery: Delivery) -> None:
        try:
            await result
        except Exception:
            log.exception("subscriber callback failed; nacking", extra=fields(message_id=delivery.message_id))
            delivery.nack()

    # -- receiving --------------------------------------------------------------------

    async def _read(self) -> None:
        try:
            async for frame in self._client.subscribe_frames(self.subscription, self.max_outstanding_messages,
                                                             reconnect=self.reconnect):
                for received in frame:
                    delivery = Delivery(received, self)
                    self.outstanding_messages += 1
                    self.outstanding_bytes += delivery.size
                    self._queue.put_nowait(delivery)
                if self.outstanding_bytes >= self.max_outstanding_bytes:
                    self._room.clear()
                    await self._room.wait()  # read no further frame: gRPC's flow control holds the rest back
            self._queue.put_nowait(_END)
        except asyncio.CancelledError:
            raise
        except Exception as e:  # the stream failed for good: the consumer sees why
            self._queue.put_nowait(e)

    # -- acks ----------------------------------------------------------------------------

    def _settle(self, delivery: Delivery, nacked: bool, delay_s: float | None = None) -> None:
        self.outstanding_messages -= 1
        self.outstanding_bytes -= delivery.size
        if self.outstanding_bytes < self.max_outstanding_bytes:
            self._room.set()
        if nacked:
            self._nacks[delay_s].append(delivery.ack_id)
            pending = len(self._nacks[delay_s])
        else:
            self._acks.append(delivery.ack_id)
            pending = len(self._acks)
        if pending >= MAX_ACK_IDS_PER_CALL:
            self._send_acks()
        elif self._ack_timer is None:
            self._ack_timer = asyncio.get_running_loop().call_later(self.ack_latency_s, self._send_acks)

    def _send_acks(self) -> None:
        """Starts one call for the acks and one per nack delay issued since the last."""
        if self._ack_timer is not None:
            self._ack_timer.cancel()
            self._ack_timer = None
        calls = []
        if self._acks:
            calls.append(self._client.acknowledge(self.subscription, self._acks))
            self._acks = []
        for delay_s, ack_ids in self._nacks.items():
            calls.append(self._client.nack(self.subscription, ack_ids, delay_s))
        self._nacks.clear()
        for call in calls:
            task = asyncio.create_task(self._ack_call(call))
            self._ack_calls.add(task)
            task.add_done_callback(self._ack_calls.discard)

    async def _ack_call(self, call: Awaitable[None]) -> None:
        try:
            await call
        except Exception as e:  # at least once: the message comes back after its ack deadline
            self.ack_errors += 1
            log.warning("ack or nack failed: %r", e)
