"""What the frontend does with each public call, without gRPC plumbing: validate,
then route to the service that owns the work.

Topic and subscription lookups come from the local mirror of etcd (the metadata
cache, kept current by a watch), so a publish costs no call to metadata.
"""

import asyncio
import heapq
import itertools
import logging
from typing import AsyncIterator, Protocol

import grpc

from frontend import fanin, stats
from gen.notifymesh.internal.v1 import node_pb2, node_pb2_grpc, storage_pb2
from gen.notifymesh.v1 import cluster_pb2, notify_pb2, pubsub_pb2
from notifymesh import errors
from notifymesh.backoff import Backoff, BackoffPolicy
from notifymesh.batching import Coalescer
from notifymesh.clock import to_ms
from notifymesh.contracts import AckGroup, DeadLetterPageToken, MessageId, ack_ids_by_pair, topic_hash
from notifymesh.log import fields
from notifymesh.server import tracing, validation
from notifymesh.server.clients import MetadataClient, SenderClient, StorageClient
from notifymesh.server.cluster import Cluster
from notifymesh.server.config import Config
from notifymesh.server.liveness import DeadMembers, EtcdMemberLeases
from notifymesh.server.publishing import TopicAppender

log = logging.getLogger(__name__)

RECONNECT_BACKOFF = BackoffPolicy(first_s=0.05, max_s=2.0)
MERGED_MAX_ITEMS = 5000  # messages or ack ids in one merged downstream call
DEAD_LETTERS_PAGE, MAX_DEAD_LETTERS_PAGE = 100, 1000
PULL_MESSAGES, MAX_PULL_MESSAGES, MAX_PULL_WAIT_S = 100, 1000, 30  # Subscriber.Pull: default and most


class GatewayStorage(Protocol):
    """What the gateway asks of storage (notifymesh.server.clients.StorageClient)."""

    async def append(self, shard: tuple[str, int], messages) -> list[str]: ...

    async def call(self, method: str, topic: str, partition: int, request): ...


class GatewaySenders(Protocol):
    """What the gateway asks of the senders (notifymesh.server.clients.SenderClient)."""

    def owner_addr(self, subscription: str, partition: int = 0) -> str: ...

    def owners(self, subscription: str, partitions: int) -> dict[str, list[int]]: ...

    def by_owner(self, pairs: dict[AckGroup, list[str]]) -> dict[str, list[str]]: ...

    def subscribe(self, addr: str, request: pubsub_pb2.SubscribeRequest) -> "RelayedStream": ...

    async def acknowledge(self, addr: str, ack_ids: list[str]) -> None: ...

    async def modify_ack_deadline(self, request: pubsub_pb2.ModifyAckDeadlineRequest,
                                  pairs: dict[AckGroup, list[str]]) -> None: ...

    async def nack(self, request: pubsub_pb2.NackRequest, pairs: dict[AckGroup, list[str]]) -> None: ...

    async def count_streams(self, subscriptions: list[str]) -> dict[str, int]: ...

    async def provider_status(self, channel: int) -> notify_pb2.GetProviderStatusResponse: ...

    async def pull(self, request: pubsub_pb2.PullRequest, addr: str = "") -> pubsub_pb2.PullResponse: ...


class RelayedStream(Protocol):
    """One client stream relayed from a sender (notifymesh.server.relay.RelayedFrames):
    its frames as bytes, until it ends (raising the sender's status, or the broken
    call's, as a NotifymeshError)."""

    def __aiter__(self) -> AsyncIterator[bytes]: ...

    def cancel(self) -> None: ...


class Suspects(Protocol):
    """Where a member whose stream broke is reported (notifymesh.server.liveness.DeadMembers)."""

    def suspect(self, kind: str, addr: str) -> None: ...


class GatewayMetadata(Protocol):
    """What the gateway asks of metadata (notifymesh.server.clients.MetadataClient)."""

    async def call(self, method: str, request): ...


