"""Topics, publish, streaming subscribe and ack through the whole mesh."""

import asyncio
import json
import signal
import time

import grpc
import pytest

from helpers import cli, ids_of, new_topic, receive, unique
from gen.notifymesh.v1 import pubsub_pb2
from notifymesh import errors


async def test_thousand_messages_from_cli_and_client_reach_two_subscriptions(mesh, client):
    topic, audit, billing = unique("orders"), unique("audit"), unique("billing")
    assert cli(mesh, "topic", "create", topic).returncode == 0
    assert json.loads(cli(mesh, "topic", "get", topic).stdout)["name"] == topic
    assert topic in cli(mesh, "topic", "list").stdout.decode()
    created = cli(mesh, "subscription", "create", audit, "--topic", topic, "--ack-deadline", "20s")
    assert json.loads(created.stdout)["ack_deadline_s"] == 20.0
    await client.create_subscription(billing, topic)
    assert {s.name for s in await client.list_subscriptions(topic)} == {audit, billing}

    lines = b"".join(b"cli-%d\n" % i for i in range(500))
    published = cli(mesh, "publish", topic, "-", stdin=lines)
    assert published.returncode == 0, published.stderr
    lines_published = [json.loads(line) for line in published.stdout.splitlines()]  # in the order of the lines
    assert [line["line"] for line in lines_published] == list(range(1, 501))
    cli_ids = [line["message_id"] for line in lines_published]
    assert len(set(cli_ids)) == 500
    assert b"acknowledged 500" in published.stderr  # progress on stderr
    ids = []
    for start in range(0, 500, 100):
        ids += await client.publish(topic, [b"client-%d" % i for i in range(start, start + 100)])
    assert len(set(ids)) == 500

    for subscription in (audit, billing):
        received = await receive(client, subscription, 1000)
        payloads = {m.message.data for m in received}
        assert len(set(ids_of(received))) == 1000
        assert payloads == {b"cli-%d" % i for i in range(500)} | {b"client-%d" % i for i in range(500)}
        assert set(ids) | set(cli_ids) == set(ids_of(received))
        assert {m.message.message_id: m.message.data for m in received}[cli_ids[7]] == b"cli-7"


async def test_cli_single_publish_with_attributes_and_subscribe(mesh, client):
    topic, sub = await new_topic(client, "alerts")
    published = cli(mesh, "publish", topic, "disk full", "--attr", "host=db1", "--attr", "sev=2")
    assert published.returncode == 0, published.stderr
    message_id = json.loads(published.stdout)["message_id"]
    subscribed = cli(mesh, "subscribe", sub, "--max", "1")
    assert subscribed.returncode == 0, subscribed.stderr
    line = json.loads(subscribed.stdout)
    assert line["id"] == message_id and line["data"] == "disk full"
    assert line["attributes"] == {"host": "db1", "sev": "2"}
    # acknowledged after printing: it does not come again
    assert await receive(client, sub, 1, timeout=3) == []


async def test_two_subscribers_of_one_subscription_split_the_messages(mesh, client):
    topic, sub = await new_topic(client, "jobs", subscription_prefix="workers")
    ids = []
    for start in range(0, 1000, 250):
        ids += await client.publish(topic, [b"job-%d" % i for i in range(start, start + 250)])

    got: list[list] = [[], []]

    async def worker(index: int):
        # a small window so neither subscriber can take everything at once
        async for frame in client.subscribe_frames(sub, max_outstanding=20):
            got[index].extend(frame)
            await asyncio.sleep(0.005)
            await client.acknowledge(sub, [m.ack_id for m in frame])
            if len(set(ids_of(got[0])) | set(ids_of(got[1]))) >= 1000:
                return

    tasks = [asyncio.create_task(worker(i)) for i in range(2)]
    done, pending = await asyncio.wait(tasks, timeout=60, return_when=asyncio.FIRST_COMPLETED)
    for task in pending:
        task.cancel()
    assert set(ids_of(got[0])) | set(ids_of(got[1])) == set(ids)
    assert got[0] and got[1], "both subscribers got a share"


async def test_acks_of_several_subscriptions_share_a_call_and_a_bad_one_fails_alone(mesh, client):
    topic, subs = unique("many"), [unique("each") for _ in range(4)]
    await client.create_topic(topic)
    for sub in subs:
        await client.create_subscription(sub, topic)
    [message_id] = await client.publish(topic, [b"to all"])
    ack_ids = {}
    for sub in subs:
        [received] = await receive(client, sub, 1, ack=False)
        ack_ids[sub] = received.ack_id
    # one request naming no subscription acks for two of them at once
    await client._subscriber.Acknowledge(pubsub_pb2.AcknowledgeRequest(ack_ids=[ack_ids[subs[0]], ack_ids[subs[1]]]),
                                        metadata=client._metadata)
    # concurrent acks go out merged; the one with another subscription's ack id fails alone
    sent = []
    acknowledge = client._subscriber.Acknowledge

    def recorded(request, **kwargs):
        sent.append((request.subscription, len(request.ack_ids)))
        return acknowledge(request, **kwargs)

    client._subscriber.Acknowledge = recorded
    try:
        acks = [client.acknowledge(subs[i % 3], [ack_ids[subs[i % 3]]]) for i in range(200)]
        results = await asyncio.gather(*acks, client.acknowledge(subs[3], [ack_ids[subs[2]]]),
                                       return_exceptions=True)
    finally:
        client._subscriber.Acknowledge = acknowledge
    assert results[:200] == [None] * 200
    assert isinstance(results[200], errors.InvalidArgument) and "is not of subscription" in results[200].details
    assert results[200].code == grpc.StatusCode.INVALID_ARGUMENT
    assert len(sent) < 201 and any(name == "" and count > 1 for name, count in sent)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await client._subscriber.Acknowledge(pubsub_pb2.AcknowledgeRequest(ack_ids=[ack_ids[subs[3]], "junk"]),
                                            metadata=client._metadata)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "malformed ack id" in info.value.details()

    async def states():
        status = await client.get_message_status(message_id)
        return {d.subscription: d.state for d in status.deliveries}
    for _ in range(50):  # acks reach storage through the sender: give them a moment
        if [s for s in (await states()).values()].count(pubsub_pb2.ACKNOWLEDGED) == 3:
            break
        await asyncio.sleep(0.1)
    # the unacknowledged one was handed back for redelivery when its stream closed
    expected = {**{sub: pubsub_pb2.ACKNOWLEDGED for sub in subs[:3]}, subs[3]: pubsub_pb2.PENDING}
    assert await states() == expected


