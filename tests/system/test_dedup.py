"""De-duplication holds topic-wide on topics of several partitions: a repeated
idempotency key, a repeated payload (on a payload-dedup topic) and a Publisher's
retry each meet their original in the partition it was stored in."""

from collections import Counter

import pytest
from helpers import ids_of, new_topic, receive, unique

from notifymesh import errors
from notifymesh.client import Client, Message
from notifymesh.publisher import Publisher

PARTITIONS = 4
SETTLE_S = 3  # how long a test waits for a delivery that must not come


async def deliveries(client: Client, subscription: str, expected: int) -> Counter:
    """Deliveries per message id: waits for one more than expected, SETTLE_S at most."""
    return Counter(ids_of(await receive(client, subscription, expected + 1, timeout=SETTLE_S)))


async def test_a_repeated_idempotency_key_is_stored_once_on_a_topic_of_several_partitions(client):
    topic, sub = await new_topic(client, "dedup-key", topic_options=dict(partitions=PARTITIONS))
    ids = [(await client.publish(topic, [Message(b"charge %d" % i, idempotency_key="order-7")]))[0]
           for i in range(20)]
    assert len(set(ids)) == 1
    assert await deliveries(client, sub, 1) == {ids[0]: 1}


async def test_a_repeated_payload_is_stored_once_whatever_the_publishers_keys_and_other_attributes(client):
    topic, sub = await new_topic(client, "dedup-payload",
                                 topic_options=dict(partitions=PARTITIONS, dedup_by_payload=True))
    futures = []
    async with Publisher(client) as publisher:  # each message gets a retry key of its own
        for i in range(10):
            futures.append(await publisher.publish(topic, Message(b"charge 7", {"sent_at": str(i)})))
            await publisher.flush()  # separate calls
    ids = [await future for future in futures]
    assert len(set(ids)) == 1
    assert await deliveries(client, sub, 1) == {ids[0]: 1}


async def test_a_named_dedup_attribute_is_part_of_the_payload(client):
    topic, sub = await new_topic(client, "dedup-attr", topic_options=dict(
        partitions=PARTITIONS, dedup_by_payload=True, dedup_attributes=["tenant"]))
    assert list((await client.get_topic(topic)).dedup_attributes) == ["tenant"]
    async with Publisher(client) as publisher:
        futures = [await publisher.publish(topic, Message(b"charge 7", {"tenant": tenant, "sent_at": str(i)}))
                   for i, tenant in enumerate(["a", "b", "a", "b", "a"])]
    ids = [await future for future in futures]
    assert ids[0] == ids[2] == ids[4] and ids[1] == ids[3] and ids[0] != ids[1]
    assert await deliveries(client, sub, 2) == {ids[0]: 1, ids[1]: 1}


async def test_dedup_attributes_need_payload_dedup(client):
    with pytest.raises(errors.InvalidArgument, match="dedup_by_payload"):
        await client.create_topic(unique("dedup-attr-alone"), dedup_attributes=["tenant"])


class LostReplies:
    """The client as a Publisher uses it, whose first publish is stored but its
    reply lost (UNAVAILABLE), as when a connection breaks at the wrong moment."""

    def __init__(self, client: Client):
        self._client, self.stored = client, []

    async def publish(self, topic: str, messages) -> list[str]:
        ids = await self._client.publish(topic, messages)
        if not self.stored:
            self.stored = ids
            raise errors.Unavailable("reply lost")
        return ids


async def test_a_publisher_batch_retried_after_a_lost_reply_is_stored_once(client):
    for options in (dict(partitions=PARTITIONS), dict(partitions=PARTITIONS, dedup_by_payload=True)):
        topic, sub = await new_topic(client, "dedup-retry", topic_options=options)
        lossy = LostReplies(client)
        async with Publisher(lossy, max_latency_s=0.05) as publisher:
            futures = [await publisher.publish(topic, b"order %d" % i) for i in range(20)]
        ids = [await future for future in futures]
        assert ids[:len(lossy.stored)] == lossy.stored  # the retried batch got the first attempt's ids
        assert len(set(ids)) == 20
        assert await deliveries(client, sub, 20) == {message_id: 1 for message_id in ids}
