"""The storage node process: the Storage servicer (thin) over the engine and its
replication, plus background work that follows etcd (attach and detach
subscriptions, drop deleted topics) and deletes what is no longer needed."""

import asyncio
import logging
import time
import zlib
from pathlib import Path

from gen.notifymesh.internal.v1 import storage_pb2, storage_pb2_grpc
from gen.notifymesh.v1 import pubsub_pb2
from notifymesh import errors
from notifymesh.clock import now_ms
from notifymesh.contracts import SUBSCRIPTIONS, TOPICS, MessageId, Shard, shard_name
from notifymesh.log import fields
from notifymesh.server import sealing, tracing
from notifymesh.server.clients import StorageClient
from notifymesh.server.cluster import ChangedNames
from notifymesh.server.internal_topics import TABLE_TOPIC
from notifymesh.server.process import Context
from storage.delivery import Pull, Seeked
from storage.engine import StorageEngine
from storage.metrics import StorageMetrics
from storage.replication import Replication
from storage.retention import COLLECT_CHUNK
from storage.stats import RATE_WINDOW_S, SubscriptionStats
from storage.table import TableService

log = logging.getLogger(__name__)

TABLE_UPKEEP_RETRY_S = 1.0  # after a failed pass of the table loop, before the next
SLOW_GC_EVERY = 60  # GC rounds between sweeps of expired idempotency keys and delivery logs
DEAD_LETTER_MOVERS = 4  # dead-letter moves under way at once (each an append to the dead-letter topic)


def delivery_stats(stats: SubscriptionStats) -> pubsub_pb2.DeliveryStats:
    """The public form of one subscription's numbers on a shard."""
    out = pubsub_pb2.DeliveryStats(backlog=stats.backlog, in_flight=stats.in_flight,
                                   delivery_rate=stats.delivered_last_minute / RATE_WINDOW_S,
                                   dead_letters=stats.dead_letters)
    if stats.oldest_unacked_age_ms is not None:
        out.oldest_unacked_age.FromMilliseconds(stats.oldest_unacked_age_ms)
    return out


