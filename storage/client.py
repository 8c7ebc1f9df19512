"""Calls to the storage node that owns a topic (the ring over live storage members)."""

from gen.notifymesh.internal.v1 import storage_pb2, storage_pb2_grpc
from gen.notifymesh.v1 import pubsub_pb2
from notifymesh import rpc
from notifymesh.cluster import Cluster


class StorageClient:
    def __init__(self, cluster: Cluster):
        self._cluster = cluster

    def _stub(self, topic: str) -> storage_pb2_grpc.StorageStub:
        _, addr = self._cluster.owner("storage", topic)
        return storage_pb2_grpc.StorageStub(self._cluster.channel(addr))

    async def append(self, topic: str, messages) -> list[str]:
        request = storage_pb2.AppendRequest(topic=topic, messages=messages)
        response = await rpc.call("Storage.Append", lambda t: self._stub(topic).Append(request, timeout=t))
        return list(response.message_ids)

    async def pull(self, topic: str, subscription: str, max_messages: int, ack_deadline_ms: int,
                   wait_ms: int) -> list[pubsub_pb2.ReceivedMessage]:
        request = storage_pb2.PullRequest(topic=topic, subscription=subscription, max_messages=max_messages,
                                          ack_deadline_ms=ack_deadline_ms, wait_ms=wait_ms)
        response = await rpc.call("Storage.Pull", lambda t: self._stub(topic).Pull(request, timeout=t))
        return list(response.received_messages)

    async def acknowledge(self, topic: str, subscription: str, ack_ids: list[str]) -> None:
        request = storage_pb2.StorageAcknowledgeRequest(topic=topic, subscription=subscription, ack_ids=ack_ids)
        await rpc.call("Storage.Acknowledge", lambda t: self._stub(topic).Acknowledge(request, timeout=t))

    async def modify_ack_deadline(self, topic: str, subscription: str, ack_ids: list[str],
                                  ack_deadline_ms: int) -> None:
        request = storage_pb2.StorageModifyAckDeadlineRequest(
            topic=topic, subscription=subscription, ack_ids=ack_ids, ack_deadline_ms=ack_deadline_ms)
        await rpc.call("Storage.ModifyAckDeadline",
                       lambda t: self._stub(topic).ModifyAckDeadline(request, timeout=t))

    async def attach_subscription(self, subscription: pubsub_pb2.Subscription) -> None:
        request = storage_pb2.AttachSubscriptionRequest(subscription=subscription)
        await rpc.call("Storage.AttachSubscription",
                       lambda t: self._stub(subscription.topic).AttachSubscription(request, timeout=t))

    async def handoff(self, topic: str, messages) -> None:
        request = storage_pb2.HandoffRequest(topic=topic, messages=messages)
        await rpc.call("Storage.Handoff", lambda t: self._stub(topic).Handoff(request, timeout=t))
