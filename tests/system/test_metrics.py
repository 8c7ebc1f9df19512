"""Every process serves GET /metrics (notifymesh.server.telemetry), found through
cluster status, and its values move as messages flow: publishes counted at the
frontend, the backlog rising on the partition's leader and falling once acked,
deliveries counted at the sender, pushes timed from publish to the endpoint."""

import asyncio
import urllib.request

from helpers import Receiver, receive, unique
from prometheus_client.parser import text_string_to_metric_families

from notifymesh.client import Client

PUBLISHED = 25


def scrape(addr: str) -> dict[str, list[tuple[dict, float]]]:
    """metric sample name -> [(labels, value)]."""
    with urllib.request.urlopen(f"http://{addr}/metrics", timeout=10) as answer:
        assert answer.headers["Content-Type"].startswith("text/plain")
        text = answer.read().decode()
    samples: dict[str, list[tuple[dict, float]]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples.setdefault(sample.name, []).append((sample.labels, sample.value))
    return samples


def value(samples, name: str, **labels) -> float:
    """The sum of name's samples whose labels include labels (0 when none)."""
    return sum(v for found, v in samples.get(name, []) if labels.items() <= found.items())


async def scrape_members(client: Client) -> dict[str, tuple[str, dict]]:
    status = await client.get_cluster_status()
    return {m.node_id: (m.kind, await asyncio.to_thread(scrape, m.metrics_addr)) for m in status.members}


async def eventually(check, timeout_s: float = 20):
    deadline = asyncio.get_running_loop().time() + timeout_s
    while True:
        try:
            return await check()
        except AssertionError:
            if asyncio.get_running_loop().time() > deadline:
                raise
            await asyncio.sleep(0.2)


async def test_every_process_serves_metrics_that_move_as_messages_flow(mesh):
    receiver = Receiver()
    try:
        async with Client(mesh.frontend_addr) as client:
            topic, pulled, pushed = unique("metrics"), unique("metrics-pull"), unique("metrics-push")
            await client.create_topic(topic, replication_factor=3)
            await client.create_subscription(pulled, topic)
            await client.create_subscription(pushed, topic, push_endpoint=receiver.url)
            before = await scrape_members(client)
            assert {kind for kind, _ in before.values()} == {"frontend", "metadata", "storage", "sender"}
            for node, (kind, samples) in before.items():
                [(resource, _)] = samples["target_info"]
                assert resource["service_name"] == f"notifymesh-{kind}" and resource["service_instance_id"] == node
                assert value(samples, "process_resident_memory_bytes") > 0, node
                assert value(samples, "notifymesh_event_loop_lag_seconds_count") > 0, node
            publish = "/notifymesh.v1.Publisher/Publish"
            frontend_before = value(before["frontend-1"][1], "notifymesh_rpc_server_duration_seconds_count",
                                    rpc_method=publish, rpc_grpc_status_code="OK")

            for i in range(PUBLISHED):
                await client.publish(topic, [b"m%d" % i])

            async def backlog_counted():
                members = await scrape_members(client)
                assert value(members["frontend-1"][1], "notifymesh_rpc_server_duration_seconds_count",
                             rpc_method=publish, rpc_grpc_status_code="OK") - frontend_before == PUBLISHED
                assert sum(value(samples, "notifymesh_subscription_backlog", subscription=pulled)
                           for kind, samples in members.values() if kind == "storage") == PUBLISHED
                assert sum(value(samples, "notifymesh_partition_commit", topic=topic)
                           for kind, samples in members.values() if kind == "storage") >= PUBLISHED
                return members
            await eventually(backlog_counted)

            await receive(client, pulled, PUBLISHED)

            async def drained_and_delivered():
                members = await scrape_members(client)
                storage = [samples for kind, samples in members.values() if kind == "storage"]
                assert sum(value(s, "notifymesh_subscription_backlog", subscription=pulled) for s in storage) == 0
                assert sum(value(s, "notifymesh_subscription_backlog", subscription=pushed) for s in storage) == 0
                senders = [samples for kind, samples in members.values() if kind == "sender"]
                assert sum(value(s, "notifymesh_stream_delivered_total", subscription=pulled)
                           for s in senders) >= PUBLISHED
                assert sum(value(s, "notifymesh_push_publish_to_delivery_duration_seconds_count",
                                 subscription=pushed, outcome="ok") for s in senders) >= PUBLISHED
                assert sum(value(s, "notifymesh_etcd_lease_renewals_total", outcome="ok")
                           for _, s in members.values()) > 0
            await eventually(drained_and_delivered)
    finally:
        receiver.close()
