"""Many client streams on one frontend reach each sender over one Relay call
(sender.proto): a subscription deleted ends its own stream only, and a killed
sender's streams go on over the call to the new owner."""

import asyncio

from helpers import ids_of, new_mesh, unique
from notifymesh import errors
from notifymesh.client import Client
from test_metrics import scrape

STREAMS = 30


async def relayed_calls(client: Client) -> dict[str, float]:
    """The Sender.Relay and Sender.Subscribe calls each live sender serves now."""
    status = await client.get_cluster_status()
    counts = {}
    for member in status.members:
        if member.kind != "sender":
            continue
        samples = await asyncio.to_thread(scrape, member.metrics_addr)
        for name, listed in samples.items():
            if "active_streams" in name:
                for labels, value in listed:
                    method = labels.get("rpc_method", "")
                    if method.startswith("/notifymesh.internal.v1.Sender/"):
                        key = f"{member.node_id} {method.rsplit('/', 1)[1]}"
                        counts[key] = counts.get(key, 0) + value
    return {key: value for key, value in counts.items() if value}


async def until_each_received(client: Client, streams: dict, message_id: str) -> None:
    """Every stream gets the message (acknowledging what it gets); a stream that ends fails."""
    async def one(sub, frames):
        while True:
            frame = await asyncio.wait_for(frames.__anext__(), 30)
            await client.acknowledge(sub, [m.ack_id for m in frame])
            if message_id in ids_of(frame):
                return
    await asyncio.gather(*(one(sub, frames) for sub, frames in streams.items()))


async def test_many_streams_share_one_relay_call_per_sender_through_a_deletion_and_a_killed_sender(tmp_path):
    mesh = new_mesh(tmp_path / "mesh", senders=2)
    try:
        async with Client(mesh.frontend_addr) as client:
            topic = unique("relay")
            await client.create_topic(topic)
            subs = [unique(f"relay-{i}") for i in range(STREAMS)]
            for sub in subs:
                await client.create_subscription(sub, topic)
            # reconnect=False: the frontend keeps each client's stream through what follows
            streams = {sub: client.subscribe_frames(sub, reconnect=False) for sub in subs}
            [first] = await client.publish(topic, [b"first"])
            await until_each_received(client, streams, first)
            owners = mesh.describe(subscriptions=subs).subscription_owners
            calls = await relayed_calls(client)
            assert calls == {f"{owner} Relay": 1 for owner in set(owners.values())}  # not a call per stream

            deleted = subs[0]
            await client.delete_subscription(deleted)
            try:
                while True:
                    await asyncio.wait_for(streams[deleted].__anext__(), 30)
            except errors.NotFound:
                pass
            del streams[deleted]
            [second] = await client.publish(topic, [b"second"])
            await until_each_received(client, streams, second)  # the others on the call go on

            killed = owners[subs[1]]
            mesh.kill(killed)
            [third] = await client.publish(topic, [b"third"])
            await until_each_received(client, streams, third)  # reconnected to the new owner, on its call
            survivor = next(o for o in mesh.describe(subscriptions=subs[1:]).subscription_owners.values())
            assert survivor != killed
            assert await relayed_calls(client) == {f"{survivor} Relay": 1}
            for frames in streams.values():
                await frames.aclose()
    finally:
        mesh.stop()
