"""The topics and subscriptions of the notification layer (internal_topics.py),
created at metadata start, idempotently: a name that exists already is left as
it is (several metadata replicas race at start; a restart finds them made). A
create needs live storage nodes to place partitions on, so it is retried until
every one is made. It waits for as many storage nodes as the replication
factor first: the services of a mesh start together, and a partition placed on
the first node alone would hold acknowledged writes on one replica until
placement moved it."""

import asyncio
import logging
import time
from typing import Callable, NamedTuple

from gen.notifymesh.v1 import notify_pb2, pubsub_pb2
from metadata.store import MetadataStore
from notifymesh import errors
from notifymesh.log import fields
from notifymesh.server.internal_topics import (
    AUDIT_RETAIN_S, AUDIT_TOPIC, CHANNELS, EVENTS_DEAD_LETTER_TOPIC, EVENTS_STATS_SUBSCRIPTION, EVENTS_TOPIC, FANOUT_SUBSCRIPTION,
    NOTIFY_DEAD_LETTER_TOPIC, NOTIFY_TOPIC, TABLE_TOPIC, channel_dead_letter_topic, channel_subscription, channel_topic)

log = logging.getLogger(__name__)

RETRY_S = 0.5  # between rounds while storage nodes are not up yet
STORAGE_WAIT_S = 30  # for as many storage nodes as the replication factor, at most
TABLE_PARTITIONS, NOTIFY_PARTITIONS, CHANNEL_PARTITIONS, EVENTS_PARTITIONS = 8, 4, 4, 4


class Internal(NamedTuple):
    topics: list[pubsub_pb2.Topic]
    subscriptions: list[pubsub_pb2.Subscription]  # after the topics they name


def _retry_policy(min_s: int, max_s: int, multiplier: float) -> pubsub_pb2.RetryPolicy:
    policy = pubsub_pb2.RetryPolicy(multiplier=multiplier)
    policy.minimum_backoff.FromSeconds(min_s)
    policy.maximum_backoff.FromSeconds(max_s)
    return policy


def _subscription(name: str, topic: str, ack_deadline_s: int, max_attempts: int,
                  dead_letter_topic: str) -> pubsub_pb2.Subscription:
    record = pubsub_pb2.Subscription(name=name, topic=topic, retry_policy=_retry_policy(1, 60, 2.0),
                                     max_delivery_attempts=max_attempts, dead_letter_topic=dead_letter_topic)
    record.ack_deadline.FromSeconds(ack_deadline_s)
    return record


def provider_unavailable_rule() -> pubsub_pb2.RedriveRule:
    """A channel task dead-lettered because every provider of its channel was
    unavailable (sender/notifications.py ChannelProviders) goes back after 10
    minutes, 3 times at most: a provider outage is a known transient failure."""
    rule = pubsub_pb2.RedriveRule(reason="^provider unavailable", max_redrives=3)
    rule.after.FromSeconds(600)
    return rule


def internal() -> Internal:
    """Every internal topic and subscription, with its parameters (design of issue 15).
    Replication factor: the cluster's default (3)."""
    topics = [pubsub_pb2.Topic(name=TABLE_TOPIC, partition_count=TABLE_PARTITIONS),
              pubsub_pb2.Topic(name=NOTIFY_TOPIC, partition_count=NOTIFY_PARTITIONS),
              pubsub_pb2.Topic(name=NOTIFY_DEAD_LETTER_TOPIC, partition_count=1)]
    subscriptions = [_subscription(FANOUT_SUBSCRIPTION, NOTIFY_TOPIC, 60, 20, NOTIFY_DEAD_LETTER_TOPIC)]
    for channel in CHANNELS:
        dead = channel_dead_letter_topic(channel)
        topics.append(pubsub_pb2.Topic(name=dead, partition_count=1))
        for priority in (notify_pb2.NORMAL, notify_pb2.HIGH):
            topic = channel_topic(channel, priority)
            topics.append(pubsub_pb2.Topic(name=topic, partition_count=CHANNEL_PARTITIONS, dedup_by_payload=False))
            subscription = _subscription(channel_subscription(channel, priority), topic, 30, 5, dead)
            subscription.redrive_rules.append(provider_unavailable_rule())
            subscriptions.append(subscription)
    # The events: no payload dedup (each message is a batch of distinct events; hashing
    # them would cost every send), counted by the stats consumer.
    topics += [pubsub_pb2.Topic(name=EVENTS_TOPIC, partition_count=EVENTS_PARTITIONS, dedup_by_payload=False),
               pubsub_pb2.Topic(name=EVENTS_DEAD_LETTER_TOPIC, partition_count=1)]
    subscriptions.append(_subscription(EVENTS_STATS_SUBSCRIPTION, EVENTS_TOPIC, 30, 20, EVENTS_DEAD_LETTER_TOPIC))
    audit = pubsub_pb2.Topic(name=AUDIT_TOPIC, partition_count=1, dedup_by_payload=False)
    audit.retain_acked.FromSeconds(AUDIT_RETAIN_S)
    topics.append(audit)
    return Internal(topics, subscriptions)


async def create_missing(store: MetadataStore) -> int:
    """Creates what does not exist yet; returns how many it created. Raises
    UNAVAILABLE (and the like) when storage is not up: call again."""
    made = 0
    todo = internal()
    for topic in todo.topics:
        try:
            await store.create_topic(topic)
            made += 1
        except errors.AlreadyExists:
            pass
    for subscription in todo.subscriptions:
        try:
            await store.create_subscription(subscription)
            made += 1
        except errors.AlreadyExists:
            pass
    return made


async def bootstrap(store: MetadataStore, storage_nodes: Callable[[], int], replication_factor: int) -> None:
    """create_missing until it succeeds (storage nodes may start after this service),
    once replication_factor storage nodes are live (storage_nodes()), or after
    STORAGE_WAIT_S with fewer: partitions placed on fewer nodes than their
    replication factor are fed to more by placement, but meanwhile a lone replica
    holds what is written to them."""
    give_up = time.monotonic() + STORAGE_WAIT_S
    while storage_nodes() < replication_factor and time.monotonic() < give_up:
        await asyncio.sleep(RETRY_S)
    while True:
        try:
            made = await create_missing(store)
            log.info("internal topics ready", extra=fields(created=made))
            return
        except asyncio.CancelledError:
            raise
        except Exception as e:
            log.debug("internal topics not created yet; retrying", extra=fields(error=repr(e)))
            await asyncio.sleep(RETRY_S)
