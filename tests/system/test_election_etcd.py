"""The election's etcd transactions against a real etcd: a claim fails when an
announcement it counted, or the placement record, changed after it was read; a
follower's withdrawal goes through only while the leader key is its leader's."""

from types import SimpleNamespace

from helpers import unique

from gen.notifymesh.internal.v1 import storage_pb2
from notifymesh.contracts import PLACEMENTS, Candidacy, LeaderRecord, candidates_prefix, leader_key
from notifymesh.server.cluster import connect_etcd
from storage.election import ClaimBasis, EtcdElectionStore


async def test_a_claim_checks_the_announcements_and_placement_it_read(mesh):
    etcd = connect_etcd(mesh.etcd_endpoint)
    store = EtcdElectionStore(SimpleNamespace(etcd=etcd))
    shard = f"{unique('election')}/0"
    placement_key = PLACEMENTS + shard.encode()
    record = LeaderRecord("node-1", "127.0.0.1:1")
    try:
        await etcd.put(placement_key, storage_pb2.ShardPlacement(replicas=["node-1", "node-2"]).SerializeToString())
        placement_revision = (await etcd.get(placement_key)).mod_revision
        await store.announce(shard, "node-1", Candidacy(9, 3, (0, 0)), None)
        two = await store.announce(shard, "node-2", Candidacy(5, 3, (0, 0)), None)
        read = await store.announcements(shard)
        assert set(read.candidacies) == {"node-1", "node-2"} and read.revisions["node-2"] == two
        assert await store.withdraw(shard, "node-2", None)  # node-2 took a leader's batch meanwhile
        assert await store.claim(shard, record, None, ClaimBasis(read.revisions, placement_revision)) is None
        assert await etcd.get(leader_key(shard)) is None

        await store.announce(shard, "node-2", Candidacy(5, 3, (0, 0)), None)
        read = await store.announcements(shard)
        await etcd.put(placement_key, storage_pb2.ShardPlacement(replicas=["node-2", "node-3"]).SerializeToString())
        assert await store.claim(shard, record, None, ClaimBasis(read.revisions, placement_revision)) is None

        placement_revision = (await etcd.get(placement_key)).mod_revision
        epoch = await store.claim(shard, record, None, ClaimBasis(read.revisions, placement_revision))
        assert epoch is not None and epoch == (await etcd.get(leader_key(shard))).create_revision
        # node-2 would take a batch of an older leader (epoch - 1): refused, it stays announced
        assert not await store.withdraw(shard, "node-2", epoch - 1)
        assert "node-2" in (await store.announcements(shard)).candidacies
        assert await store.withdraw(shard, "node-2", epoch)
        assert "node-2" not in (await store.announcements(shard)).candidacies
    finally:
        for key in (placement_key, leader_key(shard)):
            await etcd.delete(key)
        await etcd.delete_prefix(candidates_prefix(shard))
        await etcd.close()