class Gateway:
    def __init__(self, cluster: Cluster, config: Config, storage: GatewayStorage | None = None,
                 senders: GatewaySenders | None = None, metadata: GatewayMetadata | None = None,
                 suspects: Suspects | None = None):
        """storage, senders, metadata: the internal clients, by default the real ones
        over the cluster; suspects: where a sender whose stream broke is checked, by
        default a DeadMembers over the cluster (tests pass fakes)."""
        self._cluster, self._config = cluster, config
        self._storage: GatewayStorage = storage if storage is not None else StorageClient(cluster)
        self._senders: GatewaySenders = (senders if senders is not None
                                         else SenderClient(cluster, config.stream_max_outstanding))
        self._metadata: GatewayMetadata = metadata if metadata is not None else MetadataClient(cluster)
        self.suspects: Suspects = suspects if suspects is not None else DeadMembers(EtcdMemberLeases(cluster))
        # Concurrent publishes to a topic share one Append; concurrent acks of all
        # subscriptions one sender has one call to it (ack ids name their subscription).
        self._appender = TopicAppender(self._storage)
        self._turn = itertools.count()  # which sender's partitions a unary pull asks first
        self._acks = Coalescer(self._senders.acknowledge, max_items=MERGED_MAX_ITEMS)
        self._relays: set[RelayedStream] = set()
        self._closing = False

    # -- admin: forwarded to any live metadata replica --------------------------

    async def admin(self, method: str, request):
        """Calls Metadata.<method>, which validates names and limits."""
        return await self._metadata.call(method, request)

    # -- publish ----------------------------------------------------------------

    async def publish(self, topic: str, messages) -> list[str]:
        """Checks the messages, then appends them (publishing.TopicAppender: the
        partition of each, and its id)."""
        validation.name("topic", topic)
        validation.batch(len(messages), self._config)
        for index, message in enumerate(messages):
            validation.message(index, message, self._config)
        record = await self._cluster.topic(topic)  # NOT_FOUND before any storage work
        tracing.stamp_current(messages)
        return await self._appender.publish(record, messages)

    # -- delivery ---------------------------------------------------------------

    async def subscribe(self, name: str, max_outstanding: int, trace_context: bool = False):
        """Relays the stream of the sender that owns the subscription; when that sender
        goes away, reconnects to the new owner without ending the client's stream.
        Frames are relayed as the sender serialized them (bytes), never decoded here.
        A topic of several partitions: the streams of every sender owning some of the
        subscription's pairs, merged (frontend.fanin)."""
        validation.name("subscription", name)
        if max_outstanding < 0:
            raise errors.InvalidArgument("max_outstanding_messages must not be negative")
        record = await self._cluster.subscription(name)
        request = pubsub_pb2.SubscribeRequest(subscription=name, max_outstanding_messages=max_outstanding,
                                              trace_context=trace_context)
        partitions = self._partition_count(record.topic)
        if partitions == 1:
            frames = self._relay(request, lambda: self._senders.owner_addr(name))
        else:
            frames = fanin.FanIn(request, partitions, lambda: self._senders.owners(name, partitions), self._relay,
                                 lambda: self._cluster.next_ring_change("sender")).frames()
        try:
            async for frame in frames:
                yield frame
        finally:  # the client went away: its upstreams end now, not when collected
            await frames.aclose()

    def _partition_count(self, topic: str) -> int:
        """From the mirror (a subscription may outlive its topic a moment: 1 then)."""
        record = self._cluster.topics.items.get(topic)
        return max(1, record.partition_count) if record is not None else 1

    async def _relay(self, request: pubsub_pb2.SubscribeRequest, pick):
        """The frames of the sender at pick(), reconnecting as it goes away, until
        pick() says None (that sender serves none of the subscription any more)."""
        name = request.subscription
        backoff = Backoff(RECONNECT_BACKOFF)
        while True:
            if self._closing:  # close_streams(): the client subscribes again, elsewhere
                raise errors.Unavailable("frontend is shutting down; subscribe again")
            call = None
            # Taken before the owner is looked up, so no change in between is missed.
            senders_changed = self._cluster.next_ring_change("sender")
            try:
                if (addr := pick()) is None:
                    return
                call = self._senders.subscribe(addr, request)
                self._relays.add(call)
                async for frame in call:
                    backoff.reset()
                    yield frame
            except asyncio.CancelledError:
                if not self._closing:  # the client went away
                    raise
            except errors.NotifymeshError as e:
                if call is None:  # pick(): no live sender yet
                    if not isinstance(e, errors.Unavailable):
                        raise
                else:
                    if not self._closing and e.code not in (*errors.RETRYABLE_CODES, grpc.StatusCode.CANCELLED):
                        raise
                    if e.code == grpc.StatusCode.UNAVAILABLE:
                        # Perhaps the sender died: if its address refuses connections, its lease
                        # ends now and the ring moves on, instead of after the lease (3 s).
                        self.suspects.suspect("sender", addr)
                    log.info("sender stream broke; reconnecting", extra=fields(subscription=name, code=e.code.name))
            finally:
                if call is not None:
                    self._relays.discard(call)
                    call.cancel()
            if not self._closing:
                # A dead sender is seen gone when its lease ends: the new owner is tried
                # at once then, not after the backoff (stream takeover measured 5.0 s
                # with the backoff alone).
                await backoff.sleep(cut_short=senders_changed)

    def _pairs(self, name: str, ack_ids) -> dict[AckGroup, list[str]]:
        """The ack ids by pair, checked here, before acks of several subscriptions
        share a call: one client's bad ack id must fail only its own request. name "":
        each ack id names its own subscription (a client merged the acks of several)."""
        if name:
            validation.name("subscription", name)
        validation.batch(len(ack_ids), self._config, what="ack ids")
        if not name:
            validation.ack_ids_not_reserved(ack_ids)
        # Each id parsed once, here (it was parsed a second time to route it: 12 % of
        # the frontend's samples went to parsing acked ids at K=10).
        pairs = ack_ids_by_pair(ack_ids)
        for pair, ids in pairs.items():
            if name and pair.subscription != name:
                raise errors.InvalidArgument(f"ack id {ids[0]!r} is not of subscription {name!r}")
        return pairs

    async def acknowledge(self, name: str, ack_ids) -> None:
        """Each ack id to the sender that owns its (subscription, partition) pair."""
        by_owner = self._senders.by_owner(self._pairs(name, ack_ids))
        await asyncio.gather(*(self._acks.submit(addr, ids) for addr, ids in by_owner.items()))

    async def modify_ack_deadline(self, name: str, ack_ids, ack_deadline) -> None:
        seconds = ack_deadline.ToMilliseconds() / 1000
        if seconds != 0:
            validation.seconds_between("ack deadline", seconds, 0, self._config.max_ack_deadline_s)
        pairs = self._pairs(name, ack_ids)
        request = pubsub_pb2.ModifyAckDeadlineRequest(subscription=name, ack_ids=ack_ids, ack_deadline=ack_deadline)
        await self._senders.modify_ack_deadline(request, pairs)

    async def nack(self, request: pubsub_pb2.NackRequest) -> None:
        pairs = self._pairs(request.subscription, request.ack_ids)
        if request.HasField("delay"):
            validation.seconds_between("nack delay", request.delay.ToMilliseconds() / 1000, 0,
                                       self._config.max_ack_deadline_s)
        validation.reason(request.reason)
        await self._senders.nack(request, pairs)

    async def pull(self, request: pubsub_pb2.PullRequest) -> pubsub_pb2.PullResponse:
        """A unary pull, served by the senders that own the subscription's pairs (they
        lease from the partitions' leaders; several: frontend.fanin.pull)."""
        validation.name("subscription", request.subscription)
        forwarded = pubsub_pb2.PullRequest()
        forwarded.CopyFrom(request)
        forwarded.max_messages = validation.count_between("max_messages", request.max_messages or PULL_MESSAGES,
                                                          1, MAX_PULL_MESSAGES)
        validation.seconds_between("pull wait", request.wait.ToMilliseconds() / 1000, 0, MAX_PULL_WAIT_S)
        record = await self._cluster.subscription(request.subscription)  # NOT_FOUND before any sender work
        partitions = self._partition_count(record.topic)
        owners = self._senders.owners(request.subscription, partitions) if partitions > 1 else {}
        if len(owners) <= 1:
            return await self._senders.pull(forwarded)
        return await fanin.pull(forwarded, owners, partitions, next(self._turn), self._senders.pull)

    # -- dead letters and message status: asked of each partition's leader ------

    async def _each_partition(self, subscription: str, method: str, request_of) -> list:
        validation.name("subscription", subscription)
        record = await self._cluster.subscription(subscription)
        topic = await self._cluster.topic(record.topic)
        return await asyncio.gather(*(self._storage.call(method, record.topic, p, request_of(record.topic, p))
                                      for p in range(max(1, topic.partition_count))))

    async def list_dead_letters(self, request: pubsub_pb2.ListDeadLettersRequest) -> pubsub_pb2.ListDeadLettersResponse:
        """A page: up to page_size from each partition after its position in the
        token, merged by dead-letter time. The merge takes from the head of each
        partition's listing (in seq order), so what it takes of each is a prefix
        and the next token moves that partition past it alone."""
        subscription = request.subscription
        size = validation.page_size(request.page_size or request.max_messages,  # the old name
                                    DEAD_LETTERS_PAGE, MAX_DEAD_LETTERS_PAGE)
        position = DeadLetterPageToken.parse(request.page_token, subscription)
        replies = await self._each_partition(subscription, "ListDeadLetters", lambda topic, p: (
            storage_pb2.StorageListDeadLettersRequest(topic=topic, partition=p, subscription=subscription,
                                                      max_messages=size, after_seq=position.after.get(p))))
        listed = [[(to_ms(dead.dead_letter_time), p, seq, dead) for seq, dead in zip(reply.seqs, reply.dead_letters)]
                  for p, reply in enumerate(replies)]
        page = list(itertools.islice(heapq.merge(*listed), size))
        for *_, dead in page:  # as subscribers see messages: without the trace context
            tracing.hide(dead.message.attributes)
        after = dict(position.after)
        for _, p, seq, _ in page:
            after[p] = seq
        more = any(reply.more for reply in replies) or len(page) < sum(map(len, listed))
        return pubsub_pb2.ListDeadLettersResponse(
            dead_letters=[dead for *_, dead in page],
            next_page_token=DeadLetterPageToken(subscription, after).encode() if more else "")

    async def redrive_dead_letters(self, subscription: str) -> int:
        replies = await self._each_partition(subscription, "RedriveDeadLetters", lambda topic, p: (
            storage_pb2.StorageRedriveDeadLettersRequest(topic=topic, partition=p, subscription=subscription)))
        redriven = sum(reply.redriven for reply in replies)
        log.info("dead letters redriven", extra=fields(subscription=subscription, messages=redriven))
        return redriven

    async def seek(self, request: pubsub_pb2.SeekRequest) -> pubsub_pb2.SeekResponse:
        """Seeks every partition, each on its leader (a partition retried seeks to
        the same point again: its messages from there may be delivered twice)."""
        target = request.WhichOneof("target")
        if target is None or (target == "to_end" and not request.to_end):
            raise errors.InvalidArgument("a seek needs a time or to_end")
        time_ms = to_ms(request.time) if target == "time" else 0
        replies = await self._each_partition(request.subscription, "Seek", lambda topic, p: (
            storage_pb2.StorageSeekRequest(topic=topic, partition=p, subscription=request.subscription,
                                           time_ms=time_ms, to_end=target == "to_end")))
        limited = sum(reply.limited for reply in replies)
        log.info("subscription seek", extra=fields(subscription=request.subscription, target=target,
                                                   time_ms=time_ms, partitions_limited=limited))
        return pubsub_pb2.SeekResponse(partitions_limited=limited)

    async def provider_status(self, channel: int) -> notify_pb2.GetProviderStatusResponse:
        """The live senders' circuit breakers of the providers (sender/breaker.py)."""
        return await self._senders.provider_status(channel)

    async def message_status(self, message_id: str) -> pubsub_pb2.MessageStatus:
        """The id names its partition and a hash of its topic; the leader of that
        shard knows the rest."""
        parsed = MessageId.parse(message_id)
        partition = parsed.partition
        # A partition the topic does not have has no leader to ask (its calls would be
        # retried as UNAVAILABLE): such an id names no message.
        for topic in [t for t, record in self._cluster.topics.items.items()
                      if topic_hash(t) == parsed.topic_hash and partition < max(1, record.partition_count)]:
            try:
                return tracing.status_with_trace_id(await self._storage.call(
                    "GetMessageStatus", topic, partition,
                    storage_pb2.StorageGetMessageStatusRequest(topic=topic, partition=partition, message_id=message_id)))
            except grpc.aio.AioRpcError as e:
                if e.code() != grpc.StatusCode.NOT_FOUND:
                    raise
        raise errors.NotFound(f"message {message_id!r} is not kept (any more)")

    # -- describe: numbers from each partition's leader, streams from the senders -----

    async def describe_subscription(self, name: str) -> pubsub_pb2.SubscriptionStats:
        validation.name("subscription", name)
        record = await self._cluster.subscription(name)
        described = await self._describe(record.topic, [name])
        if not described:  # deleted meanwhile
            raise errors.NotFound(f"subscription {name!r} not found")
        return described[0]

    async def describe_topic(self, name: str) -> pubsub_pb2.TopicStats:
        validation.name("topic", name)
        record = await self._cluster.topic(name)
        names = sorted(self._cluster.subscriptions.groups.get(name, {}))
        return stats.of_topic(name, max(1, record.partition_count), await self._describe(name, names))

    async def _describe(self, topic: str, names: list[str]) -> list[pubsub_pb2.SubscriptionStats]:
        """The named subscriptions of the topic, each per partition and in total; those
        a partition's leader does not know (deleted meanwhile) are left out."""
        if not names:
            return []
        partitions = range(max(1, (await self._cluster.topic(topic)).partition_count))
        *replies, streams = await asyncio.gather(
            *(self._storage.call("DescribeSubscriptions", topic, p, storage_pb2.DescribeSubscriptionsRequest(
                topic=topic, partition=p, subscriptions=names)) for p in partitions),
            self._senders.count_streams(names))
        by_name: dict[str, dict[int, pubsub_pb2.DeliveryStats]] = {name: {} for name in names}
        for partition, reply in zip(partitions, replies):
            for described in reply.subscriptions:
                by_name.get(described.name, {})[partition] = described.stats
        return [stats.of_subscription(name, topic, by_name[name], streams.get(name, 0))
                for name in names if len(by_name[name]) == len(partitions)]

    async def cluster_status(self) -> cluster_pb2.ClusterStatus:
        """Members from etcd; per shard, the replica set and leader from etcd and
        the commit and each replica's progress from the leader itself."""
        cluster = self._cluster
        members = cluster.described_members()

        async def describe(addr):
            stub = node_pb2_grpc.NodeStub(cluster.channel(addr))
            try:
                return (await stub.Describe(node_pb2.DescribeRequest(), timeout=2)).shards
            except grpc.aio.AioRpcError:
                return []

        reported = {}
        for shards in await asyncio.gather(*(describe(a) for a in cluster.live("storage").values())):
            for shard in shards:
                reported[(shard.topic, shard.partition)] = shard
        status = cluster_pb2.ClusterStatus(members=members, draining=sorted(cluster.draining.items))
        for name, placement in sorted(cluster.placements.items.items()):
            leader = cluster.leaders.items.get(name)
            shard = status.shards.add(topic=placement.topic, partition=placement.partition,
                                      replicas=placement.replicas)
            if leader is not None:
                shard.leader = leader.node
                shard.epoch = cluster.epoch(name)
            led = reported.get((placement.topic, placement.partition))
            if led is not None and led.leader == shard.leader:
                shard.commit = led.commit
                shard.replica_status.extend(led.replica_status)
                shard.backlogs.extend(led.backlogs)
        return status

    def close_streams(self) -> None:
        """Ends every relayed stream; subscribers reconnect to another frontend."""
        self._closing = True
        for call in list(self._relays):
            call.cancel()
