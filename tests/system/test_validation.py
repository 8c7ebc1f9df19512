"""Bad input gets a clear status code and a readable message; nothing crashes."""

import asyncio

import grpc
import pytest
from helpers import aio_channel, new_topic, receive, unique

from gen.notifymesh.v1 import pubsub_pb2
from notifymesh import errors
from notifymesh.client import Message
from notifymesh.contracts import TOPICS
from notifymesh.errors import NotifymeshError
from notifymesh.server.cluster import connect_etcd

BAD_NAMES = ["ab", "9lives", "has space", "x" * 256, "", "sl/ash", "nul\0byte"]


async def status_of(call) -> tuple[grpc.StatusCode, str]:
    """The status of a client call's error (the client raises the notifymesh.errors family)."""
    with pytest.raises(NotifymeshError) as info:
        await call
    return info.value.code, info.value.details


async def raw_status_of(call) -> tuple[grpc.StatusCode, str]:
    """The status of a raw stub call's error."""
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call
    return info.value.code(), info.value.details()


@pytest.mark.parametrize("name", BAD_NAMES)
async def test_bad_names_are_invalid_argument(client, name):
    code, details = await status_of(client.create_topic(name))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "invalid topic name" in details
    code, _ = await status_of(client.create_subscription(name, "some-topic"))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    code, _ = await status_of(client.publish(name, [b"x"]))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    code, _ = await status_of(client.get_subscription(name))
    assert code == grpc.StatusCode.INVALID_ARGUMENT


async def test_missing_things_are_not_found(client):
    missing = unique("missing")
    for call in (client.get_topic(missing), client.delete_topic(missing), client.publish(missing, [b"x"]),
                 client.get_subscription(missing), client.delete_subscription(missing),
                 client.create_subscription(unique("sub"), missing)):
        code, details = await status_of(call)
        assert code == grpc.StatusCode.NOT_FOUND and missing in details
    frames = client.subscribe_frames(missing, reconnect=False)
    code, _ = await status_of(frames.__anext__())
    assert code == grpc.StatusCode.NOT_FOUND


async def test_duplicates_are_already_exists_and_delete_needs_no_subscriptions(client):
    topic, sub = unique("dup"), unique("dup-sub")
    await client.create_topic(topic)
    code, _ = await status_of(client.create_topic(topic))
    assert code == grpc.StatusCode.ALREADY_EXISTS
    await client.create_subscription(sub, topic)
    code, _ = await status_of(client.create_subscription(sub, topic))
    assert code == grpc.StatusCode.ALREADY_EXISTS
    code, details = await status_of(client.delete_topic(topic))
    assert code == grpc.StatusCode.FAILED_PRECONDITION and sub in details
    await client.delete_subscription(sub)
    await client.delete_topic(topic)
    code, _ = await status_of(client.get_topic(topic))
    assert code == grpc.StatusCode.NOT_FOUND


async def test_message_and_batch_limits(client):
    topic, sub = await new_topic(client, "limits")
    cases = {
        "bytes of data": [b"x" * (1024 * 1024 + 1)],
        "at most 1000": [b"x"] * 1001,
        "no messages": [],
        "neither data nor attributes": [b""],
        "attribute key": [Message(b"x", {"": "v"})],
        "idempotency key": [Message(b"x", idempotency_key="k" * 300)],
    }
    for expected, messages in cases.items():
        code, details = await status_of(client.publish(topic, messages))
        assert code == grpc.StatusCode.INVALID_ARGUMENT and expected in details, (expected, details)
    # exactly at the limits is fine
    assert len(await client.publish(topic, [b"x" * (1024 * 1024)])) == 1
    assert len(await client.publish(topic, [b"y"] * 1000)) == 1000
    # a server-set field in a publish is refused
    stub_request = pubsub_pb2.PublishRequest(topic=topic, messages=[pubsub_pb2.PubsubMessage(data=b"x", message_id="x")])
    code, details = await raw_status_of(client._publisher.Publish(stub_request, metadata=client._metadata))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "set by the server" in details


