"""Draining a storage node, with fakes: the storage ring leaves draining nodes out
(Cluster.placeable), placement moves a drained leader's replica away and the
leader resigns, and NodeDrains refuses precisely (metadata/drains.py)."""

import asyncio
from types import SimpleNamespace

import pytest

from gen.notifymesh.internal.v1 import storage_pb2
from gen.notifymesh.v1 import pubsub_pb2
from metadata.drains import Drains, NodeDrains
from notifymesh import errors
from notifymesh.contracts import DrainRecord, LeaderRecord, MemberRecord
from notifymesh.server.cluster import Cluster
from notifymesh.server.ring import Ring
from storage.leader import Leadership
from storage.placement import Placement

SHARD = "orders/0"


# -- the ring -------------------------------------------------------------------------------


def test_the_storage_ring_leaves_draining_nodes_out_and_they_stay_live():
    cluster = Cluster(etcd=None, max_message_bytes=1 << 20)
    cluster.members.items = {f"storage/storage-{i}": MemberRecord(f"127.0.0.1:{i}") for i in range(1, 5)}
    cluster.members.items["sender/storage-2"] = MemberRecord("127.0.0.1:9")  # another kind, same id
    cluster.draining.items = {"storage-2": DrainRecord(1)}
    cluster._rebuild_rings()
    assert cluster.rings["storage"].nodes == ("storage-1", "storage-3", "storage-4")
    assert "storage-2" in cluster.live("storage"), "still live: it serves and replicates while it drains"
    assert cluster.rings["sender"].nodes == ("storage-2",), "draining is about storage nodes only"
    assert [m.draining for m in cluster.described_members() if m.node_id == "storage-2"] == [False, True]
    cluster.draining.items = {}
    cluster._rebuild_rings()
    assert cluster.rings["storage"].nodes == ("storage-1", "storage-2", "storage-3", "storage-4")


# -- placement of a shard led by a draining node ------------------------------------------------


class FakeLog:
    def __init__(self):
        self.shards = {SHARD: SimpleNamespace(end=10, commit=10)}

    def shard(self, name):
        return self.shards[name]

    def drop(self, shard):
        del self.shards[shard]


class FakeStore:
    """The ring over storage-1..4 less the draining ones; swaps always succeed."""

    def __init__(self, draining: set[str]):
        self.nodes = [f"storage-{i}" for i in range(1, 5)]
        self.draining, self.swapped = draining, []

    def live(self):
        return {n: n for n in self.nodes}

    def wanted(self, shard, count):
        return Ring([n for n in self.nodes if n not in self.draining]).replicas(shard, count)

    async def swap(self, shard, record):
        self.swapped.append(list(record.replicas))
        return True

    async def replicas_of(self, shard):
        return None


class FakeLeader:
    def __init__(self):
        self.led, self.woken, self.stepped_down = {}, [], []

    def wake_node(self, node):
        self.woken.append(node)

    async def step_down(self, shard, reason, resign=False):
        self.led.pop(shard, None)
        self.stepped_down.append((shard, resign))


async def test_a_draining_leader_feeds_its_replacement_swaps_itself_out_and_resigns():
    store, leader = FakeStore(draining=set()), FakeLeader()
    replicas = Ring(store.nodes).replicas(SHARD, 3)  # where the shard is before the drain
    node = replicas[0]
    store.draining.add(node)
    placement = Placement(FakeLog(), store, leader, node, lambda topic: 3, {})
    lead = leader.led[SHARD] = Leadership(SHARD, epoch=5, replicas=list(replicas), marker=2)
    record = storage_pb2.ShardPlacement(topic="orders", partition=0, replicas=replicas, replication_factor=3)

    await placement.maintain(lead, record)  # the replacement becomes a learner, not yet caught up
    [replacement] = [n for n in store.nodes if n not in replicas]
    assert lead.learners == {replacement} and leader.woken == [replacement] and not store.swapped
    assert not leader.stepped_down

    lead.progress[replacement].match = 10  # it has every committed entry
    await placement.maintain(lead, record)
    assert store.swapped == [[n for n in replicas if n != node] + [replacement]]
    assert leader.stepped_down == [(SHARD, True)], "resigns: a caught-up replica is elected at once"