class StorageServicer(storage_pb2_grpc.StorageServicer):
    def __init__(self, node: "StorageNode"):
        self._node = node

    async def Append(self, request, context):
        ids = await self._node.append(request.topic, request.partition, list(request.messages), request.retry)
        return storage_pb2.AppendResponse(message_ids=ids)

    async def Pull(self, requests, context):
        """A sender's pull stream. However it ends (cancelled, broken, or its requests
        ending: a killed sender's stream is seen either way, by timing), the sender is
        suspected: a live one costs a connect (notifymesh.server.liveness)."""
        sender_addr = ""
        try:
            async for request in self._node.stream_requests(requests):
                sender_addr = request.sender_addr
                pulls = [Pull(s.name, s.max_messages, s.ack_deadline_ms) for s in request.subscriptions]
                pulled, missing = await self._node.pull(request.topic, request.partition, pulls, request.wait_ms)
                response = storage_pb2.PullResponse()
                for name, got in pulled.items():
                    response.subscriptions.add(name=name, received_messages=got.received, ack_ids=got.ack_ids,
                                               ready=got.ready)
                for name in missing:
                    response.subscriptions.add(name=name, not_found=True)
                yield response
        finally:
            if sender_addr and not self._node.draining:
                self._node.replication.dead_members.suspect("sender", sender_addr)

    async def Acknowledge(self, request, context):
        shard = self._node.led_shard(request.topic, request.partition)
        self._node.engine.acknowledge(shard, request.subscription, list(request.ack_ids))
        return storage_pb2.StorageAcknowledgeResponse()

    async def ModifyAckDeadline(self, request, context):
        shard = self._node.led_shard(request.topic, request.partition)
        self._node.engine.modify_ack_deadline(shard, request.subscription, list(request.ack_ids),
                                              request.ack_deadline_ms)
        return storage_pb2.StorageModifyAckDeadlineResponse()

    async def Nack(self, request, context):
        shard = self._node.led_shard(request.topic, request.partition)
        delay_ms = request.delay_ms if request.HasField("delay_ms") else None
        if request.terminal:
            await self._node.check_dead_letter_topic(shard, request.subscription)
        self._node.engine.nack(shard, request.subscription, list(request.ack_ids), delay_ms, request.terminal,
                               request.reason, request.deferred)
        return storage_pb2.StorageNackResponse()

    async def ListDeadLetters(self, request, context):
        shard = self._node.led_shard(request.topic, request.partition)
        after_seq = request.after_seq if request.HasField("after_seq") else -1
        return self._node.engine.list_dead_letters(shard, request.subscription, request.max_messages, after_seq)

    async def RedriveDeadLetters(self, request, context):
        shard = self._node.led_shard(request.topic, request.partition)
        return pubsub_pb2.RedriveDeadLettersResponse(
            redriven=self._node.engine.redrive(shard, request.subscription))

    async def Seek(self, request, context):
        seeked = await self._node.seek(request.topic, request.partition, request.subscription,
                                       None if request.to_end else request.time_ms)
        return storage_pb2.StorageSeekResponse(limited=seeked.limited)

    async def GetMessageStatus(self, request, context):
        shard = self._node.led_shard(request.topic, request.partition)
        return self._node.engine.message_status(shard, request.message_id)

    async def AttachSubscription(self, request, context):
        shard = self._node.led_shard(request.subscription.topic, request.partition)
        self._node.engine.attach(shard, request.subscription)
        return storage_pb2.AttachSubscriptionResponse()

    async def DescribeSubscriptions(self, request, context):
        described = await self._node.describe(request.topic, request.partition, list(request.subscriptions))
        return storage_pb2.DescribeSubscriptionsResponse(subscriptions=[
            storage_pb2.SubscriptionDeliveryStats(name=stats.subscription, stats=delivery_stats(stats))
            for stats in described])

    async def Replicate(self, requests, context):
        async for request in self._node.stream_requests(requests):
            yield await self._node.replication.replicate(request)

    async def TableWrite(self, request, context):
        await self._node.tables.write(request.partition, list(request.ops))
        return storage_pb2.TableWriteResponse()

    async def TableRead(self, request, context):
        values = await self._node.tables.read(request.partition, list(request.keys))
        return storage_pb2.TableReadResponse(values=[v or b"" for v in values], found=[v is not None for v in values])

    async def TableScan(self, request, context):
        scanned = await self._node.tables.scan(request.partition, request.prefix, request.start_after, request.limit,
                                               request.reverse)
        return storage_pb2.TableScanResponse(keys=scanned.keys, values=scanned.values, more=scanned.more)

    async def TableScanMany(self, request, context):
        scanned = await self._node.tables.scan_many(request.partition, list(request.prefixes), request.limit)
        response = storage_pb2.TableScanManyResponse()
        add = response.scans.add  # made in place: one made apart and listed is copied in again
        for s in scanned:
            add(keys=s.keys, values=s.values, more=s.more)
        return response

    async def RateAcquire(self, request, context):
        decisions = await self._node.tables.rate_acquire(request.partition, list(request.acquires), list(request.ops))
        response = storage_pb2.RateAcquireResponse(ops_written=bool(request.ops))
        add = response.decisions.add  # a fan-out page's 1,000 duplicate checks: made in place, not copied in
        for d in decisions:
            add(allowed=d.allowed, retry_after_ms=d.retry_after_ms, count=d.count)
        return response


