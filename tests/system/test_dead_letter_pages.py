"""ListDeadLetters in pages across partitions: each dead letter exactly once, the
CLI following the pages, and a bad page size or token refused."""

import asyncio
import json
import time

import grpc
import pytest

from helpers import authed, cli, new_topic, unique
from gen.notifymesh.v1 import pubsub_pb2, pubsub_pb2_grpc
from notifymesh import errors
from notifymesh.contracts import MessageId

DEAD = 105  # over one default page of 100


async def dead_lettered(client, prefix: str) -> tuple[str, list[str]]:
    """(subscription, message ids): DEAD messages on 3 partitions, each nacked terminally
    and buried (listed) once in the dead-letter topic."""
    dead = unique(f"{prefix}-dlq")
    await client.create_topic(dead)
    topic, sub = await new_topic(client, prefix, topic_options={"partitions": 3}, ack_deadline_s=60,
                                 max_delivery_attempts=5, dead_letter_topic=dead)
    published = []
    for batch in range(0, DEAD, 15):  # a batch goes to one partition; batches go round
        published += await client.publish(topic, [b"poison-%d" % i for i in range(batch, batch + 15)])
    deadline, nacked = time.monotonic() + 30, set()
    while len(nacked) < DEAD and time.monotonic() < deadline:
        received = await client.pull(sub, 1000, wait_s=1)
        await client.nack(sub, [r.ack_id for r in received], terminal=True, reason="poison")
        nacked |= {r.message.message_id for r in received}
    assert nacked == set(published)
    while len(await client.list_dead_letters(sub)) < DEAD and time.monotonic() < deadline:
        await asyncio.sleep(0.2)  # each is listed once moved to the dead-letter topic
    return sub, published


async def test_dead_letters_come_in_pages_each_once_and_the_cli_follows_them(mesh, client):
    sub, published = await dead_lettered(client, "dl-pages")
    assert len({MessageId.parse(i).partition for i in published}) >= 2
    pages = []
    async for page in client.dead_letter_pages(sub, page_size=2):
        pages.append([d.message.message_id for d in page])
        assert len(pages) <= 53, "a page repeated"
    listed = sum(pages, [])
    assert sorted(listed) == sorted(published), "every dead letter exactly once"
    assert all(len(page) == 2 for page in pages[:-1]) and len(pages[-1]) == 1 and len(pages) == 53

    lines = cli(mesh, "dead-letters", "list", sub)  # more than one default page of 100
    assert lines.returncode == 0, lines.stderr
    assert sorted(json.loads(line)["id"] for line in lines.stdout.decode().splitlines()) == sorted(published)
    first = cli(mesh, "dead-letters", "list", sub, "--max", "3")
    assert first.returncode == 0 and len(first.stdout.decode().splitlines()) == 3

    stub = authed(pubsub_pb2_grpc.SubscriberStub, client)
    old = await stub.ListDeadLetters(pubsub_pb2.ListDeadLettersRequest(subscription=sub, max_messages=4))
    assert len(old.dead_letters) == 4 and old.next_page_token  # max_messages: page_size's old name
    _, other = await new_topic(client, "dl-pages-other")
    for request in (pubsub_pb2.ListDeadLettersRequest(subscription=sub, page_size=1001),
                    pubsub_pb2.ListDeadLettersRequest(subscription=sub, page_token="garbage!"),
                    pubsub_pb2.ListDeadLettersRequest(subscription=other, page_token=old.next_page_token)):
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await stub.ListDeadLetters(request)
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT, e.value.details()
    with pytest.raises(errors.InvalidArgument, match="page_size 1001 out of range"):
        await client.list_dead_letters(sub, page_size=1001)
