"""The internal clients: how one service calls another, found through the
cluster view, with the retry rules of notifymesh.server.rpc.

- StorageClient: the leader of a shard (a topic's partition), as etcd names it.
  Each try looks the leader up again, so a retry after a failover reaches the new one.
- SenderClient: the senders that own a subscription's (subscription, partition)
  pairs on the ring.
- MetadataClient: any live metadata service (it is stateless).
"""

import asyncio
import logging

import grpc

from gen.notifymesh.internal.v1 import metadata_pb2_grpc, sender_pb2, sender_pb2_grpc, storage_pb2, storage_pb2_grpc
from gen.notifymesh.v1 import notify_pb2, pubsub_pb2
from notifymesh.contracts import AckGroup
from notifymesh.log import fields
from notifymesh.server import rpc
from notifymesh.server.cluster import Cluster
from notifymesh.server.relay import OpenCall, RelayedFrames, SenderRelays

log = logging.getLogger(__name__)


PULL_TIMEOUT_S = 30  # a long poll waits up to its wait_ms (at most 10 s) for messages
COUNT_STREAMS_TIMEOUT_S = 2  # describe's numbers wait no longer for a sender's count of streams


class StorageClient:
    def __init__(self, cluster: Cluster):
        self._cluster = cluster
        # A stub per channel: making one per call cost a busy sender 5 % of its CPU
        # (py-spy, bench/notify.py). Bound: one per address, like the cluster's channels.
        self._stubs: dict[str, tuple[object, storage_pb2_grpc.StorageStub]] = {}

    def _leader(self, topic: str, partition: int) -> storage_pb2_grpc.StorageStub:
        addr = self._cluster.leader(topic, partition).addr
        channel = self._cluster.channel(addr)
        cached = self._stubs.get(addr)
        if cached is None or cached[0] is not channel:  # the channel was made again (closed, reconnected)
            cached = self._stubs[addr] = (channel, storage_pb2_grpc.StorageStub(channel))
        return cached[1]

    async def call(self, method: str, topic: str, partition: int, request):
        """Storage.<method> on the leader of the topic's partition."""
        return await rpc.call(f"Storage.{method}", lambda t: getattr(
            self._leader(topic, partition), method)(request, timeout=t), self._cluster.next_leader_change)

    async def append(self, shard: tuple[str, int], messages) -> list[str]:
        """The messages must carry their ids: a retry (after a timeout or a failover)
        is marked as one, and the leader skips the ids it already has."""
        topic, partition = shard
        request = storage_pb2.AppendRequest(topic=topic, partition=partition, messages=messages)
        tries = 0

        async def attempt(timeout):
            nonlocal tries
            request.retry = tries > 0
            tries += 1
            return await self._leader(topic, partition).Append(request, timeout=timeout)

        # A retry waits out its backoff or a leader change, whichever comes first: a
        # failover's new leader is tried at once.
        response = await rpc.call("Storage.Append", attempt, self._cluster.next_leader_change)
        return list(response.message_ids)

    def pull_stream(self) -> rpc.LockstepStream:
        """A stream of Pulls, for pull()."""
        return rpc.LockstepStream(lambda addr: storage_pb2_grpc.StorageStub(self._cluster.channel(addr)).Pull())

    async def pull(self, stream: rpc.LockstepStream, request: storage_pb2.PullRequest) -> storage_pb2.PullResponse:
        """A long poll of the shard's leader on stream (opened again when the leader moved)."""
        addr = self._cluster.leader(request.topic, request.partition).addr
        return await stream.exchange(addr, request, PULL_TIMEOUT_S)

    async def acknowledge(self, topic: str, partition: int, subscription: str, ack_ids: list[str]) -> None:
        await self.call("Acknowledge", topic, partition, storage_pb2.StorageAcknowledgeRequest(
            topic=topic, partition=partition, subscription=subscription, ack_ids=ack_ids))

    async def modify_ack_deadline(self, topic: str, partition: int, subscription: str, ack_ids: list[str],
                                  ack_deadline_ms: int) -> None:
        await self.call("ModifyAckDeadline", topic, partition, storage_pb2.StorageModifyAckDeadlineRequest(
            topic=topic, partition=partition, subscription=subscription, ack_ids=ack_ids,
            ack_deadline_ms=ack_deadline_ms))

    async def nack(self, topic: str, partition: int, request: pubsub_pb2.NackRequest, ack_ids: list[str],
                   deferred: bool = False) -> None:
        """request's ack ids of this partition: ack_ids. deferred: no attempt counted
        (StorageNackRequest.deferred)."""
        nack = storage_pb2.StorageNackRequest(topic=topic, partition=partition, subscription=request.subscription,
                                              ack_ids=ack_ids, terminal=request.terminal, reason=request.reason,
                                              deferred=deferred)
        if request.HasField("delay"):
            nack.delay_ms = request.delay.ToMilliseconds()
        await self.call("Nack", topic, partition, nack)

    async def attach_subscription(self, subscription: pubsub_pb2.Subscription, partitions: int) -> None:
        for partition in range(partitions):
            await self.call("AttachSubscription", subscription.topic, partition, storage_pb2.AttachSubscriptionRequest(
                subscription=subscription, partition=partition))


