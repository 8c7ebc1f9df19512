"""What the frontend does with each public call, without gRPC plumbing: validate,
then route to the service that owns the work.

Topic and subscription lookups come from the local mirror of etcd (the metadata
cache, kept current by a watch), so a publish costs no call to metadata.
"""

import asyncio
import logging

import grpc

from gen.notifymesh.internal.v1 import metadata_pb2_grpc, sender_pb2_grpc
from gen.notifymesh.v1 import pubsub_pb2
from notifymesh import errors, rpc, validation
from notifymesh.batching import Coalescer
from notifymesh.cluster import Cluster
from notifymesh.config import Config
from notifymesh.log import fields
from storage.client import StorageClient

log = logging.getLogger(__name__)

RECONNECT_BACKOFF_S = (0.05, 2.0)
MERGED_MAX_ITEMS = 5000  # messages or ack ids in one merged downstream call


class Gateway:
    def __init__(self, cluster: Cluster, config: Config):
        self._cluster, self._config = cluster, config
        self._storage = StorageClient(cluster)
        # Concurrent publishes to a topic share one Append; concurrent acks of a
        # subscription one call to its sender.
        self._appends = Coalescer(self._storage.append, max_items=MERGED_MAX_ITEMS,
                                  size_of=lambda m: len(m.data) + 64)
        self._acks = Coalescer(self._send_acks, max_items=MERGED_MAX_ITEMS)
        self._relays: set[grpc.aio.UnaryStreamCall] = set()
        self._closing = False

    # -- admin: forwarded to any live metadata replica --------------------------

    async def admin(self, method: str, request):
        """Calls Metadata.<method>; validation of names happens there as well as here."""
        async def attempt(timeout):
            stub = metadata_pb2_grpc.MetadataStub(self._cluster.channel(self._cluster.any_member("metadata")))
            return await getattr(stub, method)(request, timeout=timeout)
        return await rpc.call("Metadata", attempt)

    # -- publish ----------------------------------------------------------------

    async def publish(self, topic: str, messages) -> list[str]:
        validation.name("topic", topic)
        validation.batch(len(messages), self._config)
        for index, message in enumerate(messages):
            validation.message(index, message, self._config)
        await self._cluster.topic(topic)  # NOT_FOUND before any storage work
        return await self._appends.submit(topic, messages)

    # -- delivery ---------------------------------------------------------------

    async def subscribe(self, name: str, max_outstanding: int):
        """Relays the stream of the sender that owns the subscription; when that sender
        goes away, reconnects to the new owner without ending the client's stream."""
        validation.name("subscription", name)
        if max_outstanding < 0:
            raise errors.InvalidArgument("max_outstanding_messages must not be negative")
        await self._cluster.subscription(name)
        request = pubsub_pb2.SubscribeRequest(subscription=name, max_outstanding_messages=max_outstanding)
        backoff = RECONNECT_BACKOFF_S[0]
        while not self._closing:
            call = None
            try:
                _, addr = self._cluster.owner("sender", name)
                call = sender_pb2_grpc.SenderStub(self._cluster.channel(addr)).Subscribe(request)
                self._relays.add(call)
                async for frame in call:
                    backoff = RECONNECT_BACKOFF_S[0]
                    yield frame
            except grpc.aio.AioRpcError as e:
                if self._closing:
                    return
                if e.code() not in (*errors.RETRYABLE_CODES, grpc.StatusCode.CANCELLED):
                    raise
                log.info("sender stream broke; reconnecting", extra=fields(subscription=name, code=e.code().name))
            except errors.Unavailable:
                pass  # no live sender yet
            finally:
                if call is not None:
                    self._relays.discard(call)
                    call.cancel()
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, RECONNECT_BACKOFF_S[1])

    def _ack_ids(self, name: str, ack_ids) -> list[str]:
        validation.name("subscription", name)
        validation.batch(len(ack_ids), self._config, what="ack ids")
        if not all(ack_ids):
            raise errors.InvalidArgument("empty ack id")
        return list(ack_ids)

    async def acknowledge(self, name: str, ack_ids) -> None:
        await self._acks.submit(name, self._ack_ids(name, ack_ids))

    async def _send_acks(self, name: str, ack_ids: list[str]) -> None:
        request = pubsub_pb2.AcknowledgeRequest(subscription=name, ack_ids=ack_ids)
        await rpc.call("Sender.Acknowledge", lambda t: self._sender(name).Acknowledge(request, timeout=t))

    async def modify_ack_deadline(self, name: str, ack_ids, ack_deadline) -> None:
        seconds = ack_deadline.ToMilliseconds() / 1000
        if seconds != 0:
            validation.seconds_between("ack deadline", seconds, 0, self._config.max_ack_deadline_s)
        request = pubsub_pb2.ModifyAckDeadlineRequest(
            subscription=name, ack_ids=self._ack_ids(name, ack_ids), ack_deadline=ack_deadline)
        await rpc.call("Sender.ModifyAckDeadline", lambda t: self._sender(name).ModifyAckDeadline(request, timeout=t))

    def _sender(self, subscription: str) -> sender_pb2_grpc.SenderStub:
        _, addr = self._cluster.owner("sender", subscription)
        return sender_pb2_grpc.SenderStub(self._cluster.channel(addr))

    def close_streams(self) -> None:
        """Ends every relayed stream; subscribers reconnect to another frontend."""
        self._closing = True
        for call in list(self._relays):
            call.cancel()