async def test_ack_deadline_and_ack_id_checks(client):
    topic = unique("deadline")
    await client.create_topic(topic)
    for seconds in (0.5, 601):
        code, details = await status_of(client.create_subscription(unique("sub"), topic, ack_deadline_s=seconds))
        assert code == grpc.StatusCode.INVALID_ARGUMENT and "ack deadline" in details
    sub = unique("sub")
    await client.create_subscription(sub, topic)
    code, details = await status_of(client.acknowledge(sub, ["not-hex!"]))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "malformed ack id" in details
    # acks of several subscriptions share calls downstream: another's ack id is refused here
    code, details = await status_of(client.acknowledge(sub, ["0:1:someone-else"]))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "is not of subscription" in details
    code, _ = await status_of(client.acknowledge(sub, []))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    code, _ = await status_of(client.modify_ack_deadline(sub, ["1"], 10_000))
    assert code == grpc.StatusCode.INVALID_ARGUMENT


async def test_malformed_request_bytes_never_crash_a_service(mesh, client):
    garbage = b"\xff\xff\xff\xff\x0f\x08"
    for node_id, addr in mesh.members().items():
        async with aio_channel(mesh.data_dir, addr) as channel:
            for method in ("/notifymesh.v1.Publisher/Publish", "/notifymesh.internal.v1.Storage/Append",
                           "/notifymesh.internal.v1.Metadata/CreateTopic", "/notifymesh.v1.Subscriber/Acknowledge"):
                call = channel.unary_unary(method, request_serializer=None, response_deserializer=None)
                with pytest.raises(grpc.aio.AioRpcError) as info:
                    await call(garbage, timeout=5)
                if info.value.code() != grpc.StatusCode.UNIMPLEMENTED:  # not every process serves every method
                    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT, node_id
                    assert "malformed request" in info.value.details()
    for node_id in mesh.service_names():
        assert mesh.processes[node_id].alive(), f"{node_id} died"
    topic = unique("alive")
    await client.create_topic(topic)
    assert len(await client.publish(topic, [b"still serving"])) == 1


async def test_deleting_a_subscription_ends_its_streams_with_not_found(client):
    topic, sub = await new_topic(client, "gone")
    frames = client.subscribe_frames(sub)
    await client.publish(topic, [b"one"])
    first = await asyncio.wait_for(frames.__anext__(), 10)
    assert len(first) == 1
    await client.delete_subscription(sub)
    with pytest.raises(errors.NotFound):
        await asyncio.wait_for(frames.__anext__(), 10)


async def test_every_service_reports_health_and_the_frontend_serves_reflection(mesh):
    from grpc_health.v1 import health_pb2, health_pb2_grpc
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    for node_id, addr in mesh.members().items():
        async with aio_channel(mesh.data_dir, addr) as channel:
            reply = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING, node_id
    async with aio_channel(mesh.data_dir, mesh.frontend_addr) as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        replies = stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]))
        async for reply in replies:
            services = {s.name for s in reply.list_services_response.service}
            break
    assert {"notifymesh.v1.Publisher", "notifymesh.v1.Subscriber", "notifymesh.v1.Notifications",
            "grpc.health.v1.Health"} <= services


async def test_a_dead_letter_topic_in_use_cannot_be_deleted(client):
    topic, dead, sub = unique("dlq-use"), unique("dlq-used"), unique("dlq-use-sub")
    await client.create_topic(topic)
    await client.create_topic(dead)
    await client.create_subscription(sub, topic, max_delivery_attempts=3, dead_letter_topic=dead)
    code, details = await status_of(client.delete_topic(dead))
    assert code == grpc.StatusCode.FAILED_PRECONDITION and sub in details and "dead-letter" in details
    assert (await client.get_topic(dead)).name == dead
    await client.delete_subscription(sub)
    await client.delete_topic(dead)
    code, _ = await status_of(client.get_topic(dead))
    assert code == grpc.StatusCode.NOT_FOUND