class SenderClient:
    RELAY = "/notifymesh.internal.v1.Sender/Relay"
    PULL = "/notifymesh.internal.v1.Sender/Pull"

    def __init__(self, cluster: Cluster, stream_max_outstanding: int = 1000):
        """stream_max_outstanding: the window of a relayed stream that asks for none
        (config.stream_max_outstanding)."""
        self._cluster = cluster
        self._relays = SenderRelays(self._relay_call, stream_max_outstanding)

    def owner_addr(self, subscription: str, partition: int = 0) -> str:
        """The address of the sender that owns the pair (Unavailable without one)."""
        return self._cluster.owner("sender", subscription, partition).addr

    def owners(self, subscription: str, partitions: int) -> dict[str, list[int]]:
        """address -> the partitions of subscription (of a topic of that many) the sender there owns."""
        owned: dict[str, list[int]] = {}
        for partition in range(partitions):
            owned.setdefault(self.owner_addr(subscription, partition), []).append(partition)
        return owned

    def by_owner(self, pairs: dict[AckGroup, list[str]]) -> dict[str, list[str]]:
        """The ack ids of each pair (contracts.ack_ids_by_pair) by the address of the
        sender that owns the pair."""
        grouped: dict[str, list[str]] = {}
        for (subscription, partition), ids in pairs.items():
            grouped.setdefault(self.owner_addr(subscription, partition), []).extend(ids)
        return grouped

    async def _per_pair(self, method: str, request, groups: dict[AckGroup, list[str]]) -> None:
        """Sender.<method> with the request's ack ids split by pair (groups: the
        caller's contracts.ack_ids_by_pair of them), each part to its pair's owner;
        each try looks the owner up again, so a retry after a takeover reaches the new one."""

        async def one(pair, ack_ids: list[str]) -> None:
            part = request
            if len(groups) > 1:
                part = type(request)()
                part.CopyFrom(request)
                part.ack_ids[:] = ack_ids
            await rpc.call(f"Sender.{method}", lambda t: getattr(self._stub(self.owner_addr(*pair)), method)(
                part, timeout=t))
        await asyncio.gather(*(one(pair, ids) for pair, ids in groups.items()))

    def _stub(self, addr: str) -> sender_pb2_grpc.SenderStub:
        return sender_pb2_grpc.SenderStub(self._cluster.channel(addr))

    def subscribe(self, addr: str, request: pubsub_pb2.SubscribeRequest) -> RelayedFrames:
        """The sender's frames of one client stream, as serialized SubscribeResponses:
        a logical stream on this frontend's one Relay call to addr (notifymesh.server.relay)."""
        return self._relays.subscribe(addr, request)

    def _relay_call(self, addr: str) -> OpenCall:
        return self._cluster.channel(addr).stream_stream(
            self.RELAY, request_serializer=sender_pb2.RelayUp.SerializeToString,
            response_deserializer=sender_pb2.RelayDown.FromString)

    async def acknowledge(self, addr: str, ack_ids: list[str]) -> None:
        """Acks of any subscriptions the sender at addr owns (each ack id names its own)."""
        request = pubsub_pb2.AcknowledgeRequest(ack_ids=ack_ids)
        await rpc.call("Sender.Acknowledge", lambda t: self._stub(addr).Acknowledge(request, timeout=t))

    async def modify_ack_deadline(self, request: pubsub_pb2.ModifyAckDeadlineRequest,
                                  pairs: dict[AckGroup, list[str]]) -> None:
        await self._per_pair("ModifyAckDeadline", request, pairs)

    async def nack(self, request: pubsub_pb2.NackRequest, pairs: dict[AckGroup, list[str]]) -> None:
        await self._per_pair("Nack", request, pairs)

    async def count_streams(self, subscriptions: list[str]) -> dict[str, int]:
        """Subscribe streams per subscription: the most any live sender counts (a
        client's stream of a subscription whose pairs several senders own is one
        stream to each of them; an owner that just changed may still serve some); a
        sender that does not answer within COUNT_STREAMS_TIMEOUT_S counts none."""
        request = sender_pb2.CountStreamsRequest(subscriptions=subscriptions)

        async def one(addr: str) -> dict[str, int]:
            try:
                return dict((await self._stub(addr).CountStreams(request, timeout=COUNT_STREAMS_TIMEOUT_S)).streams)
            except grpc.aio.AioRpcError as e:
                log.warning("sender did not count its streams", extra=fields(addr=addr, code=e.code().name))
                return {}

        counts: dict[str, int] = {}
        for answer in await asyncio.gather(*(one(addr) for addr in self._cluster.live("sender").values())):
            for name, count in answer.items():
                counts[name] = max(counts.get(name, 0), count)
        return counts

    async def provider_status(self, channel: int) -> notify_pb2.GetProviderStatusResponse:
        """Every live sender's circuit breakers of the providers (of channel; 0: all);
        a sender that does not answer within COUNT_STREAMS_TIMEOUT_S is named unanswered."""
        request = notify_pb2.GetProviderStatusRequest(channel=channel)
        live = sorted(self._cluster.live("sender").items())

        async def one(addr: str) -> notify_pb2.GetProviderStatusResponse | None:
            try:
                return await self._stub(addr).GetProviderStatus(request, timeout=COUNT_STREAMS_TIMEOUT_S)
            except grpc.aio.AioRpcError as e:
                log.warning("sender did not tell its providers' status", extra=fields(addr=addr, code=e.code().name))
                return None

        merged = notify_pb2.GetProviderStatusResponse()
        for (node, _), answer in zip(live, await asyncio.gather(*(one(addr) for _, addr in live))):
            if answer is None:
                merged.unanswered_senders.append(node)
            else:
                merged.providers.extend(answer.providers)
        merged.providers.sort(key=lambda s: (s.channel, s.priority, s.name, s.sender))
        return merged

    async def pull(self, request: pubsub_pb2.PullRequest, addr: str = "") -> pubsub_pb2.PullResponse:
        """The sender at addr (by default the owner of the subscription's partition 0)
        answers a SubscribeFrame, which is a PullResponse on the wire; its timeout is
        the pull's wait and the policy's."""
        wait_s = request.wait.ToMilliseconds() / 1000

        def attempt(timeout):
            call = self._cluster.channel(addr or self.owner_addr(request.subscription)).unary_unary(
                self.PULL, request_serializer=pubsub_pb2.PullRequest.SerializeToString,
                response_deserializer=pubsub_pb2.PullResponse.FromString)
            return call(request, timeout=wait_s + timeout)
        return await rpc.call("Sender.Pull", attempt)


class MetadataClient:
    def __init__(self, cluster: Cluster):
        self._cluster = cluster

    async def call(self, method: str, request):
        """Metadata.<method> on any live metadata service."""
        async def attempt(timeout):
            stub = metadata_pb2_grpc.MetadataStub(self._cluster.channel(self._cluster.any_member("metadata")))
            return await getattr(stub, method)(request, timeout=timeout)
        return await rpc.call("Metadata", attempt)
