"""Topics and subscriptions as records in etcd.

etcd's Raft makes them durable and replicated, so this service keeps no state
of its own and any number of replicas can serve. Creates and deletes are etcd
transactions, so two concurrent creates of one name cannot both succeed.
"""

import logging
import secrets
import urllib.parse

from aetcd import utils as etcd_utils
from google.protobuf import duration_pb2

from gen.notifymesh.internal.v1 import storage_pb2
from gen.notifymesh.v1 import pubsub_pb2
from notifymesh import errors
from notifymesh.clock import now_ms, timestamp
from notifymesh.contracts import CANDIDATES, LEADERS, PLACEMENTS, SUBSCRIPTIONS, TOPICS, shard_name
from notifymesh.log import fields
from notifymesh.server import validation
from notifymesh.server.clients import StorageClient
from notifymesh.server.cluster import Cluster
from notifymesh.server.config import Config

log = logging.getLogger(__name__)

MAX_PARTITIONS = 256
MAX_REPLICATION_FACTOR = 5
MAX_BACKOFF_S = 600
DELETE_TRIES = 3  # a delete retries when subscriptions changed between its check and its transaction


def _refuse_if_named(topic: str, subscriptions: list[pubsub_pb2.Subscription]) -> None:
    """FAILED_PRECONDITION when a subscription reads from the topic or dead-letters to it."""
    attached = [s.name for s in subscriptions if s.topic == topic]
    if attached:
        raise errors.FailedPrecondition(
            f"topic {topic!r} has {len(attached)} subscription(s) ({', '.join(attached[:5])}); delete them first")
    dead_lettering = [s.name for s in subscriptions if s.dead_letter_topic == topic]
    if dead_lettering:
        raise errors.FailedPrecondition(
            f"topic {topic!r} is the dead-letter topic of {len(dead_lettering)} subscription(s) "
            f"({', '.join(dead_lettering[:5])}); delete them first")


def _check_retain_acked(topic: pubsub_pb2.Topic) -> None:
    """Topic.retain_acked: zero (off), or 1 minute to the topic's retention."""
    seconds = topic.retain_acked.ToMilliseconds() / 1000
    if seconds:
        validation.seconds_between("retain_acked", seconds, 60,
                                   topic.message_retention.ToMilliseconds() / 1000)


