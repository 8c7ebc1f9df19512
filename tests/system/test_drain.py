"""Graceful scale-in: `notifymesh node drain` moves a storage node's replicas and
leaderships to the others while a publisher runs, without a failed publish; the
node then stops (SIGTERM) and every acknowledged message is delivered."""

import asyncio
import json
import signal
import time

import pytest
from helpers import cli, ids_of, new_mesh, receive, unique

from notifymesh.client import Client, Message

PARTITIONS = 4
PUBLISH_MAX = 4000   # messages, at most
PUBLISH_MAX_S = 120  # seconds, at most
PUBLISHERS = 4


@pytest.fixture
def four_storage_nodes(tmp_path):
    mesh = new_mesh(tmp_path / "mesh", storage_nodes=4)
    yield mesh
    mesh.stop()


def held_and_led(status, node: str) -> tuple[int, int]:
    return (sum(node in shard.replicas for shard in status.shards),
            sum(shard.leader == node for shard in status.shards))


async def test_drain_moves_replicas_and_leaderships_away_without_a_failed_publish(four_storage_nodes):
    mesh = four_storage_nodes
    async with Client(mesh.frontend_addr) as client:
        topic, sub = unique("drain"), unique("drain-sub")
        await client.create_topic(topic, partitions=PARTITIONS)
        await client.create_subscription(sub, topic, ack_deadline_s=30)
        status = await client.get_cluster_status()
        storage = sorted(m.node_id for m in status.members if m.kind == "storage")
        assert len(storage) == 4
        # The node that leads the most partitions: its leaderships must be handed over.
        node = max(storage, key=lambda n: held_and_led(status, n)[1])
        held, led = held_and_led(status, node)
        assert held and led, (node, held, led)

        acked: list[str] = []
        failures: list[BaseException] = []
        stop = asyncio.Event()

        async def publish(worker: int) -> None:
            deadline = time.monotonic() + PUBLISH_MAX_S
            i = 0
            while not stop.is_set() and len(acked) < PUBLISH_MAX and time.monotonic() < deadline:
                try:
                    acked.extend(await client.publish(topic, [Message(f"{worker}-{i}".encode())]))
                except Exception as e:  # every one must succeed: recorded, the test fails below
                    failures.append(e)
                i += 1

        publishers = [asyncio.create_task(publish(w)) for w in range(PUBLISHERS)]
        while len(acked) < 100 and not failures:
            await asyncio.sleep(0.05)
        drained = await asyncio.to_thread(cli, mesh, "node", "drain", node, "--timeout", "90s")
        during = len(acked)
        await asyncio.sleep(1)  # publishing goes on once the node holds nothing
        stop.set()
        await asyncio.gather(*publishers)
        assert drained.returncode == 0, drained.stderr.decode()
        summary = json.loads(drained.stdout.decode().splitlines()[-1])
        assert summary["drained"] and summary["replicas"] == 0 and summary["leading"] == 0, summary
        assert summary["moved_replicas"] == held and summary["handed_over"] >= 1, summary
        assert drained.stderr.decode().strip(), "progress lines while it waited"
        assert not failures, f"{len(failures)} failed publishes, the first: {failures[0]!r}"
        assert len(acked) > during > 100, "publishing ran throughout"

        status = await client.get_cluster_status()
        assert held_and_led(status, node) == (0, 0)
        assert list(status.draining) == [node]
        assert [m.draining for m in status.members if m.node_id == node] == [True]
        table = cli(mesh, "cluster", "status", "--output", "table")
        assert f"draining  {node}" in table.stdout.decode()

        mesh.kill(node, signal.SIGTERM)  # stopped: it holds nothing
        got = await receive(client, sub, len(set(acked)), timeout=60)
        assert set(acked) <= set(ids_of(got)), f"{len(set(acked) - set(ids_of(got)))} acknowledged, not delivered"

        # Three live nodes left, replication factor 3: no further drain; an unknown node.
        other = next(n for n in storage if n != node)
        refused = cli(mesh, "node", "drain", other, "--timeout", "5s")
        assert refused.returncode == 1
        assert "FAILED_PRECONDITION" in refused.stderr.decode() and "2 live storage node(s)" in \
            refused.stderr.decode() and "replication factor 3" in refused.stderr.decode(), refused.stderr
        unknown = cli(mesh, "node", "drain", "storage-9")
        assert unknown.returncode == 1 and "NOT_FOUND" in unknown.stderr.decode(), unknown.stderr

        undrained = cli(mesh, "node", "undrain", node)
        assert undrained.returncode == 0, undrained.stderr
        assert json.loads(undrained.stdout)["draining"] is False
        assert list((await client.get_cluster_status()).draining) == []
