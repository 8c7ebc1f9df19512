"""Replication of shards across storage nodes, with leaders elected through etcd.

Each shard (a partition of a topic) has a replica set recorded in etcd (its
placement). Without a leader, every replica announces its log position (end and
the epoch of its last entry) under its member lease; once a majority of the
replica set has announced, the most advanced one claims leadership with a
create-only transaction. The revision of that transaction is the leader's epoch.
Because any majority overlaps the majority that acknowledged a write, the most
advanced log of a majority holds every acknowledged entry.

The leader appends and, while its own write syncs, replicates to the other
replicas (one stream per follower node, one request in flight on it, carrying
every shard it leads there), and acknowledges a publish once a majority has the
entries on disk, itself included. It first writes a marker entry of its
own epoch and counts entries as committed only once an entry of its epoch is on
a majority, so an older epoch's tail is never taken for committed. Followers
refuse any epoch older than the newest they have seen (kept on disk, so a
restart does not forget it), and a leader whose member lease may have lapsed
acknowledges nothing (checked again once a majority has the entries), so a
deposed leader cannot get a write acknowledged. A leader no majority has
answered within the lease resigns (check-quorum): one that still reaches etcd
but not its followers does not keep the shard.

A follower whose leader went silent probes the leader's address; a dead process's
address refuses connections, and its member lease is then ended at once
(notifymesh.server.liveness) rather than after its TTL, so the followers elect
within a second of its death. This weakens no fencing: ending a lease is its expiry
brought forward (etcd deletes the same keys), and no rule here relies on when that
happens. A deposed leader of epoch E, even alive, gets a write acknowledged only by
a majority that took it at E; a newer leader's claim counted a majority of
announcements (unchanged up to the claim), and the two majorities share a replica.
An announced replica takes no batch of E: withdrawing needs E's leader key, which
is gone (a withdrawal while it exists changes the announcement and fails the claim);
after taking the newer leader's batch it refuses E as older (on disk). So that
replica took the write before announcing, its announcement counts it, and the most
advanced of the majority, elected, has it.

The leader also keeps the placement in line with the ring over the live storage
nodes: a node that should hold the shard but does not is fed as a learner until
it has everything committed, and then swapped into the placement (a
compare-and-swap on the record) for one that should not.

The parts, one job each:
- storage/replication_rules.py  the rules, as plain functions without I/O
- storage/election.py           candidacies and the leader key
- storage/leader.py             Leadership, the write path, the streams to followers
- storage/follower.py           the Replicate handler
- storage/placement.py          the replica set and learners; dropping abandoned shards
- notifymesh/server/liveness.py ending a dead member's lease at once
- this module                   Replication: the loop that follows etcd, start and stop, status
"""

import asyncio
import logging
import time
from typing import Callable

from gen.notifymesh.v1 import cluster_pb2
from notifymesh.contracts import Shard
from notifymesh.log import fields
from notifymesh.server.cluster import Cluster
from notifymesh.server.liveness import DeadMembers, EtcdMemberLeases
from storage.election import Election, EtcdElectionStore, Registered
from storage.engine import StorageEngine
from storage.follower import Follower
from storage.leader import REPLICATE_MAX_BYTES, TICK_S, Leader, Leadership, Progress
from storage.placement import EtcdPlacementStore, Placement
from storage.replication_rules import quorum

__all__ = ["Replication", "Leadership", "Progress", "quorum"]

log = logging.getLogger(__name__)

FINAL_STATE_TIMEOUT_S = 2.0    # on shutdown, for the followers to take the last delivery state
# A leader that sent nothing for this long (a live one sends every shard a heartbeat
# every HEARTBEAT_S, 1 s, and streams while publishes come) has its address probed:
# if it refuses connections, its process is dead and its lease is ended at once
# (notifymesh.server.liveness), so the followers elect without waiting out the lease.
# An idle live leader costs each follower a TCP connect about once a second.
LEADER_SILENT_S = 0.5
WATCH_LEADERS_S = 0.1          # how often the followers' silence is looked at
# Leaderless shards this node campaigns for at once: one at a time, a new topic of
# 256 partitions took 7.9 s to be led, and the 129 shards of a killed node 7.3 s
# (bench/elections.py), each campaign being four etcd round trips.
CAMPAIGNS_IN_FLIGHT = 16