class MetadataStore:
    def __init__(self, cluster: Cluster, config: Config, storage: StorageClient):
        self._cluster, self._etcd, self._config, self._storage = cluster, cluster.etcd, config, storage
        self._txn = cluster.etcd.transactions

    async def create_topic(self, topic: pubsub_pb2.Topic) -> pubsub_pb2.Topic:
        """Records the topic and the replica set of each partition (the ring over
        the live storage nodes picks them) in one transaction."""
        validation.name("topic", topic.name)
        record = pubsub_pb2.Topic()
        record.CopyFrom(topic)
        if record.HasField("message_retention"):
            validation.seconds_between("message retention", record.message_retention.ToTimedelta().total_seconds(),
                                       60, 31 * 24 * 3600)
        else:
            record.message_retention.FromSeconds(int(self._config.default_retention_s))
        if record.HasField("dedup_window"):
            validation.seconds_between("dedup window", record.dedup_window.ToTimedelta().total_seconds(),
                                       60, 7 * 24 * 3600)
        else:
            record.dedup_window.FromSeconds(int(self._config.dedup_window_s))
        validation.dedup_attributes(record.dedup_attributes, record.dedup_by_payload)
        _check_retain_acked(record)
        record.partition_count = record.partition_count or 1
        validation.count_between("partition count", record.partition_count, 1, MAX_PARTITIONS)
        record.replication_factor = record.replication_factor or self._config.default_replication_factor
        validation.count_between("replication factor", record.replication_factor, 1, MAX_REPLICATION_FACTOR)
        record.create_time.CopyFrom(timestamp(now_ms()))
        key = TOPICS + topic.name.encode()
        created, _ = await self._etcd.transaction(
            compare=[self._txn.create(key) == 0],
            success=[self._txn.put(key, record.SerializeToString()),
                     *self._placements(record, range(record.partition_count))], failure=[])
        if not created:
            raise errors.AlreadyExists(f"topic {topic.name!r} already exists")
        log.info("topic created", extra=fields(topic=topic.name, partitions=record.partition_count,
                                               replication_factor=record.replication_factor))
        return record

    def _placements(self, topic: pubsub_pb2.Topic, partitions) -> list:
        ring = self._cluster.rings["storage"]
        if not ring.nodes:
            raise errors.Unavailable("no live storage nodes to place the topic on")
        puts = []
        for partition in partitions:
            shard = shard_name(topic.name, partition)
            placement = storage_pb2.ShardPlacement(
                topic=topic.name, partition=partition, replication_factor=topic.replication_factor,
                replicas=ring.replicas(shard, topic.replication_factor))
            puts.append(self._txn.put(PLACEMENTS + shard.encode(), placement.SerializeToString()))
        return puts

    async def update_topic(self, name: str, partition_count: int,
                           retain_acked: duration_pb2.Duration | None = None) -> pubsub_pb2.Topic:
        """Raises the partition count (0 with retain_acked: unchanged); new
        partitions get replica sets like the first ones. Sets retain_acked unless None."""
        record = await self.get_topic(name)
        changed = retain_acked is not None and record.retain_acked != retain_acked
        if retain_acked is not None:
            partition_count = partition_count or record.partition_count
            record.retain_acked.CopyFrom(retain_acked)
            _check_retain_acked(record)
        if partition_count < record.partition_count:
            raise errors.InvalidArgument(
                f"topic {name!r} has {record.partition_count} partitions; the count can be raised, not lowered")
        validation.count_between("partition count", partition_count, 1, MAX_PARTITIONS)
        if partition_count == record.partition_count and not changed:
            return record
        old = record.partition_count
        record.partition_count = partition_count
        key = TOPICS + name.encode()
        kv = await self._etcd.get(key)
        updated, _ = await self._etcd.transaction(
            compare=[self._txn.mod(key) == kv.mod_revision],
            success=[self._txn.put(key, record.SerializeToString()),
                     *self._placements(record, range(old, partition_count))], failure=[])
        if not updated:
            raise errors.Aborted(f"topic {name!r} changed meanwhile; try again")
        log.info("topic updated", extra=fields(topic=name, partitions=partition_count,
                                               retain_acked_s=record.retain_acked.seconds))
        return record

    async def get_topic(self, name: str) -> pubsub_pb2.Topic:
        kv = await self._etcd.get(TOPICS + validation.name("topic", name).encode())
        if kv is None:
            raise errors.NotFound(f"topic {name!r} not found")
        return pubsub_pb2.Topic.FromString(kv.value)

    async def list_topics(self) -> list[pubsub_pb2.Topic]:
        return [pubsub_pb2.Topic.FromString(kv.value) for kv in await self._etcd.get_prefix(TOPICS)]

    async def delete_topic(self, name: str) -> None:
        """Deletes a topic no subscription names (as its topic or its dead-letter
        topic). The check and the delete are one transaction: it fails if any
        subscription was created since the check read them (create_subscription's
        own transaction, in turn, needs both its topics to exist)."""
        key = TOPICS + validation.name("topic", name).encode()
        for _ in range(DELETE_TRIES):
            kv = await self._etcd.get(key)
            if kv is None:
                raise errors.NotFound(f"topic {name!r} not found")
            listed = await self._etcd.get_prefix(SUBSCRIPTIONS)
            _refuse_if_named(name, [pubsub_pb2.Subscription.FromString(s.value) for s in listed])
            prefix_end = etcd_utils.prefix_range_end
            deleted, _ = await self._etcd.transaction(
                compare=[self._txn.mod(key) == kv.mod_revision,
                         self._txn.create(SUBSCRIPTIONS, prefix_end(SUBSCRIPTIONS)) < listed.header.revision + 1],
                success=[self._txn.delete(key),
                         *(self._txn.delete(p, prefix_end(p)) for p in
                           (prefix + f"{name}/".encode() for prefix in (PLACEMENTS, LEADERS, CANDIDATES)))],
                failure=[])
            if deleted:
                log.info("topic deleted", extra=fields(topic=name))
                return
        raise errors.Aborted(f"subscriptions changed while deleting topic {name!r}; try again")

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
        await self._check_delivery_policy(record)
        record.create_time.CopyFrom(timestamp(now_ms()))
        key = SUBSCRIPTIONS + subscription.name.encode()
        topic_key = TOPICS + subscription.topic.encode()
        created, _ = await self._etcd.transaction(
            compare=[self._txn.create(key) == 0, *self._topics_exist(record)],
            success=[self._txn.put(key, record.SerializeToString())], failure=[])
        if not created:
            if await self._etcd.get(key) is not None:
                raise errors.AlreadyExists(f"subscription {subscription.name!r} already exists")
            if await self._etcd.get(topic_key) is None:
                raise errors.NotFound(f"topic {subscription.topic!r} not found")
            raise errors.NotFound(f"dead-letter topic {record.dead_letter_topic!r} not found")
        log.info("subscription created", extra=fields(subscription=record.name, topic=record.topic))
        # Storage also attaches it when its watch sees the record; attaching now closes
        # the gap for messages published right after this call returns.
        try:
            topic = await self.get_topic(record.topic)
            await self._storage.attach_subscription(record, topic.partition_count)
        except Exception as e:
            log.warning("attach at storage failed; its watch will attach it",
                        extra=fields(subscription=record.name, error=repr(e)))
        return record

    def _topics_exist(self, record: pubsub_pb2.Subscription) -> list:
        """The compares of a subscription's create: its topic and dead-letter topic exist."""
        names = [record.topic] + ([record.dead_letter_topic] if record.dead_letter_topic else [])
        return [self._txn.version(TOPICS + n.encode()) > 0 for n in names]

    async def _check_delivery_policy(self, record: pubsub_pb2.Subscription) -> None:
        """Validates the retry policy, dead-lettering and push endpoint, filling in
        defaults (and the push signing secret)."""
        if record.HasField("push_config"):
            push = record.push_config
            url = urllib.parse.urlsplit(push.endpoint)
            if url.scheme not in ("http", "https") or not url.hostname:
                raise errors.InvalidArgument(f"push endpoint {push.endpoint!r} is not an http(s) URL")
            push.secret = secrets.token_hex(32)
            push.max_in_flight = push.max_in_flight or 16
            validation.count_between("push max in flight", push.max_in_flight, 1, 1000)
            if not push.HasField("timeout"):
                push.timeout.FromSeconds(10)
            validation.seconds_between("push timeout", push.timeout.ToMilliseconds() / 1000, 1, 60)
            record.retry_policy.SetInParent()  # a failing endpoint is retried with backoff, not at once
        if record.HasField("retry_policy"):
            policy = record.retry_policy
            if not policy.HasField("minimum_backoff"):
                policy.minimum_backoff.FromSeconds(1)
            if not policy.HasField("maximum_backoff"):
                policy.maximum_backoff.FromSeconds(60)
            policy.multiplier = policy.multiplier or 2.0
            low = policy.minimum_backoff.ToMilliseconds() / 1000
            high = policy.maximum_backoff.ToMilliseconds() / 1000
            validation.seconds_between("minimum backoff", low, 0, MAX_BACKOFF_S)
            validation.seconds_between("maximum backoff", high, low, MAX_BACKOFF_S)
            if not 1.0 <= policy.multiplier <= 10.0:
                raise errors.InvalidArgument(f"backoff multiplier {policy.multiplier:g} out of range: 1 to 10")
        if record.max_delivery_attempts or record.dead_letter_topic:
            validation.count_between("max delivery attempts", record.max_delivery_attempts, 1, 100)
            if not record.dead_letter_topic:
                raise errors.InvalidArgument("max delivery attempts needs a dead-letter topic")
            if record.dead_letter_topic == record.topic:
                raise errors.InvalidArgument("the dead-letter topic must differ from the subscription's topic")
            await self.get_topic(record.dead_letter_topic)  # NOT_FOUND when missing

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