class StorageNode:
    reflected = ()

    def __init__(self, ctx: Context):
        self._ctx, self._cluster, self._config = ctx, ctx.cluster, ctx.config
        self.engine = StorageEngine(Path(ctx.args.data_dir), ctx.node_id, sealing.ring())
        self.engine.dedup.payload_attributes = self._payload_attributes
        # A quarter of the gRPC message limit: a request carries entries of many shards
        # plus their delivery state, whose size is counted but not capped.
        self.replication = Replication(self.engine, ctx.cluster, lambda: ctx.registration, ctx.node_id,
                                       self._replication_factor, ctx.config.max_grpc_message_bytes // 4)
        self.tables = TableService(self.engine.table, self.engine.log, self.replication.leader,
                                   self._table_partitions)
        self.servicers = [(storage_pb2_grpc.add_StorageServicer_to_server, StorageServicer(self))]
        self.metrics = StorageMetrics(self.replication.status)
        self._storage = StorageClient(ctx.cluster)
        self._changed_subscriptions = ChangedNames()
        self._tasks: list[asyncio.Task] = []
        self._draining = asyncio.get_running_loop().create_future()  # done once drain() began

    @property
    def draining(self) -> bool:
        return self._draining.done()

    async def stream_requests(self, requests):
        """The requests of a Pull or Replicate stream until drain(), which ends the
        stream with UNAVAILABLE: a stream never ends by itself, and the server's grace
        period would wait for it (cancelling its handler leaves the call open)."""
        requests = aiter(requests)
        next_request = None
        try:
            while not self._draining.done():
                next_request = asyncio.ensure_future(anext(requests))
                # A read left waiting when the stream closes ends by itself later: its end is
                # nobody's error, and asyncio would log it as one never retrieved.
                next_request.add_done_callback(lambda read: read.cancelled() or read.exception())
                await asyncio.wait((next_request, self._draining), return_when=asyncio.FIRST_COMPLETED)
                if not next_request.done():
                    break
                try:
                    request = next_request.result()
                except StopAsyncIteration:  # the client closed its side
                    return
                yield request
        finally:  # also when the stream is closed while a read waits
            if next_request is not None and not next_request.done():
                next_request.cancel()
        raise errors.Unavailable("storage node is shutting down")

    def _payload_attributes(self, topic: str) -> tuple[str, ...]:
        """Topic.dedup_attributes, what a payload hash covers besides the data (an
        append has awaited the topic's record)."""
        record = self._cluster.topics.items.get(topic)
        return tuple(record.dedup_attributes) if record else ()

    async def _table_partitions(self) -> int:
        return (await self._cluster.topic(TABLE_TOPIC)).partition_count

    def _replication_factor(self, topic: str) -> int:
        record = self._cluster.topics.items.get(topic)
        return record.replication_factor if record else 0

    def led_shard(self, topic: str, partition: int) -> str:
        """The shard's name, when this node leads it (UNAVAILABLE otherwise: ask the leader)."""
        shard = shard_name(topic, partition)
        self.replication.leadership(shard)
        return shard

    async def check_dead_letter_topic(self, shard: str, subscription: str) -> None:
        """FAILED_PRECONDITION unless the subscription's dead-letter topic exists, so a
        terminal nack never answers success for a dead-lettering that cannot happen
        (the message stays in flight and comes back). Asks etcd itself: the mirror
        may not have seen a delete yet; terminal nacks are rare enough for the read."""
        topic = self.engine.subscription(shard, subscription).policy.dead_letter_topic
        if topic and await self._cluster.etcd.get(TOPICS + topic.encode()) is None:
            raise errors.FailedPrecondition(
                f"dead-letter topic {topic!r} of subscription {subscription!r} does not exist; "
                "the messages were not dead-lettered and stay deliverable")

    async def append(self, topic: str, partition: int, messages, retry: bool) -> list[str]:
        if topic == TABLE_TOPIC:  # its entries are TableOps this node made: a publish would write rows
            raise errors.InvalidArgument(f"topic {TABLE_TOPIC!r} is written through the table's calls only")
        record = await self._cluster.topic(topic)  # NOT_FOUND rather than data for a topic that does not exist
        window_ms = (record.dedup_window.ToMilliseconds() if record.HasField("dedup_window")
                     else int(self._config.dedup_window_s * 1000))
        shard = shard_name(topic, partition)
        with tracing.append_span(shard, messages):  # before the messages are serialized: it stamps them
            return await self.replication.append(shard, messages, retry, window_ms, record.dedup_by_payload)

    async def pull(self, topic: str, partition: int, pulls: list[Pull], wait_ms: int):
        """(messages by subscription, the subscriptions that do not exist)."""
        if wait_ms < 0 or any(p.max_messages < 0 or p.ack_deadline_ms <= 0 for p in pulls):
            raise errors.InvalidArgument("ack_deadline_ms must be positive, max_messages and wait_ms not negative")
        shard = self.led_shard(topic, partition)
        missing = await self._attach_missing(topic, shard, [p.subscription for p in pulls])
        return await self.engine.pull(shard, pulls, wait_ms), missing

    async def _attach_missing(self, topic: str, shard: str, names: list[str]) -> list[str]:
        """Attaches those of the subscriptions asked for before this node's watch saw
        them, from etcd; returns the ones that do not exist (for this topic)."""
        log_ = self.engine.shard(shard)
        missing = []
        for name in [name for name in names if name not in log_.subscriptions]:
            try:
                record = await self._cluster.subscription(name)
            except errors.NotFound:
                record = None
            if record is None or record.topic != topic:
                missing.append(name)
            else:
                self.engine.attach(shard, record)
        return missing

    async def describe(self, topic: str, partition: int, names: list[str]) -> list[SubscriptionStats]:
        """The numbers of the named subscriptions that exist on the shard this node leads."""
        shard = self.led_shard(topic, partition)
        await self._attach_missing(topic, shard, names)
        described = []
        for name in names:  # one at a time, other work between: each may take a pass over 20,000 leases
            described += self.engine.describe(shard, [name])
            await asyncio.sleep(0)
        self.led_shard(topic, partition)  # still leading: the numbers are the leader's
        return described

    async def seek(self, topic: str, partition: int, subscription: str, time_ms: int | None) -> Seeked:
        shard = self.led_shard(topic, partition)
        record = await self._cluster.topic(topic)
        if subscription not in self.engine.shard(shard).subscriptions:  # not attached here yet: from etcd
            attached = await self._cluster.subscription(subscription)
            if attached.topic != topic:
                raise errors.NotFound(f"subscription {subscription!r} is not of topic {topic!r}")
            self.engine.attach(shard, attached)
        return self.engine.seek(shard, subscription, time_ms, record.message_retention.ToMilliseconds() or None,
                                _retain_acked_ms(record))

    def shard_status(self):
        return self.replication.status()

    async def start(self) -> None:
        self.engine.start()
        self.replication.start()
        self._cluster.subscriptions.on_change(self._changed_subscriptions.note)
        for mirror in (self._cluster.topics, self._cluster.leaders):  # these call for a look at everything
            mirror.on_change(lambda _name: self._changed_subscriptions.note(None))
        self._tasks = [asyncio.create_task(self._follow_metadata()), asyncio.create_task(self._collect()),
                       asyncio.create_task(self._table_upkeep()),
                       *(asyncio.create_task(self._move_dead_letters()) for _ in range(DEAD_LETTER_MOVERS))]

    async def _follow_metadata(self) -> None:
        while True:
            await self._changed_subscriptions.event.wait()
            names = self._changed_subscriptions.take()
            try:
                # One subscription's change costs work for it alone: with 10,000
                # subscriptions, looking at all of them on each change took minutes.
                await (self._reconcile() if names is None else self._reconcile_subscriptions(names))
            except Exception as e:
                log.warning("reconcile failed; will retry", extra=fields(error=repr(e)))
                await asyncio.sleep(1)
                self._changed_subscriptions.note(None)

    async def _reconcile_subscriptions(self, names: set[str]) -> None:
        """Attaches or detaches the named subscriptions on the shards this node leads."""
        etcd, topics, subscriptions = self._cluster.etcd, self._cluster.topics.items, self._cluster.subscriptions.items
        for name in names:
            record = subscriptions.get(name)
            if record is not None:
                topic = topics.get(record.topic)  # not mirrored yet: its arrival attaches everything
                for partition in range(max(1, topic.partition_count) if topic else 0):
                    if (shard := shard_name(record.topic, partition)) in self.replication.led:
                        self.engine.attach(shard, record)
                continue
            for shard in list(self.replication.led):
                if name in self.engine.shard(shard).subscriptions \
                        and await etcd.get(SUBSCRIPTIONS + name.encode()) is None:
                    self.engine.detach(shard, name)

    async def _reconcile(self) -> None:
        """Brings the subscriptions of the shards this node leads, and the topics it
        keeps, in line with etcd. Removal is confirmed against etcd itself: the
        mirror may lag behind a create that an append or pull has already seen."""
        etcd, topics, subscriptions = self._cluster.etcd, self._cluster.topics.items, self._cluster.subscriptions.items
        for shard in list(self.engine.shards):
            topic, _ = Shard.parse(shard)
            if topic not in topics and await etcd.get(TOPICS + topic.encode()) is None:
                self.engine.drop(shard)
        for shard in list(self.replication.led):
            topic, _ = Shard.parse(shard)
            log_ = self.engine.shard(shard)
            for name in [s for s in log_.subscriptions if s not in subscriptions]:
                if await etcd.get(SUBSCRIPTIONS + name.encode()) is None:
                    self.engine.detach(shard, name)
            self._attach_known(shard, every=True)  # records read again: each takes its own

    def _attach_known(self, shard: str, every: bool = False) -> None:
        """Attaches every subscription etcd has for the shard's topic (a new leader
        may not have the latest delivery state yet); unless every, none when all are
        attached under this leadership (Deliveries.attach_known)."""
        topic, _ = Shard.parse(shard)
        self.engine.attach_known(shard, self._cluster.subscriptions.groups.get(topic, {}), every)

    async def _collect(self) -> None:
        rounds = 0
        # Each shard's lowest cursor at the previous round: a replica stubs only what
        # was below it then. A follower's entries no subscription needs are mostly
        # trimmed within a round (its leader collects them), so stubbing them first
        # was wasted work: an open, a re-sealed stub and a read back (about a third
        # of a follower's encryption at rest per message).
        settled: dict[str, int | None] = {}
        while True:
            await asyncio.sleep(self._config.storage_gc_interval_s)
            try:
                for shard in list(self.replication.led):
                    if self.engine.shard(shard).table:  # no messages: _table_upkeep keeps it
                        continue
                    # Nothing is deleted for want of a subscription this node has not attached yet.
                    self._attach_known(shard)
                    self.engine.sweep_dead_letters(shard)
                    record = self._cluster.topics.items.get(Shard.parse(shard)[0])
                    if record is None:  # its retention and retain_acked window are not known yet
                        continue
                    if freed := await self._collect_shard(shard, record.message_retention.ToMilliseconds(),
                                                          _retain_acked_ms(record)):
                        log.debug("collected", extra=fields(shard=shard, entries=freed))
                previous, settled = settled, {}
                for shard in list(self.engine.shards):  # a follower by the leader's delivery state it holds
                    record = self._cluster.topics.items.get(Shard.parse(shard)[0])
                    if record is not None and not self.engine.shard(shard).table:  # else its window is not known yet
                        settled[shard] = self.engine.lowest_cursor(shard)
                        if (below := previous.get(shard)) is not None:
                            await self._stub_shard(shard, _retain_acked_ms(record), below)
                rounds += 1
                if rounds % SLOW_GC_EVERY == 0:
                    await self.engine.sweep_idempotency_keys()
                    log_expired_before = now_ms() - int(self._config.delivery_log_retention_s * 1000)
                    for shard in list(self.engine.shards):
                        self.engine.collect_delivery_log(shard, log_expired_before)
            except Exception as e:
                log.error("garbage collection failed", extra=fields(error=repr(e)))

    async def _table_upkeep(self) -> None:
        """Applies what the table shards have committed beyond what was applied at
        commit (a restart's backlog), a chunk at a time; compacts after erasures; and
        each gc interval drops expired rows and (leading) trims dead entries."""
        table, last_gc, gc_every = self.engine.table, 0.0, self._config.storage_gc_interval_s
        while True:  # the first pass at once: a restart's backlog
            table.upkeep_due.clear()  # before the pass: what comes during it wakes the next
            try:
                for log_ in table.shards():
                    while table.apply(log_.name):
                        await asyncio.sleep(0)
                for shard in table.due_compactions():
                    await asyncio.to_thread(table.compact, shard)
                if time.monotonic() - last_gc >= gc_every:
                    last_gc = time.monotonic()
                    for log_ in table.shards():
                        table.sweep(log_.name)
                        if log_.name in self.replication.led:
                            table.trim_leading(log_.name)
                        await asyncio.sleep(0)
            except asyncio.CancelledError:
                raise
            except Exception as e:
                log.error("table upkeep failed", extra=fields(error=repr(e)))
                await asyncio.sleep(TABLE_UPKEEP_RETRY_S)
            # Until the next sweep or planned compaction, or sooner once Table.apply left
            # a backlog or a compaction was planned (Table.upkeep_due).
            compaction = table.next_compaction()
            due = last_gc + gc_every if compaction is None else min(last_gc + gc_every, compaction)
            try:
                await asyncio.wait_for(table.upkeep_due.wait(), max(0.0, due - time.monotonic()))
            except TimeoutError:
                pass

    async def _collect_shard(self, shard: str, retention_ms: int | None, retain_acked_ms: int | None) -> int:
        """Collects the shard a chunk at a time (retention.COLLECT_CHUNK), letting
        other work run between chunks, while this node leads it."""
        freed = 0
        while shard in self.replication.led:
            freed += (chunk := self.engine.collect(shard, retention_ms, retain_acked_ms))
            if chunk < COLLECT_CHUNK:
                break
            await asyncio.sleep(0)
        return freed

    async def _stub_shard(self, shard: str, retain_acked_ms: int | None, settled_below: int) -> None:
        """Stubs what the shard's subscriptions no longer need (retention.stub), a
        chunk at a time, as _collect_shard collects."""
        while shard in self.engine.shards and self.engine.stub(shard, retain_acked_ms,
                                                               settled_below) == COLLECT_CHUNK:
            await asyncio.sleep(0)

    async def _move_dead_letters(self) -> None:
        """Publishes each message out of delivery attempts to its subscription's
        dead-letter topic, then records it as a dead letter where it came from. The
        idempotency key (DeadLetters.move_key) makes a repeated move of one
        dead-lettering (after a crash between the two) land once, and each
        dead-lettering of a redriven message land again. DEAD_LETTER_MOVERS of
        these run, so one slow append does not hold up the queue."""
        store = self.engine.dead_letter_store
        while True:
            dead = await self.engine.dead_letters.get()
            try:
                key = store.move_key(dead)
                original = store.message(dead) if key is not None else None
                if original is None:
                    continue
                record = await self._cluster.topic(dead.topic)
                partition = zlib.crc32(original.message_id.encode()) % max(1, record.partition_count)
                moved = pubsub_pb2.PubsubMessage(
                    data=original.data, message_id=MessageId.new_batch(dead.topic, partition, 1, now_ms())[0],
                    ordering_key=original.ordering_key,
                    idempotency_key=key,
                    attributes={**original.attributes,
                                "notifymesh.original_message_id": original.message_id,
                                "notifymesh.subscription": dead.subscription,
                                "notifymesh.delivery_attempts": str(dead.attempts),
                                "notifymesh.last_error": dead.error})
                [moved_id] = await self._storage.append((dead.topic, partition), [moved])
                self.led_shard(*Shard.parse(dead.shard))
                self.engine.bury(dead, moved_id)
                log.info("dead-lettered", extra=fields(subscription=dead.subscription, message=original.message_id,
                                                       attempts=dead.attempts, topic=dead.topic))
            except asyncio.CancelledError:
                raise
            except Exception as e:  # the lease brings it back in DEAD_LETTER_RETRY_MS
                log.warning("dead-lettering failed", extra=fields(subscription=dead.subscription, error=repr(e)))

    async def drain(self) -> None:
        self._draining.set_result(None)
        self.engine.stop_waiting()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.replication.stop()

    async def close(self) -> None:
        await self.engine.close()


def _retain_acked_ms(topic: pubsub_pb2.Topic | None) -> int | None:
    """Topic.retain_acked in ms, None when off (or the topic is not mirrored yet)."""
    return (topic.retain_acked.ToMilliseconds() or None) if topic is not None else None


async def build(ctx: Context) -> StorageNode:
    return StorageNode(ctx)
