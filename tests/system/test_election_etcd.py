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
    etcd = connect_etcd(mesh.etcd_endpoint, mesh.client_tls())
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


async def test_a_dead_leaders_lease_is_ended_at_once_and_a_paused_or_cut_off_ones_is_not(mesh):
    """The leader key goes with the member lease: ended at once when the member's
    address refuses connections (its process died), so its followers elect without
    waiting out the lease; kept when a connect is accepted (a paused process: its
    kernel still accepts) or not answered (a cut link)."""
    import socket
    from notifymesh.contracts import MemberRecord, member_key
    from notifymesh.server.liveness import DeadMembers, EtcdMemberLeases, Verdict

    etcd = connect_etcd(mesh.etcd_endpoint, mesh.client_tls())
    paused = socket.create_server(("127.0.0.1", 0))  # listens, never accepts
    # A full accept queue: the kernel drops every SYN, as a cut link (nftables drop) does.
    cut_off = socket.create_server(("127.0.0.1", 0), backlog=0)
    fillers = [socket.socket() for _ in range(3)]
    for filler in fillers:
        filler.setblocking(False)
        filler.connect_ex(cut_off.getsockname())
    closed = socket.create_server(("127.0.0.1", 0))
    dead_addr = f"127.0.0.1:{closed.getsockname()[1]}"
    closed.close()
    members = {"dead": dead_addr, "paused": f"127.0.0.1:{paused.getsockname()[1]}",
               "cut-off": f"127.0.0.1:{cut_off.getsockname()[1]}"}
    nodes = {kind: unique(f"liveness-{kind}") for kind in members}
    shards = {kind: f"{unique('liveness')}/0" for kind in members}
    mirror = {}
    try:
        for kind, addr in members.items():
            lease = await etcd.lease(60)  # far longer than the test: only a revoke ends it
            record = MemberRecord(addr, lease=lease.id)
            await etcd.put(member_key("storage", nodes[kind]), record.encode(), lease=lease)
            await etcd.put(leader_key(shards[kind]), LeaderRecord(nodes[kind], addr).encode(), lease=lease)
            mirror[f"storage/{nodes[kind]}"] = record
        dead_members = DeadMembers(EtcdMemberLeases(SimpleNamespace(etcd=etcd, members=SimpleNamespace(items=mirror))))
        assert await dead_members.check("storage", members["dead"]) is Verdict.ENDED
        assert await etcd.get(leader_key(shards["dead"])) is None
        assert await etcd.get(member_key("storage", nodes["dead"])) is None
        for kind in ("paused", "cut-off"):
            assert await dead_members.check("storage", members[kind]) is not Verdict.ENDED
            assert await etcd.get(leader_key(shards[kind])) is not None, kind
        assert await dead_members.check("storage", members["dead"]) is Verdict.KEPT  # already gone
    finally:
        for sock in (paused, cut_off, *fillers):
            sock.close()
        for kind in members:
            await etcd.delete(leader_key(shards[kind]))
            await etcd.delete(member_key("storage", nodes[kind]))
        await etcd.close()
