"""Appending messages to a topic from inside the mesh: the partition choice and
message ids of a publish, shared by the frontend (Publish) and the sender (the
notification fan-out publishing channel tasks).

Messages with an ordering key go to the partition the key hashes to; so do, by
their dedup key (contracts.dedup_key: idempotency key, or payload hash on a
payload-dedup topic), the rest that have one, so that storage, which recognises
repeats per partition, recognises them topic-wide; those known by a retry key
alone go together where the request's first one hashes; the rest go to the
partition with the fewest appends in flight. Ids are given here, so a retry
after a failover is recognised by the new leader.
"""

import asyncio
import itertools
import zlib
from typing import Protocol

from gen.notifymesh.v1 import pubsub_pb2
from notifymesh.batching import Coalescer
from notifymesh.clock import now_ms
from notifymesh.contracts import MessageId, dedup_key
from notifymesh.server import tracing

MERGED_MAX_ITEMS = 5000  # messages in one merged Append


class AppendStorage(Protocol):
    """notifymesh.server.clients.StorageClient.append"""

    async def append(self, shard: tuple[str, int], messages) -> list[str]: ...


class TopicAppender:
    def __init__(self, storage: AppendStorage):
        # Concurrent publishes to a partition share one Append.
        self._appends = Coalescer(storage.append, max_items=MERGED_MAX_ITEMS, size_of=lambda m: len(m.data) + 64)
        self._in_flight: dict[tuple[str, int], int] = {}
        self._turn = itertools.count()

    async def publish(self, record: pubsub_pb2.Topic, messages) -> list[str]:
        """Appends messages (notifymesh.v1.PubsubMessages, checked by the caller) to the
        topic of record; their ids, in order (a repeat's: the first one's)."""
        topic = record.name
        groups = self.partitioned(record, messages)
        ms = now_ms()
        for partition, group in groups.items():
            for index, message_id in zip(group, MessageId.new_batch(topic, partition, len(group), ms)):
                messages[index].message_id = message_id
        ids = [""] * len(messages)
        replies = await asyncio.gather(*(self._append(topic, p, [messages[i] for i in group])
                                         for p, group in groups.items()))
        for group, reply in zip(groups.values(), replies):
            for index, message_id in zip(group, reply):
                ids[index] = message_id
        return ids

    def partitioned(self, record: pubsub_pb2.Topic, messages) -> dict[int, list[int]]:
        """partition -> the indexes of the messages that go there, in order."""
        partitions = max(1, record.partition_count)
        if partitions == 1:
            return {0: list(range(len(messages)))}
        spread = self._least_loaded(record.name, partitions)
        by_payload, names = record.dedup_by_payload, tuple(record.dedup_attributes)
        groups: dict[int, list[int]] = {}
        retried = None  # where the request's messages known by their retry key alone go
        for index, message in enumerate(messages):
            key = message.ordering_key or dedup_key(message, by_payload, names)
            if key.startswith("r:"):
                # A retry resends its whole request (the Publisher does): the first retry
                # key places all of them, so a batch stays one append, not one per
                # partition, and its retry still meets it.
                if retried is None:
                    retried = zlib.crc32(key.encode()) % partitions
                partition = retried
            else:
                partition = zlib.crc32(key.encode()) % partitions if key else spread
            groups.setdefault(partition, []).append(index)
        return groups

    async def _append(self, topic: str, partition: int, messages) -> list[str]:
        key = (topic, partition)
        self._in_flight[key] = self._in_flight.get(key, 0) + 1
        try:
            return await self._appends.submit(key, messages)
        finally:
            self._in_flight[key] -= 1

    def _least_loaded(self, topic: str, partitions: int) -> int:
        start = next(self._turn) % partitions  # ties go round
        return min(((start + i) % partitions for i in range(partitions)),
                   key=lambda p: self._in_flight.get((topic, p), 0))


class Topics(Protocol):
    """notifymesh.server.cluster.Cluster.topic"""

    async def topic(self, name: str) -> pubsub_pb2.Topic: ...


class InternalPublisher:
    """Publishes to the mesh's own topics from inside a service (the sender's
    fan-out): messages made by the service itself, so no client checks."""

    def __init__(self, topics: Topics, storage: AppendStorage):
        self._topics, self._appender = topics, TopicAppender(storage)

    async def publish(self, topic: str, messages) -> list[str]:
        tracing.stamp_current(messages)  # a fan-out page's channel tasks are spans of its trace
        return await self._appender.publish(await self._topics.topic(topic), messages)
