"""Describe's sums, from the numbers each partition's leader gives
(storage/stats.py): a subscription's over its partitions, a topic's over its
subscriptions. Counts and rates add up; the oldest unacknowledged age is the
largest."""

from typing import Iterable

from gen.notifymesh.v1 import pubsub_pb2


def summed(parts: Iterable[pubsub_pb2.DeliveryStats]) -> pubsub_pb2.DeliveryStats:
    total, oldest_ms = pubsub_pb2.DeliveryStats(), None
    for part in parts:
        total.backlog += part.backlog
        total.in_flight += part.in_flight
        total.delivery_rate += part.delivery_rate
        total.dead_letters += part.dead_letters
        if part.HasField("oldest_unacked_age"):
            oldest_ms = max(oldest_ms or 0, part.oldest_unacked_age.ToMilliseconds())
    if oldest_ms is not None:
        total.oldest_unacked_age.FromMilliseconds(oldest_ms)
    return total


def of_subscription(name: str, topic: str, by_partition: dict[int, pubsub_pb2.DeliveryStats],
                    streams: int) -> pubsub_pb2.SubscriptionStats:
    partitions = [pubsub_pb2.PartitionStats(partition=p, stats=by_partition[p]) for p in sorted(by_partition)]
    return pubsub_pb2.SubscriptionStats(subscription=name, topic=topic, total=summed(by_partition.values()),
                                        partitions=partitions, streams=streams)


def of_topic(topic: str, partition_count: int,
             subscriptions: list[pubsub_pb2.SubscriptionStats]) -> pubsub_pb2.TopicStats:
    """Per partition (every one, 0 without subscriptions) and in total, over the subscriptions."""
    by_partition: dict[int, list[pubsub_pb2.DeliveryStats]] = {p: [] for p in range(partition_count)}
    for subscription in subscriptions:
        for part in subscription.partitions:
            by_partition.setdefault(part.partition, []).append(part.stats)
    return pubsub_pb2.TopicStats(
        topic=topic, total=summed(s.total for s in subscriptions), subscriptions=subscriptions,
        partitions=[pubsub_pb2.PartitionStats(partition=p, stats=summed(parts))
                    for p, parts in sorted(by_partition.items())],
        streams=sum(s.streams for s in subscriptions))