async def test_publish_without_subscriptions_then_subscription_sees_only_later_messages(mesh, client):
    topic, sub = unique("late"), unique("late-sub")
    await client.create_topic(topic)
    await client.publish(topic, [b"before"])
    await client.create_subscription(sub, topic)
    [after] = await client.publish(topic, [b"after"])
    received = await receive(client, sub, 2, timeout=3)
    assert ids_of(received) == [after]


async def test_idempotency_key_returns_the_original_id_and_delivers_once(mesh, client):
    from notifymesh.client import Message
    topic, sub = await new_topic(client, "idem")
    [first] = await client.publish(topic, [Message(b"charge", idempotency_key="order-7")])
    [again] = await client.publish(topic, [Message(b"charge", idempotency_key="order-7")])
    assert again == first
    assert ids_of(await receive(client, sub, 2, timeout=3)) == [first]


async def test_partitions_ordering_keys_and_raising_the_count(mesh, client):
    from notifymesh.client import Message
    topic, sub = unique("parts"), unique("parts-sub")
    created = cli(mesh, "topic", "create", topic, "--partitions", "3", "--replication-factor", "2")
    assert created.returncode == 0, created.stderr
    assert json.loads(created.stdout)["partitions"] == 3
    await client.create_subscription(sub, topic)
    ids = await client.publish(topic, [Message(b"k-%d" % i, ordering_key="customer-7") for i in range(30)])
    ids += await client.publish(topic, [b"free-%d" % i for i in range(30)])
    received = await receive(client, sub, 60)
    assert set(ids_of(received)) == set(ids)
    keyed_partitions = {m.ack_id.split(":")[0] for m in received if m.message.data.startswith(b"k-")}
    assert len(keyed_partitions) == 1, "one ordering key, one partition"

    lowered = cli(mesh, "topic", "update", topic, "--partitions", "2")
    assert lowered.returncode == 1 and b"INVALID_ARGUMENT" in lowered.stderr
    raised = cli(mesh, "topic", "update", topic, "--partitions", "5")
    assert json.loads(raised.stdout)["partitions"] == 5
    more = []
    for _ in range(10):  # spread over all five partitions
        more += await client.publish(topic, [b"more"])
    received = await receive(client, sub, len(more), timeout=30)
    assert set(ids_of(received)) == set(more)

    status = cli(mesh, "cluster", "status", "--output", "table")
    assert status.returncode == 0, status.stderr
    lines = [line for line in status.stdout.decode().splitlines() if line.startswith(topic)]
    assert len(lines) == 5  # one per partition, each with a leader and 2 replicas
    for line in lines:
        assert "(election)" not in line and line.count("leader") == 1 and line.count("follower") == 1
    assert "storage-1" in status.stdout.decode().splitlines()[1]  # the storage members line


async def test_cli_topic_with_payload_dedup(mesh, client):
    topic = unique("hashed")
    # The payload is the data and the attributes named (only k here: the data alone by default).
    created = cli(mesh, "topic", "create", topic, "--dedup-by-payload", "--dedup-window", "1h",
                  "--dedup-attribute", "k")
    assert created.returncode == 0, created.stderr
    assert {"dedup_by_payload": True, "dedup_window_s": 3600,
            "dedup_attributes": ["k"]}.items() <= json.loads(created.stdout).items()
    first = cli(mesh, "publish", topic, "same", "--attr", "k=v").stdout
    again = cli(mesh, "publish", topic, "same", "--attr", "k=v").stdout
    other = cli(mesh, "publish", topic, "same", "--attr", "k=w").stdout
    assert first == again != other
    bad = cli(mesh, "topic", "create", unique("hashed"), "--dedup-window", "10s")
    assert bad.returncode == 1 and b"dedup window" in bad.stderr


async def test_sigusr1_logs_a_senders_tasks_and_dispatch_state(mesh):
    """For a person looking at a live process that makes no progress."""
    sender = next(p for name, p in mesh.processes.items() if name.startswith("sender"))
    sender.popen.send_signal(signal.SIGUSR1)
    deadline = time.monotonic() + 10
    while True:
        lines = [json.loads(line) for line in open(sender.log_path, errors="replace") if '"tasks logged"' in line
                 or '"msg": "state"' in line]
        if len(lines) >= 2 or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.1)
    state = next(line["state"] for line in lines if line["msg"] == "state")
    assert "budget" in state and "pullers" in state
    assert next(line for line in lines if line["msg"] == "tasks logged")["count"] > 0
