"""Dispatch of one sender: pulls the messages of the subscriptions it serves from
storage and spreads them over the subscriber streams connected to it.

One long poll per shard (topic partition) serves every subscription of that
topic the sender has room for, so the number of storage calls does not grow with
the number of subscriptions. Concurrency is bounded per stream (max outstanding
messages, the subscriber's flow control) and per sender
(config.sender_max_outstanding over all subscriptions): a pull asks for no more
than that room, so nothing piles up in memory and what no stream can take stays
in storage. Messages pass through as storage serialized them.
"""

import asyncio
import heapq
import itertools
import logging
import time
from dataclasses import dataclass, field
from typing import Callable, Protocol

from gen.notifymesh.internal.v1 import sender_pb2, storage_pb2
from gen.notifymesh.v1 import pubsub_pb2
from notifymesh import errors
from notifymesh.batching import Coalescer
from notifymesh.contracts import ack_ids_by_pair, ack_ids_by_partition
from notifymesh.log import fields
from notifymesh.server import rpc, telemetry, tracing
from notifymesh.server.clients import StorageClient
from notifymesh.server.cluster import Cluster
from notifymesh.server.config import Config
from sender.puller import ShardPuller
from sender.unary_pull import UnaryPull

log = logging.getLogger(__name__)
DELIVERED = telemetry.counter(
    "notifymesh.stream.delivered", unit="{message}",
    description="messages handed to subscriber streams (a redelivery counts again), by subscription")

# The expiry heap holds one live entry per message in flight plus stale ones (acked,
# or superseded by a deadline change) until they surface; past 2 x live + this, it is
# rebuilt from the live ones: O(live) once per as many pushes, so O(1) amortized.
EXPIRY_SLACK = 64
MAX_TRACED = 10_000  # traced deliveries awaiting their answer's span, per subscription
END = "end"  # queued to a stream to end it; an exception queued ends it with that error


class DispatchStorage(Protocol):
    """What dispatch asks of storage (notifymesh.server.clients.StorageClient)."""

    def pull_stream(self) -> rpc.LockstepStream: ...

    async def pull(self, stream: rpc.LockstepStream, request: storage_pb2.PullRequest) -> storage_pb2.PullResponse: ...

    async def acknowledge(self, topic: str, partition: int, subscription: str, ack_ids: list[str]) -> None: ...

    async def modify_ack_deadline(self, topic: str, partition: int, subscription: str, ack_ids: list[str],
                                  ack_deadline_ms: int) -> None: ...

    async def nack(self, topic: str, partition: int, request: pubsub_pb2.NackRequest, ack_ids: list[str],
                   deferred: bool = False) -> None: ...


@dataclass(eq=False)
class Stream:
    """One consumer of a subscription: a push worker or a notification worker inside
    the sender (reading frames()), or a client's Subscribe stream relayed by a
    frontend (sender.relay.RelayedStream)."""
    max_outstanding: int
    outstanding: set[str] = field(default_factory=set)
    queue: asyncio.Queue = field(default_factory=asyncio.Queue)
    subscriber: bool = False  # a client's Subscribe stream (else a consumer inside the sender: a push worker)
    trace_context: bool = False  # the subscriber asked for traced messages' context (SubscribeRequest)

    def room(self) -> int:
        return self.max_outstanding - len(self.outstanding)

    def put(self, item) -> None:
        """A batch of serialized ReceivedMessages (a list), END, or the exception to end with."""
        self.queue.put_nowait(item)

    async def frames(self):
        """Yields SubscribeFrames; batches queued meanwhile go out as one frame."""
        while True:
            item = await self.queue.get()
            batch = []
            while isinstance(item, list):
                batch.extend(item)
                item = self.queue.get_nowait() if not self.queue.empty() else None
            if batch:
                yield sender_pb2.SubscribeFrame(received_messages=batch)
            if item is END:
                return
            if isinstance(item, Exception):
                raise item