async def test_a_terminal_nack_that_cannot_dead_letter_fails_and_the_message_stays(mesh, client):
    """A dead-letter topic gone behind the metadata service's back (as a delete
    could before it was refused): the terminal nack says so, and the message is
    delivered again rather than left pending for ever."""
    topic, dead = unique("dlq-gone"), unique("dlq-gone-dead")
    await client.create_topic(topic)
    await client.create_topic(dead)
    sub = unique("dlq-gone-sub")
    await client.create_subscription(sub, topic, ack_deadline_s=1, max_delivery_attempts=5, dead_letter_topic=dead)
    [message_id] = await client.publish(topic, [b"nowhere to go"])
    [received] = await receive(client, sub, 1, ack=False)
    etcd = connect_etcd(mesh.etcd_endpoint, mesh.client_tls())
    try:
        assert await etcd.delete(TOPICS + dead.encode())
    finally:
        await etcd.close()
    code, details = await status_of(client.nack(sub, [received.ack_id], terminal=True))
    assert code == grpc.StatusCode.FAILED_PRECONDITION and dead in details
    [again] = await receive(client, sub, 1, timeout=15)
    assert again.message.message_id == message_id and again.delivery_attempt >= 2


async def test_a_dead_letter_topic_is_never_deleted_under_a_subscription_created_meanwhile(client):
    """The delete's check and the create's own are transactions: when both race,
    at most one succeeds, and a subscription never names a topic that is gone."""
    topic = unique("dlq-race")
    await client.create_topic(topic)
    both = 0
    for _ in range(20):
        dead, sub = unique("dlq-race-dead"), unique("dlq-race-sub")
        await client.create_topic(dead)
        created, deleted = await asyncio.gather(
            client.create_subscription(sub, topic, max_delivery_attempts=3, dead_letter_topic=dead),
            client.delete_topic(dead), return_exceptions=True)
        for outcome in (created, deleted):
            assert not isinstance(outcome, Exception) or isinstance(outcome, (errors.NotFound,
                                                                               errors.FailedPrecondition)), outcome
        both += not isinstance(created, Exception) and not isinstance(deleted, Exception)
        if not isinstance(created, Exception):
            assert (await client.get_topic(dead)).name == dead
            await client.delete_subscription(sub)
    assert both == 0


async def publish_once_led(client, topic: str) -> list[str]:
    """A partition just made answers UNAVAILABLE ("no leader at the moment") until its
    election ends, as a client retries it; 200 new partitions' elections took longer
    than a publish right after them on a loaded CI machine."""
    deadline = asyncio.get_running_loop().time() + 30
    while True:
        try:
            return await client.publish(topic, [b"x"])
        except errors.Unavailable:
            if asyncio.get_running_loop().time() > deadline:
                raise
            await asyncio.sleep(0.2)


async def test_a_topic_takes_up_to_256_partitions_created_or_raised(client):
    """Over etcd's 128 operations a transaction, placements are stored in steps (the
    fuzz of every public RPC found a 128-partition create answered UNAVAILABLE after 15 s)."""
    big, grown = unique("big"), unique("grown")
    assert (await client.create_topic(big, partitions=256)).partition_count == 256
    await client.create_topic(grown)
    assert (await client.update_topic(grown, 200)).partition_count == 200
    for name, count in ((big, 256), (grown, 200)):
        assert (await client.get_topic(name)).partition_count == count
        [message_id] = await publish_once_led(client, name)
        assert message_id
    with pytest.raises(errors.InvalidArgument, match="partition count"):
        await client.create_topic(unique("huge"), partitions=257)
    with pytest.raises(errors.AlreadyExists):
        await client.create_topic(big, partitions=200)
