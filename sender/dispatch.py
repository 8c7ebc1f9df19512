"""Dispatch of one sender: pulls each subscription's messages from storage and
spreads them over the subscriber streams connected to it.

Concurrency is bounded three ways: per stream (max outstanding messages, the
subscriber's flow control), per sender (config.sender_max_outstanding over all
subscriptions) and in storage pulls (a semaphore). A dispatcher pulls only as
many messages as its streams have room for, so nothing piles up in memory:
what no stream can take stays in storage.
"""

import asyncio
import collections
import itertools
import logging
import time

import grpc
from dataclasses import dataclass, field
from typing import Callable

from gen.notifymesh.v1 import pubsub_pb2
from notifymesh import errors
from notifymesh.batching import Coalescer
from notifymesh.cluster import Cluster
from notifymesh.config import Config
from notifymesh.log import fields
from storage import keys
from storage.client import StorageClient

log = logging.getLogger(__name__)

PULL_MAX_MESSAGES = 1000
PULL_WAIT_MS = 1000
_END = "end"  # queued to a stream to end it; an exception queued ends it with that error


@dataclass(eq=False)
class Stream:
    """One subscriber's Subscribe stream."""
    max_outstanding: int
    outstanding: set[str] = field(default_factory=set)
    queue: asyncio.Queue = field(default_factory=asyncio.Queue)

    def room(self) -> int:
        return self.max_outstanding - len(self.outstanding)

    async def frames(self):
        """Yields SubscribeResponses; batches queued meanwhile go out as one frame."""
        while True:
            item = await self.queue.get()
            batch = []
            while isinstance(item, list):
                batch.extend(item)
                item = self.queue.get_nowait() if not self.queue.empty() else None
            if batch:
                yield pubsub_pb2.SubscribeResponse(received_messages=batch)
            if item is _END:
                return
            if isinstance(item, Exception):
                raise item


class Budget:
    """The sender-wide cap on delivered, unacknowledged messages."""

    def __init__(self, limit: int):
        self.limit, self.used = limit, 0
        self.freed = asyncio.Event()

    def available(self) -> int:
        return self.limit - self.used

    def take(self, n: int) -> None:
        self.used += n

    def give_back(self, n: int) -> None:
        if n:
            self.used -= n
            self.freed.set()