class Budget:
    """The sender-wide cap on delivered, unacknowledged messages."""

    def __init__(self, limit: int):
        self.limit, self.used = limit, 0

    def available(self) -> int:
        return self.limit - self.used


class SubscriptionDispatcher:
    def __init__(self, subscription: pubsub_pb2.Subscription, storage: DispatchStorage, budget: Budget,
                 acks: Coalescer, owned: Callable[..., bool], room_freed: Callable[[], None],
                 given_back: Coalescer):
        """owned(partition): this sender serves that pair; owned(): some pair. acks and
        given_back: the sender's merged acks and nacks by shard (Dispatcher)."""
        self.name, self.topic = subscription.name, subscription.topic
        self._delivered = DELIVERED.series({"subscription": self.name})
        self.ack_deadline_ms = subscription.ack_deadline.ToMilliseconds()
        self._storage, self._budget, self._acks, self.owned = storage, budget, acks, owned
        self._given_back = given_back
        self.room_freed = room_freed  # wakes the pulls of this subscription's topic
        self.streams: list[Stream] = []
        # ack id -> (stream, monotonic deadline); and a heap of (deadline, ack id) for
        # expiry, whose entries no longer in _in_flight with that deadline are stale
        # (skipped when they surface). Bound: after each push len(_expiry) <= 2 *
        # len(_in_flight) + EXPIRY_SLACK; what acks leave stale surfaces within a deadline.
        self._in_flight: dict[str, tuple[Stream, float]] = {}
        self._expiry: list[tuple[float, str]] = []
        self.reserved = 0  # room asked for in pulls under way
        self._turn = itertools.count()
        # ack id -> its traced delivery, for the ack's span; at most MAX_TRACED (the oldest go).
        self.traced: dict[str, tracing.Delivered] = {}

    def add(self, stream: Stream) -> None:
        self.streams.append(stream)
        self.room_freed()

    def idle(self) -> bool:
        return not self.streams and not self._in_flight

    def state(self, partitions: int) -> dict:
        """For Dispatcher.state: streams as [held, window], messages in flight, owned partitions."""
        return {"streams": [[len(s.outstanding), s.max_outstanding] for s in self.streams],
                "in_flight": len(self._in_flight), "reserved": self.reserved,
                "owned": [p for p in range(partitions) if self.owned(p)]}

    def room(self) -> int:
        """Messages the streams can take that no pull under way asks for already."""
        return sum(max(0, s.room()) for s in self.streams) - self.reserved

    async def _per_partition(self, ack_ids, call) -> None:
        by_partition = ack_ids_by_partition(ack_ids)
        if len(by_partition) == 1:  # a pipeline worker's answer of one message: no task and gather for it
            ((partition, ids),) = by_partition.items()
            await call(partition, ids)
            return
        await asyncio.gather(*(call(partition, ids) for partition, ids in by_partition.items()))

    async def _nack(self, ack_ids: list[str]) -> None:
        """Messages of streams gone, for redelivery now: merged with other subscriptions'
        of the shard (25,000 streams closing at once made a call each, and 14,292 of
        them timed out)."""
        await self._per_partition(ack_ids, lambda p, ids: self._given_back.submit((self.topic, p), ids))

    def detach(self, stream: Stream) -> None:
        """Hands the stream nothing more; what it holds stays its own until remove."""
        if stream in self.streams:
            self.streams.remove(stream)

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

    def _forget(self, ack_ids) -> int:
        forgotten = 0
        in_flight = self._in_flight
        for ack_id in ack_ids:
            entry = in_flight.pop(ack_id, None)
            if entry is not None:
                entry[0].outstanding.discard(ack_id)
                forgotten += 1
        if forgotten:
            self._budget.used -= forgotten
            self.room_freed()
        return forgotten

    def _answered(self, ack_ids, outcome: str) -> None:
        """The answers' spans of traced deliveries."""
        for ack_id in ack_ids:
            if (delivered := self.traced.pop(ack_id, None)) is not None:
                tracing.ack_span(self.name, delivered, outcome)

    async def acknowledge(self, ack_ids) -> None:
        self.acknowledged(ack_ids)
        await self._per_partition(ack_ids, lambda p, ids: self._acks.submit((self.topic, p), ids))

    def acknowledged(self, ack_ids) -> None:
        """Frees the room of acknowledged messages; their acks go to storage apart."""
        self._forget(ack_ids)
        if self.traced:
            self._answered(ack_ids, "ack")

    async def modify_ack_deadline(self, ack_ids: list[str], ack_deadline_ms: int) -> None:
        if ack_deadline_ms == 0:
            self._forget(ack_ids)
        else:
            until = time.monotonic() + ack_deadline_ms / 1000
            for ack_id in ack_ids:
                if (entry := self._in_flight.get(ack_id)) is not None:
                    self._in_flight[ack_id] = (entry[0], until)
                    self._expire_at(until, ack_id)
        await self._per_partition(ack_ids, lambda p, ids: self._storage.modify_ack_deadline(
            self.topic, p, self.name, ids, ack_deadline_ms))

    async def nack(self, request: pubsub_pb2.NackRequest, deferred: bool = False) -> None:
        """deferred: deliver again after request.delay without counting an attempt (a
        notification held back by a rate limit failed nothing)."""
        self._forget(request.ack_ids)
        if self.traced:
            self._answered(request.ack_ids, "nack")
        await self._per_partition(request.ack_ids, lambda p, ids: self._storage.nack(self.topic, p, request, ids,
                                                                                     deferred=deferred))

    def _expire_at(self, until: float, ack_id: str) -> None:
        expiry = self._expiry
        heapq.heappush(expiry, (until, ack_id))
        if len(expiry) > 2 * len(self._in_flight) + EXPIRY_SLACK:  # mostly stale: keep the live ones
            expiry[:] = [(deadline, a) for a, (_, deadline) in self._in_flight.items()]
            heapq.heapify(expiry)

    def expire(self) -> float | None:
        """Frees the room of messages past their ack deadline (storage redelivers
        them); returns when the next one expires (monotonic)."""
        now = time.monotonic()
        expiry, in_flight = self._expiry, self._in_flight
        while expiry:
            until, ack_id = expiry[0]
            entry = in_flight.get(ack_id)
            if entry is not None and entry[1] == until:
                if until > now:
                    return until
                self._forget([ack_id])
            heapq.heappop(expiry)  # expired now, or stale
        return None

    async def hand_out(self, received: list[bytes], ack_ids: list[str]) -> None:
        """Splits a pulled batch over the streams with room, starting at a rotating
        one so competing subscribers share the load."""
        until = time.monotonic() + self.ack_deadline_ms / 1000
        streams = list(self.streams)
        start = next(self._turn) % len(streams) if streams else 0
        position = 0
        in_flight = self._in_flight
        for stream in streams[start:] + streams[:start]:
            take = min(stream.room(), len(received) - position)
            if take <= 0:
                continue
            end = position + take
            for ack_id in ack_ids[position:end]:
                if ack_id in in_flight:  # redelivered while we still counted it
                    self._forget([ack_id])
                in_flight[ack_id] = (stream, until)
                self._expire_at(until, ack_id)
                stream.outstanding.add(ack_id)
            self._budget.used += take
            self._delivered.add(take)
            stream.put(tracing.received_for(received[position:end], self.name,
                                            "stream" if stream.subscriber else "push",
                                            stream.trace_context, self.traced))
            position = end
        self.bound_traced()
        if position < len(received):  # the streams went away meanwhile
            await self._nack(ack_ids[position:])

    def bound_traced(self) -> None:
        while len(self.traced) > MAX_TRACED:  # answers that never came (expired, nacked elsewhere)
            del self.traced[next(iter(self.traced))]

    def end_streams(self, reason: Exception | None) -> None:
        for stream in self.streams:
            stream.put(reason or END)

    async def close(self) -> None:
        """Ends every stream and hands unacknowledged messages back."""
        self.end_streams(None)
        for stream in list(self.streams):
            await self.remove(stream)


