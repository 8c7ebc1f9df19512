"""The storage node process: the Storage servicer (thin) over StorageEngine, plus
the background work that follows etcd (attach/detach subscriptions, drop
deleted topics) and deletes what is no longer needed."""

import asyncio
import logging
from pathlib import Path

from gen.notifymesh.internal.v1 import storage_pb2, storage_pb2_grpc
from notifymesh import errors
from notifymesh.cluster import SUBSCRIPTIONS, TOPICS
from notifymesh.log import fields
from notifymesh.server import Context
from storage.client import StorageClient
from storage.engine import StorageEngine

log = logging.getLogger(__name__)

IDEMPOTENCY_GC_EVERY = 60  # GC rounds between sweeps of expired idempotency keys
HANDOFF_INTERVAL_S = 1.0
HANDOFF_CHUNK = 1000


class StorageServicer(storage_pb2_grpc.StorageServicer):
    def __init__(self, node: "StorageNode"):
        self._node = node

    async def Append(self, request, context):
        ids = await self._node.append(request.topic, list(request.messages))
        return storage_pb2.AppendResponse(message_ids=ids)

    async def Pull(self, request, context):
        received = await self._node.pull(request.topic, request.subscription, request.max_messages,
                                         request.ack_deadline_ms, request.wait_ms)
        return storage_pb2.PullResponse(received_messages=received)

    async def Acknowledge(self, request, context):
        self._node.engine.acknowledge(request.topic, request.subscription, list(request.ack_ids))
        return storage_pb2.StorageAcknowledgeResponse()

    async def ModifyAckDeadline(self, request, context):
        self._node.engine.modify_ack_deadline(request.topic, request.subscription, list(request.ack_ids),
                                              request.ack_deadline_ms)
        return storage_pb2.StorageModifyAckDeadlineResponse()

    async def Handoff(self, request, context):
        await self._node.take_over(request.topic, list(request.messages))
        return storage_pb2.HandoffResponse()

    async def AttachSubscription(self, request, context):
        self._node.engine.attach(request.subscription)
        return storage_pb2.AttachSubscriptionResponse()


class StorageNode:
    reflected = ()

    def __init__(self, ctx: Context):
        self._ctx, self._cluster, self._config = ctx, ctx.cluster, ctx.config
        self.engine = StorageEngine(Path(ctx.args.data_dir), ctx.node_id)
        self.servicers = [(storage_pb2_grpc.add_StorageServicer_to_server, StorageServicer(self))]
        self._dedup_window_ms = int(ctx.config.dedup_window_s * 1000)
        self._storage = StorageClient(ctx.cluster)
        self._metadata_changed = asyncio.Event()
        self._tasks: list[asyncio.Task] = []

    async def append(self, topic: str, messages) -> list[str]:
        await self._cluster.topic(topic)  # NOT_FOUND rather than data for a topic that does not exist
        return await self.engine.append(topic, messages, self._dedup_window_ms)

    async def take_over(self, topic: str, messages) -> None:
        """Attaches the subscriptions the messages are for, then stores them."""
        await self._cluster.topic(topic)
        for name in {name for m in messages for name in m.only_subscriptions}:
            record = self._cluster.subscriptions.items.get(name)
            if record is not None and record.topic == topic:
                self.engine.attach(record)
        await self.engine.take_over(topic, messages, self._dedup_window_ms)

    async def pull(self, topic: str, subscription: str, max_messages: int, ack_deadline_ms: int, wait_ms: int):
        if max_messages <= 0 or ack_deadline_ms <= 0 or wait_ms < 0:
            raise errors.InvalidArgument("max_messages and ack_deadline_ms must be positive, wait_ms not negative")
        log_ = self.engine.topics.get(topic)
        if log_ is None or subscription not in log_.subscriptions:
            # Pulled before this node's watch saw the subscription: attach from etcd.
            record = await self._cluster.subscription(subscription)
            if record.topic != topic:
                raise errors.InvalidArgument(f"subscription {subscription!r} is on topic {record.topic!r}")
            self.engine.attach(record)
        return await self.engine.pull(topic, subscription, max_messages, ack_deadline_ms, wait_ms)

    async def start(self) -> None:
        self.engine.start()
        self._cluster.topics.on_change(self._metadata_changed.set)
        self._cluster.subscriptions.on_change(self._metadata_changed.set)
        self._cluster.members.on_change(self._metadata_changed.set)
        self._metadata_changed.set()
        self._tasks = [asyncio.create_task(self._follow_metadata()), asyncio.create_task(self._collect()),
                       asyncio.create_task(self._hand_off())]

    async def _follow_metadata(self) -> None:
        while True:
            await self._metadata_changed.wait()
            self._metadata_changed.clear()
            try:
                await self._reconcile()
            except Exception as e:
                log.warning("reconcile failed; will retry", extra=fields(error=repr(e)))
                await asyncio.sleep(1)
                self._metadata_changed.set()

    async def _reconcile(self) -> None:
        """Brings attached subscriptions and kept topics in line with etcd. Removal is
        confirmed against etcd itself: the mirror may lag behind a create that an
        append or pull has already seen."""
        etcd, topics, subscriptions = self._cluster.etcd, self._cluster.topics.items, self._cluster.subscriptions.items
        for topic in [t for t in self.engine.topics if t not in topics]:
            if await etcd.get(TOPICS + topic.encode()) is None:
                self.engine.drop_topic(topic)
        for log_ in list(self.engine.topics.values()):
            for name in [s for s in log_.subscriptions if s not in subscriptions or subscriptions[s].topic != log_.name]:
                kv = await etcd.get(SUBSCRIPTIONS + name.encode())
                if kv is None:
                    self.engine.detach(log_.name, name)
        ring = self._cluster.rings["storage"]
        for record in list(subscriptions.values()):
            if record.topic in topics and ring.owner(record.topic) == self._ctx.node_id:
                self.engine.attach(record)

    async def _hand_off(self) -> None:
        """Moves what subscriptions still need of topics that the ring now gives to
        another node (this node was down, or a node joined) to that node, so nothing
        is stranded when ownership moves."""
        while True:
            await asyncio.sleep(HANDOFF_INTERVAL_S)
            ring = self._cluster.rings["storage"]
            for topic, log_ in list(self.engine.topics.items()):
                owner = ring.owner(topic)
                if owner is None or owner == self._ctx.node_id or log_.first >= log_.end:
                    continue
                try:
                    messages, upto = self.engine.handoff_chunk(topic, HANDOFF_CHUNK)
                    if messages:
                        await self._storage.handoff(topic, messages)
                    self.engine.handed_off(topic, upto)
                    log.info("handed off", extra=fields(topic=topic, to=owner, messages=len(messages)))
                except asyncio.CancelledError:
                    raise
                except Exception as e:
                    log.warning("handoff failed; will retry", extra=fields(topic=topic, to=owner, error=repr(e)))

    async def _collect(self) -> None:
        rounds = 0
        while True:
            await asyncio.sleep(self._config.storage_gc_interval_s)
            retention = {name: t.message_retention.ToMilliseconds() for name, t in self._cluster.topics.items.items()}
            try:
                if freed := self.engine.collect(retention):
                    log.debug("collected", extra=fields(messages=freed))
                rounds += 1
                if rounds % IDEMPOTENCY_GC_EVERY == 0:
                    self.engine.collect_idempotency_keys()
            except Exception as e:
                log.error("garbage collection failed", extra=fields(error=repr(e)))

    async def drain(self) -> None:
        self.engine.stop_waiting()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def close(self) -> None:
        await self.engine.close()


async def build(ctx: Context) -> StorageNode:
    return StorageNode(ctx)