async def test_a_follower_on_a_draining_node_is_swapped_out_and_the_leader_stays():
    store, leader = FakeStore(draining=set()), FakeLeader()
    replicas = Ring(store.nodes).replicas(SHARD, 3)
    node, drained = replicas[0], replicas[1]
    store.draining.add(drained)
    placement = Placement(FakeLog(), store, leader, node, lambda topic: 3, {})
    lead = leader.led[SHARD] = Leadership(SHARD, epoch=5, replicas=list(replicas), marker=2)
    record = storage_pb2.ShardPlacement(topic="orders", partition=0, replicas=replicas, replication_factor=3)
    await placement.maintain(lead, record)
    [replacement] = lead.learners
    lead.progress[replacement].match = 10
    await placement.maintain(lead, record)
    assert store.swapped == [[n for n in replicas if n != drained] + [replacement]]
    assert not leader.stepped_down and lead.replicas == store.swapped[0]


# -- NodeDrains -----------------------------------------------------------------------------------


class FakeDrainStore:
    """Drains in memory, with etcd's compare on the epoch; each read yields to the
    event loop, so drains begun together interleave."""

    def __init__(self):
        self.recorded: dict[str, DrainRecord] = {}
        self.epoch = self.writes = 0

    async def draining(self):
        read = Drains(dict(self.recorded), self.epoch)
        await asyncio.sleep(0)  # the answer's way back: others run
        return read

    async def record(self, node, record, epoch):
        if node in self.recorded or epoch != self.epoch:
            return False
        self.writes += 1
        self.recorded[node], self.epoch = record, self.epoch + 1
        return True

    async def end(self, node):
        self.recorded.pop(node, None)


def view(live: list[str], replication_factor: int = 3):
    placements = {f"orders/{p}": storage_pb2.ShardPlacement(topic="orders", partition=p,
                                                            replicas=live[p % len(live):][:3] or live[:3])
                  for p in range(4)}
    return SimpleNamespace(
        live=lambda kind: {n: n for n in live} if kind == "storage" else {},
        topics=SimpleNamespace(items={"orders": pubsub_pb2.Topic(name="orders",
                                                                  replication_factor=replication_factor)}),
        placements=SimpleNamespace(items=placements),
        leaders=SimpleNamespace(items={"orders/0": LeaderRecord("storage-1", "a"),
                                       "orders/1": LeaderRecord("storage-2", "b")}))


async def test_a_drain_is_recorded_once_and_reports_what_the_node_still_holds():
    cluster, store = view(["storage-1", "storage-2", "storage-3", "storage-4"]), FakeDrainStore()
    drains = NodeDrains(cluster, store)
    first = await drains.drain("storage-1")
    held = sum("storage-1" in p.replicas for p in cluster.placements.items.values())
    assert first.draining and first.replicas == held and first.leading == 1 and first.since.seconds > 0
    assert (await drains.drain("storage-1")).since == first.since and store.writes == 1, "again: no change"
    undone = await drains.drain("storage-1", undrain=True)
    assert not undone.draining and not store.recorded and not undone.HasField("since")


async def test_draining_below_the_replication_factor_is_refused_with_the_numbers():
    store = FakeDrainStore()
    drains = NodeDrains(view(["storage-1", "storage-2", "storage-3", "storage-4"]), store)
    await drains.drain("storage-4")
    with pytest.raises(errors.FailedPrecondition) as refused:
        await drains.drain("storage-3")
    message = str(refused.value)
    assert "2 live storage node(s)" in message and "storage-1, storage-2" in message
    assert "1 other(s) draining" in message and "replication factor 3 of topic 'orders'" in message
    assert list(store.recorded) == ["storage-4"]
    assert (await NodeDrains(view(["storage-1", "storage-2"], replication_factor=1), store).drain(
        "storage-1")).draining, "a factor the rest can hold"


async def test_an_unknown_or_missing_node_is_refused():
    drains = NodeDrains(view(["storage-1", "storage-2", "storage-3", "storage-4"]), FakeDrainStore())
    with pytest.raises(errors.NotFound, match="storage-9.*storage-1, storage-2, storage-3, storage-4"):
        await drains.drain("storage-9")
    with pytest.raises(errors.NotFound):
        await drains.drain("storage-9", undrain=True)
    with pytest.raises(errors.InvalidArgument):
        await drains.drain("")


async def test_two_drains_begun_together_cannot_both_pass_the_check():
    store = FakeDrainStore()
    drains = NodeDrains(view(["storage-1", "storage-2", "storage-3", "storage-4"]), store)
    results = await asyncio.gather(drains.drain("storage-3"), drains.drain("storage-4"), return_exceptions=True)
    refused = [r for r in results if isinstance(r, errors.FailedPrecondition)]
    assert len(store.recorded) == 1 and len(refused) == 1, (store.recorded, results)
    assert "1 other(s) draining" in str(refused[0])