class Dispatcher:
    """All subscriptions this sender serves."""

    def __init__(self, cluster: Cluster, config: Config, node_id: str, registration_of: Callable,
                 storage: DispatchStorage | None = None):
        """registration_of(): this sender's Registration, whose lease fences it.
        storage: the storage client, by default the real one over the cluster (tests pass a fake)."""
        self._cluster, self._config, self._node = cluster, config, node_id
        self._registration_of = registration_of
        self.storage: DispatchStorage = storage if storage is not None else StorageClient(cluster)
        self.budget = Budget(config.sender_max_outstanding)
        # Concurrent acks of a shard, of any of its subscriptions, share one storage call.
        self._acks = Coalescer(lambda shard, ack_ids: self.storage.acknowledge(*shard, "", ack_ids), max_items=5000)
        # Messages of streams gone, of any subscription of a shard: one nack (deadline 0) at a time.
        self._given_back = Coalescer(lambda shard, ack_ids: self.storage.modify_ack_deadline(*shard, "", ack_ids, 0),
                                     max_items=5000)
        self.subscriptions: dict[str, SubscriptionDispatcher] = {}
        # The same by topic (topic -> name -> it), for the shard pullers: each plan lists
        # its topic's subscriptions, not every one held (that scan, Dispatcher.serving, was
        # 7.8 % of the sender's samples with 50,000 streams of one topic; with many topics
        # each plan paid for all of them). Bound: the entries of subscriptions.
        self._by_topic: dict[str, dict[str, SubscriptionDispatcher]] = {}
        self._pullers: dict[tuple[str, int], ShardPuller] = {}
        # (subscription, partition or None for any) -> this sender owns it on the ring
        self._ring_owned: dict[tuple[str, int | None], bool] = {}
        self._closing = False
        self._pull_turn = itertools.count()  # which partition a unary pull asks first

    @property
    def cluster(self) -> Cluster:
        return self._cluster

    def partition_count(self, topic: str) -> int:
        record = self._cluster.topics.items.get(topic)
        return max(1, record.partition_count) if record else 1

    def serving(self, topic: str) -> list[SubscriptionDispatcher]:
        return [d for d in self._by_topic.get(topic, {}).values() if d.streams]

    def _room_freed(self, topic: str, name: str) -> None:
        """Wakes the pulls of every partition of the topic, for subscription name, and
        starts those of the partitions it owns (a puller ends once it serves none)."""
        for partition in range(self.partition_count(topic)):
            puller = self._pullers.get((topic, partition))
            if puller is None or puller.task.done():
                if not self.owns(name, partition):
                    continue
                puller = self._pullers[(topic, partition)] = ShardPuller(topic, partition, self)
                puller.task = asyncio.create_task(puller.run())
            puller.poke(name)

    async def _dispatcher(self, name: str) -> SubscriptionDispatcher:
        record = await self._cluster.subscription(name)
        dispatcher = self.subscriptions.get(name)
        if dispatcher is None or dispatcher.topic != record.topic:
            if dispatcher is not None:  # the subscription was made anew on another topic
                self._forget_dispatcher(dispatcher)
            dispatcher = self.subscriptions[name] = SubscriptionDispatcher(
                record, self.storage, self.budget, self._acks, lambda partition=None: self.owns(name, partition),
                lambda: self._room_freed(record.topic, name), self._given_back)
            self._by_topic.setdefault(record.topic, {})[name] = dispatcher
        return dispatcher

    async def connect(self, name: str, stream: "Stream") -> SubscriptionDispatcher:
        """Adds a subscriber's stream (its max_outstanding as the request gave it, 0
        for the default) to the subscription, if this sender owns some pair of it;
        disconnect() removes it."""
        if self._closing:
            raise errors.Unavailable("sender is shutting down")
        if stream.max_outstanding < 0:
            raise errors.InvalidArgument("max_outstanding_messages must not be negative")
        self._check_owner(name)
        dispatcher = await self._dispatcher(name)
        stream.max_outstanding = stream.max_outstanding or self._config.stream_max_outstanding
        stream.subscriber = True
        dispatcher.add(stream)
        # debug, not info: a line per stream was 15 % of the sender's samples while
        # 50,000 streams attached; the frontend's active_streams metric counts them.
        log.debug("subscriber connected", extra=fields(subscription=name, streams=len(dispatcher.streams)))
        return dispatcher

    async def disconnect(self, name: str, dispatcher: SubscriptionDispatcher, stream: "Stream") -> None:
        """The subscriber went away: its unacknowledged messages go back to storage."""
        await dispatcher.remove(stream)
        log.debug("subscriber gone", extra=fields(subscription=name, streams=len(dispatcher.streams)))
        if dispatcher.idle() and self.subscriptions.get(name) is dispatcher:
            del self.subscriptions[name]  # nothing connected, nothing in flight: keep no state
            self._forget_dispatcher(dispatcher)

    def _forget_dispatcher(self, dispatcher: SubscriptionDispatcher) -> None:
        """Takes a dispatcher no longer in subscriptions out of its topic's."""
        of_topic = self._by_topic.get(dispatcher.topic, {})
        if of_topic.get(dispatcher.name) is dispatcher:
            del of_topic[dispatcher.name]
            if not of_topic:
                del self._by_topic[dispatcher.topic]

    @property
    def addr(self) -> str:
        """This sender's address as registered ("" before it is)."""
        registration = self._registration_of()
        return registration.addr if registration is not None else ""

    def owns(self, name: str, partition: int | None = None) -> bool:
        """A (subscription, partition) pair is served only by its owner on the sender
        ring (Ring.owner), and only while that sender's lease is certainly alive:
        another sender takes it over only once etcd has expired the lease, after this
        sender stopped. partition None: whether this sender owns some pair of it."""
        registration = self._registration_of()
        if registration is None or time.monotonic() >= registration.valid_until:
            return False
        owned = self._ring_owned.get((name, partition))
        if owned is None:  # a ring lookup costs microseconds: once per ring change
            if partition is None:
                record = self._cluster.subscriptions.items.get(name)
                partitions = self.partition_count(record.topic) if record is not None else 1
                owned = any(self.owns(name, p) for p in range(partitions))
            else:
                owned = self._cluster.rings["sender"].owner(name, partition) == self._node
            self._ring_owned[(name, partition)] = owned
        return owned

    def _check_owner(self, name: str) -> None:
        if not self.owns(name):
            owner = self._cluster.rings["sender"].owner(name)
            raise errors.Unavailable(f"subscription {name!r} is served by {owner or 'no sender'}, not {self._node}")

    def release_unowned(self) -> None:
        """After a ring change: ends the streams of subscriptions this sender owns no
        pair of any more (their frontends reconnect them to the new owners) and starts
        the pulls of the pairs it owns now (those it lost stop at their next plan)."""
        self._ring_owned.clear()
        for name, dispatcher in self.subscriptions.items():
            if dispatcher.streams and not self.owns(name):
                dispatcher.end_streams(errors.Unavailable(f"subscription {name!r} moved from {self._node}"))
            elif dispatcher.streams:
                dispatcher.room_freed()

    def record_changed(self, name: str | None) -> None:
        """A cluster.subscriptions listener: a subscription served here takes its new
        ack deadline (UpdateSubscription) from its next pull on, and a deleted one's
        streams end now rather than at its next pull (None: any may have changed)."""
        records = self._cluster.subscriptions.items
        for sub_name in list(self.subscriptions) if name is None else [name]:
            dispatcher, record = self.subscriptions.get(sub_name), records.get(sub_name)
            if dispatcher is not None and record is not None and record.topic == dispatcher.topic:
                dispatcher.ack_deadline_ms = record.ack_deadline.ToMilliseconds()
            elif dispatcher is not None and record is None and name is not None:  # etcd said it was deleted
                dispatcher.end_streams(errors.NotFound(f"subscription {name!r} not found"))

    async def pull(self, name: str, max_messages: int, wait_ms: int, trace_context: bool = False) -> list[bytes]:
        """A unary pull (UnaryPull) of a subscription this sender owns: serialized
        ReceivedMessages. They are in no stream here, so they take no stream's room."""
        if self._closing:
            raise errors.Unavailable("sender is shutting down")
        if max_messages <= 0 or wait_ms < 0:
            raise errors.InvalidArgument("max_messages must be positive and wait not negative")
        self._check_owner(name)
        record = await self._cluster.subscription(name)
        topic = await self._cluster.topic(record.topic)
        pull = UnaryPull(self.storage, record.topic, max(1, topic.partition_count), next(self._pull_turn),
                         owned=lambda partition: self.owns(name, partition))
        received = await pull.run(name, max_messages, record.ack_deadline.ToMilliseconds(), wait_ms)
        if not (tracing.enabled() and tracing.any_traced(received)):
            return tracing.received_for(received, name, "pull", trace_context)
        # The ack (through this sender, as each ack id names its subscription) gets its span from here.
        dispatcher = await self._dispatcher(name)
        received = tracing.received_for(received, name, "pull", trace_context, dispatcher.traced)
        dispatcher.bound_traced()
        return received

    async def attach(self, name: str, stream: Stream) -> SubscriptionDispatcher:
        """Adds a consumer inside the sender (a push worker) to the subscription."""
        dispatcher = await self._dispatcher(name)
        dispatcher.add(stream)
        return dispatcher

    async def acknowledge(self, name: str, ack_ids: list[str]) -> None:
        """name "": each ack id's own subscription (a frontend merged acks of several);
        acks of a subscription deleted meanwhile are dropped. Either way the acks of
        each shard go to storage as one request (the Coalescer merges it with others
        under way), not one per subscription: one message to 10,000 subscriptions is
        10,000 acks, which came merged from the frontend and went on as 10,000."""
        if name:
            await (await self._dispatcher(name)).acknowledge(ack_ids)
            return
        by_shard: dict[tuple[str, int], list[str]] = {}
        for pair, ids in ack_ids_by_pair(ack_ids).items():
            dispatcher = self.subscriptions.get(pair.subscription)
            if dispatcher is not None:
                dispatcher.acknowledged(ids)
                topic = dispatcher.topic
            else:  # none here (a unary pull's messages): the acks go on all the same
                try:
                    topic = (await self._cluster.subscription(pair.subscription)).topic
                except errors.NotFound:
                    continue
            by_shard.setdefault((topic, pair.partition), []).extend(ids)
        await asyncio.gather(*(self._acks.submit(shard, ids) for shard, ids in by_shard.items()))

    async def modify_ack_deadline(self, name: str, ack_ids: list[str], ack_deadline_ms: int) -> None:
        await (await self._dispatcher(name)).modify_ack_deadline(ack_ids, ack_deadline_ms)

    async def nack(self, request: pubsub_pb2.NackRequest) -> None:
        await (await self._dispatcher(request.subscription)).nack(request)

    def count_streams(self, names: list[str]) -> dict[str, int]:
        """How many Subscribe streams this sender serves for each of the subscriptions (none: left out)."""
        counts = {name: sum(s.subscriber for s in d.streams)
                  for name in names if (d := self.subscriptions.get(name)) is not None}
        return {name: count for name, count in counts.items() if count}

    def state(self) -> dict:
        """Each subscription's streams, messages in flight and pulls, for a person
        looking at a live sender (SIGUSR1)."""
        return {"budget": [self.budget.used, self.budget.limit],
                "subscriptions": {name: d.state(self.partition_count(d.topic)) for name, d in self.subscriptions.items()},
                "pullers": {f"{topic}/{partition}": puller.state() for (topic, partition), puller in self._pullers.items()}}

    async def close(self) -> None:
        self._closing = True
        await asyncio.gather(*(d.close() for d in self.subscriptions.values()), return_exceptions=True)
        pullers = [p.task for p in self._pullers.values()]
        for task in pullers:
            task.cancel()
        await asyncio.gather(*pullers, return_exceptions=True)
