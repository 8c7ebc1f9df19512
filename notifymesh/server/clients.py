"""Calls to the leader of a shard (a topic's partition), as etcd names it. Each
try looks the leader up again, so a retry after a failover reaches the new one."""

from gen.notifymesh.internal.v1 import storage_pb2, storage_pb2_grpc
from gen.notifymesh.v1 import pubsub_pb2
from notifymesh.server import rpc
from notifymesh.server.cluster import Cluster


PULL_TIMEOUT_S = 30  # a long poll waits up to its wait_ms (about 1 s) for messages


class StorageClient:
    def __init__(self, cluster: Cluster):
        self._cluster = cluster

    def _leader(self, topic: str, partition: int) -> storage_pb2_grpc.StorageStub:
        _, addr, _ = self._cluster.leader(topic, partition)
        return storage_pb2_grpc.StorageStub(self._cluster.channel(addr))

    async def call(self, method: str, topic: str, partition: int, request):
        """Storage.<method> on the leader of the topic's partition."""
        return await rpc.call(f"Storage.{method}", lambda t: getattr(
            self._leader(topic, partition), method)(request, timeout=t))

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

        response = await rpc.call("Storage.Append", attempt)
        return list(response.message_ids)

    def pull_stream(self) -> rpc.LockstepStream:
        """A stream of Pulls, for pull()."""
        return rpc.LockstepStream(lambda addr: storage_pb2_grpc.StorageStub(self._cluster.channel(addr)).Pull())

    async def pull(self, stream: rpc.LockstepStream, request: storage_pb2.PullRequest) -> storage_pb2.PullResponse:
        """A long poll of the shard's leader on stream (opened again when the leader moved)."""
        _, addr, _ = self._cluster.leader(request.topic, request.partition)
        return await stream.exchange(addr, request, PULL_TIMEOUT_S)

    async def acknowledge(self, topic: str, partition: int, subscription: str, ack_ids: list[str]) -> None:
        await self.call("Acknowledge", topic, partition, storage_pb2.StorageAcknowledgeRequest(
            topic=topic, partition=partition, subscription=subscription, ack_ids=ack_ids))

    async def modify_ack_deadline(self, topic: str, partition: int, subscription: str, ack_ids: list[str],
                                  ack_deadline_ms: int) -> None:
        await self.call("ModifyAckDeadline", topic, partition, storage_pb2.StorageModifyAckDeadlineRequest(
            topic=topic, partition=partition, subscription=subscription, ack_ids=ack_ids,
            ack_deadline_ms=ack_deadline_ms))

    async def nack(self, topic: str, partition: int, request: pubsub_pb2.NackRequest, ack_ids: list[str]) -> None:
        """request's ack ids of this partition: ack_ids."""
        nack = storage_pb2.StorageNackRequest(topic=topic, partition=partition, subscription=request.subscription,
                                              ack_ids=ack_ids, terminal=request.terminal, reason=request.reason)
        if request.HasField("delay"):
            nack.delay_ms = request.delay.ToMilliseconds()
        await self.call("Nack", topic, partition, nack)

    async def attach_subscription(self, subscription: pubsub_pb2.Subscription, partitions: int) -> None:
        for partition in range(partitions):
            await self.call("AttachSubscription", subscription.topic, partition, storage_pb2.AttachSubscriptionRequest(
                subscription=subscription, partition=partition))
