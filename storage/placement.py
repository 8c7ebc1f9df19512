"""Placement: the leader keeps a shard's replica set in line with the ring over the
live storage nodes, and every node drops the shards it no longer holds.

A node that should hold the shard but does not is fed as a learner until it has
everything committed, and then swapped into the placement (a compare-and-swap on
the record) for one that should not (rules: replica_swap).
"""

import logging
import time
from typing import Callable, Mapping, Protocol

from gen.notifymesh.internal.v1 import storage_pb2
from notifymesh.contracts import PLACEMENTS, Shard
from notifymesh.log import fields
from storage.leader import Leadership, Progress
from storage.log import ShardLog
from storage.replication_rules import replica_swap

log = logging.getLogger(__name__)

ABANDONED_AFTER_S = 30.0  # a shard held here but placed elsewhere, unheard of this long, is dropped


class PlacementStore(Protocol):
    """The ring, the live storage nodes and the placement records in etcd."""

    def live(self) -> Mapping[str, str]: ...

    def wanted(self, shard: str, count: int) -> list[str]:
        """The count nodes the ring places the shard on."""

    async def swap(self, shard: str, record: storage_pb2.ShardPlacement) -> bool:
        """Replaces the placement record if it is still the one mirrored."""

    async def replicas_of(self, shard: str) -> list[str] | None:
        """The replica set recorded in etcd (None: no placement), read from etcd."""


class PlacementLog(Protocol):
    """What placement needs of the storage engine."""
    shards: Mapping[str, ShardLog]

    def shard(self, name: str) -> ShardLog: ...
    def drop(self, shard: str) -> None: ...


class PlacementLeader(Protocol):
    """The shards this node leads (storage.leader.Leader)."""

    @property
    def led(self) -> Mapping[str, Leadership]: ...

    def wake_node(self, node: str) -> None: ...
    async def step_down(self, shard: str, reason: str, resign: bool = False) -> None: ...


class EtcdPlacementStore:
    """PlacementStore on the Cluster (its ring, member and placement mirrors, etcd)."""

    def __init__(self, cluster):
        self._cluster = cluster

    def live(self) -> Mapping[str, str]:
        return self._cluster.live("storage")

    def wanted(self, shard: str, count: int) -> list[str]:
        return self._cluster.rings["storage"].replicas(shard, count)

    async def swap(self, shard: str, record: storage_pb2.ShardPlacement) -> bool:
        key = PLACEMENTS + shard.encode()
        mod = self._cluster.placements.revisions.get(shard, (0, 0))[1]
        etcd = self._cluster.etcd
        txn = etcd.transactions
        swapped, _ = await etcd.transaction(compare=[txn.mod(key) == mod],
                                            success=[txn.put(key, record.SerializeToString())], failure=[])
        return swapped

    async def replicas_of(self, shard: str) -> list[str] | None:
        kv = await self._cluster.etcd.get(PLACEMENTS + shard.encode())
        return None if kv is None else list(storage_pb2.ShardPlacement.FromString(kv.value).replicas)


class Placement:
    def __init__(self, engine: PlacementLog, store: PlacementStore, leader: PlacementLeader, node_id: str,
                 replication_factor_of: Callable[[str], int], last_heard: dict[str, float]):
        """replication_factor_of(topic): the topic's (0: unknown); last_heard: when a
        leader last fed each shard here (monotonic), kept by the follower side."""
        self._engine, self._store, self._leader, self._node = engine, store, leader, node_id
        self._rf_of, self._last_heard = replication_factor_of, last_heard

    async def maintain(self, lead: Leadership, placement: storage_pb2.ShardPlacement) -> None:
        """Feeds nodes the ring wants as learners; swaps one in once it has every
        committed entry. The placement never shrinks: without a caught-up
        replacement, a dead replica stays and counts against the quorum."""
        lead.replicas = list(placement.replicas)
        live = self._store.live()
        topic, _ = Shard.parse(lead.shard)
        target = self._rf_of(topic) or len(lead.replicas)
        wanted = self._store.wanted(lead.shard, target)
        log_ = self._engine.shard(lead.shard)
        additions = self._track(lead, wanted, live, log_.end)
        ready = [n for n in additions if lead.progress[n].match >= log_.commit > lead.marker]
        swap = replica_swap(lead.replicas, wanted, live, ready, target)
        if swap is None:
            return
        record = storage_pb2.ShardPlacement(topic=placement.topic, partition=placement.partition,
                                            replicas=swap.replicas, replication_factor=placement.replication_factor)
        if not await self._store.swap(lead.shard, record):
            return
        log.info("replica set changed", extra=fields(shard=lead.shard, replicas=swap.replicas, removed=swap.removed))
        lead.replicas = swap.replicas
        lead.learners.discard(swap.added)
        if self._node not in swap.replicas:
            await self._leader.step_down(lead.shard, "moved off this node", resign=True)

    def _track(self, lead: Leadership, wanted: list[str], live: Mapping[str, str], end: int) -> list[str]:
        """Keeps a Progress for every replica and for every live node the ring wants
        (a learner), none for the rest; the learners (additions to the replica set)."""
        for node in list(lead.progress):
            if node not in lead.replicas and node not in wanted:
                del lead.progress[node]
                lead.learners.discard(node)
        additions = [n for n in wanted if n not in lead.replicas and n in live]
        for node in additions:
            if node not in lead.progress:
                lead.progress[node] = Progress(next=end)
                lead.learners.add(node)
                log.info("learner added", extra=fields(shard=lead.shard, node=node))
                self._leader.wake_node(node)
        for node in lead.replicas:
            if node != self._node and node not in lead.progress:
                lead.progress[node] = Progress(next=end)
        return additions

    async def drop_abandoned(self, placements: Mapping[str, storage_pb2.ShardPlacement]) -> None:
        """Drops the copy of a shard this node is no longer a replica of (topic
        deleted, or moved away), once no leader has fed it for a while."""
        now = time.monotonic()
        for shard in list(self._engine.shards):
            placement = placements.get(shard)
            if placement is not None and self._node in placement.replicas:
                continue
            if shard in self._leader.led or now - self._last_heard.get(shard, 0.0) < ABANDONED_AFTER_S:
                continue
            replicas = await self._store.replicas_of(shard)  # confirm: the mirror may lag
            if replicas is None or self._node not in replicas:
                self._engine.drop(shard)
                self._last_heard.pop(shard, None)
