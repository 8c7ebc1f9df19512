"""A short run of the randomised nemesis (bench/nemesis.py runs long ones): faults
of every kind, one at a time, chosen by a fixed seed, while the checker publishes
and consumes. Nothing acknowledged may be lost, and the mesh must still serve."""

import pytest
from helpers import new_topic
from netns import Lab
from partitions import FAULT_KINDS, Checker, Nemesis, partitioned_mesh

from notifymesh.client import Client

SEED = 11
# Each kind once, in turn: 5-7 s a fault with its calm, plus restarts (kill, skew);
# a loaded host took over 45 s for five of them. The bound only stops a run gone wrong.
MAX_SECONDS = 120


@pytest.fixture
def lab():
    with Lab() as lab:
        yield lab


async def test_random_faults_lose_nothing(lab, tmp_path, record_property):
    mesh = partitioned_mesh(tmp_path, lab, senders=2)
    try:
        async with Client(mesh.frontend_addr, timeout_s=10) as client:
            topic, sub = await new_topic(client, "nemesis", topic_options=dict(partitions=2, replication_factor=3),
                                         ack_deadline_s=10)
            checker = Checker(client, topic, sub, mesh)
            await checker.start()
            nemesis = Nemesis(mesh, lab, SEED, fault_s=(2, 4), quiet_s=3, every_kind_in_turn=True)
            await nemesis.run(MAX_SECONDS, faults=len(FAULT_KINDS))
            assert await checker.wait_published(50, 30), "the mesh does not serve after the faults"
            report = await checker.stop(drain_s=60)
    finally:
        mesh.stop()
    record_property("faults", nemesis.counts())
    # when each began, after the checker started (as longest_stall_ended_s)
    record_property("fault_list", [f"{f.at - checker.ledger.started:.1f}: {f}" for f in nemesis.faults])
    for name, value in vars(report).items():
        record_property(name, value)
    assert set(nemesis.counts()) == set(FAULT_KINDS)  # each kind at least once
    assert report.lost == 0, report
    assert report.one_leader_per_epoch, report
