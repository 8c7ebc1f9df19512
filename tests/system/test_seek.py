"""Seek and purge end to end: back within retain_acked, forward, to the end; the
reach of a seek back after the leader died (every replica kept the window); the
CLI through its entry point."""

import asyncio
import datetime
import json
import time

import pytest

from helpers import cli, ids_of, new_topic, receive, unique
from notifymesh import errors


def utc_now() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)


async def nothing_more(client, subscription: str) -> bool:
    return await receive(client, subscription, 1, timeout=2) == []


async def test_seek_back_within_retain_acked_and_forward(mesh, client):
    topic, sub = await new_topic(client, "seek", topic_options={"partitions": 2, "retain_acked_s": 3600},
                                 ack_deadline_s=60)
    start = utc_now()
    first = await client.publish(topic, [b"first-%d" % i for i in range(6)])
    await asyncio.sleep(0.05)
    middle = utc_now()
    await asyncio.sleep(0.05)
    second = await client.publish(topic, [b"second-%d" % i for i in range(6)])
    assert set(ids_of(await receive(client, sub, 12))) == set(first + second)  # and acknowledged
    assert await nothing_more(client, sub)

    reply = await client.seek(sub, middle)  # back: what was published since comes again
    assert reply.partitions_limited == 0
    assert set(ids_of(await receive(client, sub, 6))) == set(second)
    assert await nothing_more(client, sub)

    assert (await client.seek(sub, start)).partitions_limited == 0  # further back: everything
    assert set(ids_of(await receive(client, sub, 12))) == set(first + second)

    await client.seek(sub, start)
    await client.seek(sub, middle)  # forward again: what was published before counts as acknowledged
    again = await receive(client, sub, 6)
    assert set(ids_of(again)) == set(second) and not set(ids_of(again)) & set(first)
    assert await nothing_more(client, sub)


async def test_purge_acknowledges_everything_so_far_and_without_retain_acked_it_stays_so(mesh, client):
    topic, sub = await new_topic(client, "purge", ack_deadline_s=60)
    start = utc_now()
    await client.publish(topic, [b"old-%d" % i for i in range(5)])
    await client.purge(sub)
    assert await nothing_more(client, sub)
    later = await client.publish(topic, [b"later"])
    assert ids_of(await receive(client, sub, 1)) == later
    # acknowledged, and the topic keeps no acknowledged messages: a seek back stops short
    assert (await client.seek(sub, start)).partitions_limited == 1
    assert await nothing_more(client, sub)


async def test_a_seek_back_after_the_leader_died_finds_every_message_in_the_window(own_mesh):
    """Followers stub and the leader collects what every subscription acknowledged,
    but nothing within retain_acked: the new leader still has all of it."""
    from notifymesh.client import Client
    async with Client(own_mesh.frontend_addr) as client:
        topic, sub = await new_topic(client, "seek-failover", topic_options={"replication_factor": 3,
                                                                             "retain_acked_s": 3600})
        start = utc_now()
        ids = await client.publish(topic, [b"m-%d" % i for i in range(30)])
        assert set(ids_of(await receive(client, sub, 30))) == set(ids)
        await asyncio.sleep(3)  # a few collection rounds (1 s) with the state the followers received
        leader = next(s.leader for s in (await client.get_cluster_status()).shards if s.topic == topic)
        own_mesh.kill(leader)
        deadline = time.monotonic() + 30
        while not any(s.topic == topic and s.leader and s.leader != leader
                      for s in (await client.get_cluster_status()).shards):
            assert time.monotonic() < deadline, "no new leader"
            await asyncio.sleep(0.1)
        assert (await client.seek(sub, start)).partitions_limited == 0
        assert set(ids_of(await receive(client, sub, 30))) == set(ids)


async def test_retain_acked_is_validated_and_can_be_set_later(mesh, client):
    with pytest.raises(errors.InvalidArgument, match="retain_acked 30s out of range"):
        await client.create_topic(unique("retain"), retain_acked_s=30)
    with pytest.raises(errors.InvalidArgument, match="retain_acked"):
        await client.create_topic(unique("retain"), retention_s=3600, retain_acked_s=7200)
    topic = unique("retain")
    created = await client.create_topic(topic, partitions=2)
    assert created.retain_acked.seconds == 0
    updated = await client.update_topic(topic, retain_acked_s=600)
    assert (updated.retain_acked.seconds, updated.partition_count) == (600, 2)
    assert (await client.get_topic(topic)).retain_acked.seconds == 600
    assert (await client.update_topic(topic, retain_acked_s=0)).retain_acked.seconds == 0
    with pytest.raises(errors.NotFound):
        await client.seek(unique("nope"), to_end=True)
    with pytest.raises(errors.InvalidArgument, match="a time or to_end"):
        await client.seek(unique("nope"))


async def test_cli_seek_and_purge(mesh, client):
    topic, sub = unique("seek-cli"), unique("seek-cli-sub")
    created = cli(mesh, "topic", "create", topic, "--retain-acked", "1h")
    assert created.returncode == 0 and json.loads(created.stdout)["retain_acked_s"] == 3600
    assert cli(mesh, "subscription", "create", sub, "--topic", topic).returncode == 0
    start = utc_now()
    ids = await client.publish(topic, [b"a", b"b"])
    assert set(ids_of(await receive(client, sub, 2))) == set(ids)

    seek = cli(mesh, "subscription", "seek", sub, "--time", start.strftime("%Y-%m-%dT%H:%M:%S.%fZ"))
    assert seek.returncode == 0, seek.stderr
    line = json.loads(seek.stdout)
    assert (line["subscription"], line["partitions_limited"]) == (sub, 0)
    assert datetime.datetime.fromisoformat(line["time"]) == start
    assert set(ids_of(await receive(client, sub, 2))) == set(ids)

    await client.publish(topic, [b"c"])
    purge = cli(mesh, "subscription", "purge", sub)
    assert (purge.returncode, json.loads(purge.stdout)) == (0, {"subscription": sub, "to_end": True,
                                                                "partitions_limited": 0})
    assert await nothing_more(client, sub)
    assert cli(mesh, "subscription", "seek", sub, "--to-end").returncode == 0

    no_zone = cli(mesh, "subscription", "seek", sub, "--time", "2026-11-30T10:00:00")
    assert no_zone.returncode == 2 and b"with its zone" in no_zone.stderr
    neither = cli(mesh, "subscription", "seek", sub)
    assert neither.returncode == 2 and b"--time --to-end" in neither.stderr
    unknown = cli(mesh, "subscription", "purge", unique("nope"))
    assert unknown.returncode == 1 and unknown.stderr.startswith(b"error: NOT_FOUND")
    assert b"Traceback" not in unknown.stderr
    too_short = cli(mesh, "topic", "update", topic, "--retain-acked", "30s")
    assert too_short.returncode == 1 and b"INVALID_ARGUMENT" in too_short.stderr
    assert cli(mesh, "topic", "update", topic).returncode == 2