class SubscriptionDispatcher:
    def __init__(self, subscription: pubsub_pb2.Subscription, partitions: Callable[[], int], storage: StorageClient,
                 budget: Budget, pulls: asyncio.Semaphore, acks: Coalescer, owned: Callable[[], bool]):
        self.name, self.topic, self._partitions, self._owned = subscription.name, subscription.topic, partitions, owned
        self.ack_deadline_ms = subscription.ack_deadline.ToMilliseconds()
        self._storage, self._budget, self._pulls, self._acks = storage, budget, pulls, acks
        self.streams: list[Stream] = []
        # ack id -> (stream, monotonic deadline); and the same in delivery order for expiry.
        self._in_flight: dict[str, tuple[Stream, float]] = {}
        self._expiry: collections.deque[tuple[float, str]] = collections.deque()
        self._wake = asyncio.Event()
        # One pull loop per partition; room being pulled for is reserved meanwhile.
        self._tasks: dict[int, asyncio.Task] = {}
        self._reserved = 0
        self._turn = itertools.count()

    def add(self, stream: Stream) -> None:
        self.streams.append(stream)
        self._wake.set()
        self._ensure_pullers()

    def idle(self) -> bool:
        return not self.streams and not self._in_flight

    def _ensure_pullers(self) -> None:
        for partition in range(self._partitions()):
            task = self._tasks.get(partition)
            if task is None or task.done():
                self._tasks[partition] = asyncio.create_task(self._run(partition))

    async def _per_partition(self, ack_ids, call) -> None:
        by_partition: dict[int, list[str]] = {}
        for ack_id in ack_ids:
            by_partition.setdefault(keys.parse_ack_id(ack_id)[0], []).append(ack_id)
        await asyncio.gather(*(call(partition, ids) for partition, ids in by_partition.items()))

    async def _nack(self, ack_ids: list[str]) -> None:
        await self._per_partition(ack_ids, lambda p, ids: self._storage.modify_ack_deadline(
            self.topic, p, self.name, ids, 0))

    async def remove(self, stream: Stream) -> None:
        """Hands the stream's unacknowledged messages back to storage for immediate
        redelivery to another subscriber."""
        if stream in self.streams:
            self.streams.remove(stream)
        unacked = [a for a in stream.outstanding if self._in_flight.get(a, (None,))[0] is stream]
        self._forget(unacked)
        stream.outstanding.clear()
        if unacked:
            try:
                await self._nack(unacked)
            except Exception as e:  # they come back after their ack deadline instead
                log.warning("nack on disconnect failed", extra=fields(subscription=self.name, error=repr(e)))
        self._wake.set()

    def _forget(self, ack_ids) -> int:
        forgotten = 0
        for ack_id in ack_ids:
            entry = self._in_flight.pop(ack_id, None)
            if entry is not None:
                entry[0].outstanding.discard(ack_id)
                forgotten += 1
        self._budget.give_back(forgotten)
        if forgotten:
            self._wake.set()
        return forgotten

    async def acknowledge(self, ack_ids: list[str]) -> None:
        self._forget(ack_ids)
        await self._per_partition(ack_ids, lambda p, ids: self._acks.submit((self.topic, p, self.name), ids))

    async def modify_ack_deadline(self, ack_ids: list[str], ack_deadline_ms: int) -> None:
        if ack_deadline_ms == 0:
            self._forget(ack_ids)
        else:
            until = time.monotonic() + ack_deadline_ms / 1000
            for ack_id in ack_ids:
                if (entry := self._in_flight.get(ack_id)) is not None:
                    self._in_flight[ack_id] = (entry[0], until)
                    self._expiry.append((until, ack_id))
        await self._per_partition(ack_ids, lambda p, ids: self._storage.modify_ack_deadline(
            self.topic, p, self.name, ids, ack_deadline_ms))

    async def nack(self, request: pubsub_pb2.NackRequest) -> None:
        self._forget(request.ack_ids)
        await self._per_partition(request.ack_ids, lambda p, ids: self._storage.nack(self.topic, p, request, ids))

    def _expire(self) -> None:
        """Frees the room of messages past their ack deadline: storage redelivers them."""
        now = time.monotonic()
        while self._expiry and self._expiry[0][0] <= now:
            until, ack_id = self._expiry.popleft()
            entry = self._in_flight.get(ack_id)
            if entry is not None and entry[1] == until:
                self._forget([ack_id])

    async def _run(self, partition: int) -> None:
        while self.streams:
            if not self._owned():  # checked before every pull: the fence
                self.end_streams(errors.Unavailable(f"this sender no longer serves subscription {self.name!r}"))
                return
            self._expire()
            self._ensure_pullers()  # the topic may have gained partitions
            free = min(sum(max(0, s.room()) for s in self.streams), self._budget.available()) - self._reserved
            # A fair share, so one partition's long poll never holds all the room.
            room = min(free, max(1, free // max(1, len(self._tasks))), PULL_MAX_MESSAGES)
            if room <= 0:
                self._wake.clear()
                timeout = self._expiry[0][0] - time.monotonic() if self._expiry else None
                waits = [asyncio.ensure_future(self._wake.wait()), asyncio.ensure_future(self._budget.freed.wait())]
                await asyncio.wait(waits, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
                for w in waits:
                    w.cancel()
                self._budget.freed.clear()
                continue
            self._reserved += room
            try:
                async with self._pulls:
                    received = await self._storage.pull(self.topic, partition, self.name, room,
                                                        self.ack_deadline_ms, PULL_WAIT_MS)
            except asyncio.CancelledError:
                raise
            except Exception as e:
                status = errors.status_of(e)
                if status and status[0] == grpc.StatusCode.NOT_FOUND:  # storage checked etcd: it is gone
                    self.end_streams(errors.NotFound(status[1]))
                    return
                log.warning("pull failed", extra=fields(subscription=self.name, partition=partition,
                                                        error=status or repr(e)))
                await asyncio.sleep(0.5)
                continue
            finally:
                self._reserved -= room
                self._wake.set()  # the room is free again for the other partitions
            if received:
                await self._hand_out(received)

    async def _hand_out(self, received: list[pubsub_pb2.ReceivedMessage]) -> None:
        """Splits the batch over the streams with room, starting at a rotating one so
        competing subscribers share the load."""
        until = time.monotonic() + self.ack_deadline_ms / 1000
        streams = list(self.streams)
        start = next(self._turn) % len(streams) if streams else 0
        position = 0
        for stream in streams[start:] + streams[:start]:
            take = min(stream.room(), len(received) - position)
            if take <= 0:
                continue
            batch = received[position:position + take]
            position += take
            for message in batch:
                if message.ack_id in self._in_flight:  # redelivered while we still counted it
                    self._forget([message.ack_id])
                self._in_flight[message.ack_id] = (stream, until)
                self._expiry.append((until, message.ack_id))
                stream.outstanding.add(message.ack_id)
            self._budget.take(len(batch))
            stream.queue.put_nowait(batch)
        if position < len(received):  # the streams went away meanwhile
            await self._nack([m.ack_id for m in received[position:]])

    def end_streams(self, reason: Exception | None) -> None:
        for stream in self.streams:
            stream.queue.put_nowait(reason or _END)

    async def close(self) -> None:
        """Ends every stream and hands unacknowledged messages back."""
        self.end_streams(None)
        for stream in list(self.streams):
            await self.remove(stream)
        for task in self._tasks.values():
            task.cancel()
        await asyncio.gather(*self._tasks.values(), return_exceptions=True)


class Dispatcher:
    """All subscriptions this sender serves."""

    def __init__(self, cluster: Cluster, config: Config, node_id: str, registration_of: Callable):
        """registration_of(): this sender's Registration, whose lease fences it."""
        self._cluster, self._config, self._node = cluster, config, node_id
        self._registration_of = registration_of
        self._storage = StorageClient(cluster)
        self._budget = Budget(config.sender_max_outstanding)
        self._pulls = asyncio.Semaphore(config.sender_max_concurrent_pulls)
        # Concurrent acks of one subscription share one storage call.
        self._acks = Coalescer(lambda key, ack_ids: self._storage.acknowledge(*key, ack_ids), max_items=5000)
        self.subscriptions: dict[str, SubscriptionDispatcher] = {}
        self._closing = False

    def _partition_count(self, topic: str) -> int:
        record = self._cluster.topics.items.get(topic)
        return max(1, record.partition_count) if record else 1

    async def _dispatcher(self, name: str) -> SubscriptionDispatcher:
        record = await self._cluster.subscription(name)
        dispatcher = self.subscriptions.get(name)
        if dispatcher is None or dispatcher.topic != record.topic:
            dispatcher = self.subscriptions[name] = SubscriptionDispatcher(
                record, lambda: self._partition_count(record.topic), self._storage, self._budget, self._pulls,
                self._acks, lambda: self.owns(name))
        return dispatcher

    async def subscribe(self, name: str, max_outstanding: int):
        """Yields SubscribeResponse frames for one new subscriber until it goes away."""
        if self._closing:
            raise errors.Unavailable("sender is shutting down")
        if max_outstanding < 0:
            raise errors.InvalidArgument("max_outstanding_messages must not be negative")
        self._check_owner(name)
        dispatcher = await self._dispatcher(name)
        stream = Stream(max_outstanding or self._config.stream_max_outstanding)
        dispatcher.add(stream)
        log.info("subscriber connected", extra=fields(subscription=name, streams=len(dispatcher.streams)))
        try:
            async for frame in stream.frames():
                yield frame
        finally:
            await dispatcher.remove(stream)
            log.info("subscriber gone", extra=fields(subscription=name, streams=len(dispatcher.streams)))
            if dispatcher.idle() and self.subscriptions.get(name) is dispatcher:
                del self.subscriptions[name]  # nothing connected, nothing in flight: keep no state

    def owns(self, name: str) -> bool:
        """A subscription is served only by its owner on the sender ring, and only
        while that sender's lease is certainly alive: another sender takes it over
        only once etcd has expired the lease, after this sender stopped."""
        registration = self._registration_of()
        return (registration is not None and time.monotonic() < registration.valid_until
                and self._cluster.rings["sender"].owner(name) == self._node)

    def _check_owner(self, name: str) -> None:
        if not self.owns(name):
            owner = self._cluster.rings["sender"].owner(name)
            raise errors.Unavailable(f"subscription {name!r} is served by {owner or 'no sender'}, not {self._node}")

    def release_unowned(self) -> None:
        """After a ring change: ends the streams of subscriptions this sender no longer
        owns; their frontends reconnect them to the new owner."""
        for name, dispatcher in self.subscriptions.items():
            if dispatcher.streams and not self.owns(name):
                dispatcher.end_streams(errors.Unavailable(f"subscription {name!r} moved from {self._node}"))

    async def attach(self, name: str, stream: Stream) -> SubscriptionDispatcher:
        """Adds a consumer inside the sender (a push worker) to the subscription."""
        dispatcher = await self._dispatcher(name)
        dispatcher.add(stream)
        return dispatcher

    async def acknowledge(self, name: str, ack_ids: list[str]) -> None:
        await (await self._dispatcher(name)).acknowledge(ack_ids)

    async def modify_ack_deadline(self, name: str, ack_ids: list[str], ack_deadline_ms: int) -> None:
        await (await self._dispatcher(name)).modify_ack_deadline(ack_ids, ack_deadline_ms)

    async def nack(self, request: pubsub_pb2.NackRequest) -> None:
        await (await self._dispatcher(request.subscription)).nack(request)

    async def close(self) -> None:
        self._closing = True
        await asyncio.gather(*(d.close() for d in self.subscriptions.values()), return_exceptions=True)
