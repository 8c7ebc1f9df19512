"""Topics and subscriptions as records in etcd.

etcd's Raft makes them durable and replicated, so this service keeps no state
of its own and any number of replicas can serve. Creates and deletes are etcd
transactions, so two concurrent creates of one name cannot both succeed.
"""

import logging

import aetcd
from google.protobuf import duration_pb2

from gen.notifymesh.v1 import pubsub_pb2
from notifymesh import errors, validation
from notifymesh.cluster import SUBSCRIPTIONS, TOPICS
from notifymesh.config import Config
from storage.client import StorageClient
from notifymesh.clock import now_ms, timestamp
from notifymesh.log import fields

log = logging.getLogger(__name__)


class MetadataStore:
    def __init__(self, etcd: aetcd.Client, config: Config, storage: StorageClient):
        self._etcd, self._config, self._storage = etcd, config, storage
        self._txn = etcd.transactions

    async def create_topic(self, topic: pubsub_pb2.Topic) -> pubsub_pb2.Topic:
        validation.name("topic", topic.name)
        record = pubsub_pb2.Topic()
        record.CopyFrom(topic)
        if record.HasField("message_retention"):
            validation.seconds_between("message retention", record.message_retention.ToTimedelta().total_seconds(),
                                       60, 31 * 24 * 3600)
        else:
            record.message_retention.FromSeconds(int(self._config.default_retention_s))
        record.create_time.CopyFrom(timestamp(now_ms()))
        key = TOPICS + topic.name.encode()
        created, _ = await self._etcd.transaction(
            compare=[self._txn.create(key) == 0],
            success=[self._txn.put(key, record.SerializeToString())], failure=[])
        if not created:
            raise errors.AlreadyExists(f"topic {topic.name!r} already exists")
        log.info("topic created", extra=fields(topic=topic.name))
        return record

    async def get_topic(self, name: str) -> pubsub_pb2.Topic:
        kv = await self._etcd.get(TOPICS + validation.name("topic", name).encode())
        if kv is None:
            raise errors.NotFound(f"topic {name!r} not found")
        return pubsub_pb2.Topic.FromString(kv.value)

    async def list_topics(self) -> list[pubsub_pb2.Topic]:
        return [pubsub_pb2.Topic.FromString(kv.value) for kv in await self._etcd.get_prefix(TOPICS)]

    async def delete_topic(self, name: str) -> None:
        await self.get_topic(name)
        attached = [s.name for s in await self.list_subscriptions(topic=name)]
        if attached:
            raise errors.FailedPrecondition(
                f"topic {name!r} has {len(attached)} subscription(s) ({', '.join(attached[:5])}); delete them first")
        deleted = await self._etcd.delete(TOPICS + name.encode())
        if not deleted:
            raise errors.NotFound(f"topic {name!r} not found")
        log.info("topic deleted", extra=fields(topic=name))

    async def create_subscription(self, subscription: pubsub_pb2.Subscription) -> pubsub_pb2.Subscription:
        validation.name("subscription", subscription.name)
        validation.name("topic", subscription.topic)
        record = pubsub_pb2.Subscription()
        record.CopyFrom(subscription)
        config = self._config
        if record.HasField("ack_deadline"):
            validation.seconds_between("ack deadline", record.ack_deadline.ToTimedelta().total_seconds(),
                                       config.min_ack_deadline_s, config.max_ack_deadline_s)
        else:
            record.ack_deadline.CopyFrom(duration_pb2.Duration(
                seconds=int(config.default_ack_deadline_s),
                nanos=int(config.default_ack_deadline_s % 1 * 1e9)))
        record.create_time.CopyFrom(timestamp(now_ms()))
        key = SUBSCRIPTIONS + subscription.name.encode()
        topic_key = TOPICS + subscription.topic.encode()
        created, _ = await self._etcd.transaction(
            compare=[self._txn.create(key) == 0, self._txn.version(topic_key) > 0],
            success=[self._txn.put(key, record.SerializeToString())], failure=[])
        if not created:
            if await self._etcd.get(key) is not None:
                raise errors.AlreadyExists(f"subscription {subscription.name!r} already exists")
            raise errors.NotFound(f"topic {subscription.topic!r} not found")
        log.info("subscription created", extra=fields(subscription=record.name, topic=record.topic))
        # Storage also attaches it when its watch sees the record; attaching now closes
        # the gap for messages published right after this call returns.
        try:
            await self._storage.attach_subscription(record)
        except Exception as e:
            log.warning("attach at storage failed; its watch will attach it",
                        extra=fields(subscription=record.name, error=repr(e)))
        return record

    async def get_subscription(self, name: str) -> pubsub_pb2.Subscription:
        kv = await self._etcd.get(SUBSCRIPTIONS + validation.name("subscription", name).encode())
        if kv is None:
            raise errors.NotFound(f"subscription {name!r} not found")
        return pubsub_pb2.Subscription.FromString(kv.value)

    async def list_subscriptions(self, topic: str = "") -> list[pubsub_pb2.Subscription]:
        subscriptions = [pubsub_pb2.Subscription.FromString(kv.value)
                         for kv in await self._etcd.get_prefix(SUBSCRIPTIONS)]
        return [s for s in subscriptions if not topic or s.topic == topic]

    async def delete_subscription(self, name: str) -> None:
        validation.name("subscription", name)
        if not await self._etcd.delete(SUBSCRIPTIONS + name.encode()):
            raise errors.NotFound(f"subscription {name!r} not found")
        log.info("subscription deleted", extra=fields(subscription=name))