class Replication:
    def __init__(self, engine: StorageEngine, cluster: Cluster, registration_of: Callable[[], Registered | None],
                 node_id: str, replication_factor_of: Callable[[str], int],
                 max_request_bytes: int = REPLICATE_MAX_BYTES):
        """registration_of(): this node's Registration (its lease fences leadership);
        replication_factor_of(topic): the topic's replication factor; max_request_bytes:
        the bound of one Replicate request (well under Config.max_grpc_message_bytes)."""
        self._engine, self._cluster, self._node = engine, cluster, node_id
        self._registration_of = registration_of
        known_epoch: dict[str, int] = {}   # the newest epoch seen of each shard
        last_heard: dict[str, float] = {}  # when a leader last fed each shard here
        self._known_epoch = known_epoch
        self.election = Election(EtcdElectionStore(cluster), engine, node_id)
        self.leader = Leader(engine, cluster, self.election, node_id, registration_of, known_epoch,
                             max_request_bytes)
        self.follower = Follower(engine, self.leader, self.election, known_epoch, last_heard)
        self.placement = Placement(engine, EtcdPlacementStore(cluster), self.leader, node_id,
                                   replication_factor_of, last_heard)
        # The service's calls go straight to the part: no extra call on the hot path.
        self.led: dict[str, Leadership] = self.leader.led
        self.leadership = self.leader.leadership
        self.append = self.leader.append
        self.replicate = self.follower.replicate
        self.dead_members = DeadMembers(EtcdMemberLeases(cluster))
        # node -> address of the leaders of the shards this node follows (as of the last
        # round): those whose silence is watched.
        self._followed: dict[str, str] = {}
        self._changed = asyncio.Event()
        self._task: asyncio.Task | None = None
        self._watch: asyncio.Task | None = None

    def _advance_commit(self, lead: Leadership) -> None:  # tests/unit/test_storage_engine.py drives this
        self.leader.advance_commit(lead)

    # -- lifecycle --------------------------------------------------------------

    def start(self) -> None:
        for mirror in (self._cluster.placements, self._cluster.leaders, self._cluster.members):
            mirror.on_change(lambda _name: self._changed.set())
        self.follower.open()  # the engine recovered (its constructor) and writes (started before this)
        self._task = asyncio.create_task(self._run())
        self._watch = asyncio.create_task(self._watch_leaders())

    async def stop(self) -> None:
        """Sends the followers the final delivery state, then gives up every
        leadership at once so the others elect without waiting for the lease."""
        if self._task:
            self._task.cancel()
        if self._watch:
            self._watch.cancel()
            await asyncio.gather(self._watch, return_exceptions=True)
        await self.dead_members.close()
        self.leader.state_due()
        give_up = time.monotonic() + FINAL_STATE_TIMEOUT_S
        while time.monotonic() < give_up and self.leader.states_pending():
            await asyncio.sleep(0.02)
        tasks = [t for t in (self._task, *self.leader.senders.values()) if t]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for shard in list(self.led):
            await self.leader.step_down(shard, "shutting down", resign=True)

    async def _run(self) -> None:
        last_tick = 0.0
        while True:
            try:
                await asyncio.wait_for(self._changed.wait(), TICK_S)
            except TimeoutError:
                pass
            self._changed.clear()
            if time.monotonic() - last_tick >= TICK_S:
                last_tick = time.monotonic()
                self.leader.state_due()  # delivery state goes out once a tick, not with every batch
                try:
                    await self.leader.check_quorum()
                except asyncio.CancelledError:
                    raise
                except Exception as e:
                    log.warning("check-quorum failed", extra=fields(error=repr(e)))
            if self._registration_of() is None:  # not registered yet: cannot lead
                continue
            try:
                await self._reconcile()
            except asyncio.CancelledError:
                raise
            except Exception as e:
                log.warning("replication round failed", extra=fields(error=repr(e)))

    async def _watch_leaders(self) -> None:
        """Has the leaders that went silent checked (DeadMembers): a dead one's lease is
        ended, which deletes its leader keys, and this node campaigns at once."""
        while True:
            await asyncio.sleep(WATCH_LEADERS_S)
            for addr in self.follower.silent_leaders(self._followed, LEADER_SILENT_S):
                self.dead_members.suspect("storage", addr)

    async def _reconcile(self) -> None:
        placements, leaders = self._cluster.placements.items, self._cluster.leaders.items
        followed: dict[str, str] = {}
        leaderless: list[str] = []
        for shard, placement in list(placements.items()):
            leader = leaders.get(shard)
            epoch = self._cluster.epoch(shard)
            if leader is not None:
                self._known_epoch[shard] = max(self._known_epoch.get(shard, 0), epoch)
                if leader.node != self._node and self._node in placement.replicas:
                    followed[leader.node] = leader.addr
            lead = self.led.get(shard)
            if lead is not None and not await self.election.still_leader(shard, lead.epoch, leader, epoch):
                await self.leader.step_down(shard, "leader key changed")
                lead = None
            if leader is not None and leader.node == self._node and lead is None:
                await self.election.delete_leader_key(shard, epoch)  # from before this process restarted
                log.info("cleared the leader key of an earlier run", extra=fields(shard=shard, epoch=epoch))
            elif leader is None and self._node in placement.replicas:
                leaderless.append(shard)
            elif lead is not None:
                await self.placement.maintain(lead, placement)
        self._followed = followed
        await self._campaign(leaderless)
        for shard in list(self.led):
            if shard not in placements:
                await self.leader.step_down(shard, "topic deleted", resign=True)
        await self.placement.drop_abandoned(placements)

    async def _campaign(self, shards: list[str]) -> None:
        """Stands for each of shards still without a leader, CAMPAIGNS_IN_FLIGHT at a
        time, and leads those won. A shard whose campaign failed is left to the next
        round (one line logged for all that failed); the others go on."""
        pending = iter(shards)
        failed: dict[str, Exception] = {}

        async def campaigner() -> None:
            for shard in pending:
                placement = self._cluster.placements.items.get(shard)  # as of now: the round's may be old
                if placement is None or self._node not in placement.replicas or shard in self._cluster.leaders.items:
                    continue
                registration = self._registration_of()
                if registration is None:  # the member lease was lost meanwhile: nothing to lead with
                    return
                try:
                    won = await self.election.campaign(shard, placement.replicas, registration,
                                                       self._cluster.placements.revisions.get(shard, (0, 0))[1])
                    if won is not None:
                        await self.leader.lead(shard, won, list(placement.replicas))
                except asyncio.CancelledError:
                    raise
                except Exception as e:
                    failed[shard] = e

        await asyncio.gather(*(campaigner() for _ in range(min(CAMPAIGNS_IN_FLIGHT, len(shards)))))
        if failed:  # etcd unreachable fails them all: one line a round, not one a shard
            first = next(iter(failed))
            log.warning("campaigns failed", extra=fields(shards=len(failed), first=first, error=repr(failed[first])))

    # -- status -----------------------------------------------------------------

    def status(self) -> list[cluster_pb2.ShardStatus]:
        out = []
        for shard, lead in self.led.items():
            log_ = self._engine.shard(shard)
            topic, partition = Shard.parse(shard)
            replicas = [cluster_pb2.ReplicaStatus(node_id=self._node, role="leader", end=log_.end, lag=0)]
            for node, progress in sorted(lead.progress.items()):
                role = "learner" if node in lead.learners else "follower"
                replicas.append(cluster_pb2.ReplicaStatus(node_id=node, role=role, end=progress.match,
                                                          lag=max(0, log_.end - progress.match)))
            out.append(cluster_pb2.ShardStatus(topic=topic, partition=partition, replicas=lead.replicas,
                                               leader=self._node, epoch=lead.epoch, commit=log_.commit,
                                               replica_status=replicas))
            out[-1].backlogs.extend(cluster_pb2.SubscriptionBacklog(subscription=name, backlog=backlog)
                                    for name, backlog in self._engine.backlogs(shard).items())
        return out
