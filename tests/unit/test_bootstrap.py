"""metadata/bootstrap.py with an in-memory store: every internal topic and
subscription, made once whatever the number of tries and racing replicas."""

import asyncio

from gen.notifymesh.v1 import notify_pb2
from metadata import bootstrap
from notifymesh import errors
from notifymesh.server import internal_topics


class FakeStore:
    """MetadataStore's create calls: names taken once; unavailable until storage is up."""

    def __init__(self, unavailable: int = 0):
        self.topics, self.subscriptions, self.unavailable = {}, {}, unavailable

    async def create_topic(self, topic):
        if self.unavailable:
            self.unavailable -= 1
            raise errors.Unavailable("no live storage nodes")
        if topic.name in self.topics:
            raise errors.AlreadyExists(topic.name)
        self.topics[topic.name] = topic
        return topic

    async def create_subscription(self, subscription):
        if subscription.name in self.subscriptions:
            raise errors.AlreadyExists(subscription.name)
        assert subscription.topic in self.topics and subscription.dead_letter_topic in self.topics
        self.subscriptions[subscription.name] = subscription
        return subscription


async def test_every_internal_topic_and_subscription_is_made_once(monkeypatch):
    monkeypatch.setattr(bootstrap, "RETRY_S", 0.01)
    store = FakeStore(unavailable=2)
    nodes = iter([1, 2, 3])
    await asyncio.wait_for(asyncio.gather(bootstrap.bootstrap(store, lambda: next(nodes, 3), 3),
                                          bootstrap.bootstrap(store, lambda: 3, 3)), 5)  # two replicas race
    assert await bootstrap.create_missing(store) == 0
    topics, subscriptions = store.topics, store.subscriptions
    assert topics[internal_topics.TABLE_TOPIC].partition_count == 8
    assert topics[internal_topics.NOTIFY_TOPIC].partition_count == 4
    fanout = subscriptions[internal_topics.FANOUT_SUBSCRIPTION]
    assert (fanout.ack_deadline.seconds, fanout.max_delivery_attempts, fanout.dead_letter_topic) == (
        60, 20, internal_topics.NOTIFY_DEAD_LETTER_TOPIC)
    for channel in internal_topics.CHANNELS:
        for priority in (notify_pb2.NORMAL, notify_pb2.HIGH):
            topic = topics[internal_topics.channel_topic(channel, priority)]
            assert topic.partition_count == 4 and not topic.dedup_by_payload
            send = subscriptions[internal_topics.channel_subscription(channel, priority)]
            assert (send.ack_deadline.seconds, send.max_delivery_attempts, send.dead_letter_topic) == (
                30, 5, internal_topics.channel_dead_letter_topic(channel))
            assert (send.retry_policy.minimum_backoff.seconds, send.retry_policy.maximum_backoff.seconds,
                    send.retry_policy.multiplier) == (1, 60, 2.0)
    events = topics[internal_topics.EVENTS_TOPIC]
    assert events.partition_count == 4 and not events.dedup_by_payload
    stats = subscriptions[internal_topics.EVENTS_STATS_SUBSCRIPTION]
    assert (stats.topic, stats.dead_letter_topic) == (internal_topics.EVENTS_TOPIC,
                                                       internal_topics.EVENTS_DEAD_LETTER_TOPIC)
    assert all(internal_topics.is_reserved(name) for name in [*topics, *subscriptions])
