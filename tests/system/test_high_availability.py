"""No single point of failure: the mesh of `notifymesh up --ha` loses one process
of each kind in turn (SIGKILL) under continuous publishing and consuming, and no
acknowledged message is lost; a client given two frontends spreads its calls over
both and carries on when one dies."""

import asyncio
import dataclasses
import time

from helpers import frontend_log_lines, new_mesh, new_topic, unique
from partitions import Checker

from notifymesh.client import Client

RECOVERY_TIMEOUT_S = 20  # publishing goes on within this after each kill (etcd leases: 3 s)
CALLS = 40


async def test_one_clients_calls_are_spread_over_two_frontends_and_go_on_when_one_dies(tmp_path, record_property):
    mesh = new_mesh(tmp_path / "mesh", frontends=2, storage_nodes=1)
    try:
        async with Client(mesh.frontend_target, timeout_s=10) as client:
            topic, subscription = await new_topic(client, "spread")
            # Each RedriveDeadLetters call logs one line, on the frontend that served it.
            # Round robin spreads calls over the frontends it has connected to; on a loaded
            # machine the second connection may be up a few dozen calls after the first
            # (CI once saw 31 of the first 40 on one), so the share is counted once both serve.
            warmup = 0
            while min(frontend_log_lines(mesh, subscription).values()) == 0:
                assert warmup < 10 * CALLS, f"one frontend never served: {frontend_log_lines(mesh, subscription)}"
                await client.redrive_dead_letters(subscription)
                warmup += 1
            before = frontend_log_lines(mesh, subscription)
            for _ in range(CALLS):
                await client.redrive_dead_letters(subscription)
            served = {name: count - before[name] for name, count in frontend_log_lines(mesh, subscription).items()}
            record_property("calls_per_frontend", served)
            assert sum(served.values()) == CALLS
            assert min(served.values()) >= CALLS * 0.3, f"not a fair share: {served}"

            mesh.kill("frontend-1")
            for _ in range(CALLS // 2):
                await client.redrive_dead_letters(subscription)
                assert len(await client.publish(topic, [b"after"])) == 1
            after = frontend_log_lines(mesh, subscription)
            assert after["frontend-2"] == before["frontend-2"] + served["frontend-2"] + CALLS // 2
    finally:
        mesh.stop()


async def kill_and_recover(mesh, checker: Checker, client: Client, name: str, record_property) -> None:
    """SIGKILL name; publishing must go on without it, and an admin call succeed;
    then it is restarted and serves again."""
    before = len(checker.acknowledged)
    killed_at = time.monotonic()
    mesh.kill(name)
    assert await checker.wait_published(20, RECOVERY_TIMEOUT_S), \
        f"no publishing within {RECOVERY_TIMEOUT_S}s of killing {name} ({len(checker.acknowledged) - before} since)"
    record_property(f"publishing_resumed_s_after_killing_{name}",
                    round(time.monotonic() - killed_at, 2))
    await client.create_topic(unique(f"while-{name}-down"))  # metadata, through etcd, without the killed one
    await asyncio.to_thread(mesh.restart, name)


async def test_losing_any_one_process_loses_no_acknowledged_message(ha_mesh, record_property):
    mesh = ha_mesh
    async with Client(mesh.frontend_target, timeout_s=10) as client:
        topic, subscription = await new_topic(client, "ha", ack_deadline_s=3)
        checker = Checker(client, topic, subscription, mesh)
        await checker.start()
        assert await checker.wait_published(20, RECOVERY_TIMEOUT_S)
        status = await client.get_cluster_status()
        leader = next(s.leader for s in status.shards if s.topic == topic)
        owner = mesh.describe(subscriptions=[subscription]).subscription_owners[subscription]
        # Both frontends in turn: the Subscriber's stream runs through one of them.
        for name in ("etcd-1", "metadata-1", owner, "frontend-1", "frontend-2", leader):
            await kill_and_recover(mesh, checker, client, name, record_property)
        assert await checker.wait_published(20, RECOVERY_TIMEOUT_S)
        report = await checker.stop(drain_s=30)
    for name, value in dataclasses.asdict(report).items():
        record_property(name, value)
    assert report.acknowledged > 100
    assert report.lost == 0, report
