"""Draining storage nodes (contracts.DRAINING): graceful scale-in.

A drain is a key per node in etcd, without a lease, so it outlives restarts of
the node and of this service. Every process leaves a draining node out of the
storage ring (Cluster.placeable), so the leader of each partition it holds feeds
another node as a learner and swaps it in for the drained one; a drained leader
resigns once swapped out (storage.placement), and the frontends retry the
publishes in flight across that leader change. This module records and ends
drains and reports what a node still holds."""

import logging
from typing import Mapping, NamedTuple, Protocol

from gen.notifymesh.v1 import cluster_pb2
from notifymesh import errors
from notifymesh.clock import now_ms, timestamp
from notifymesh.contracts import DRAINING, DRAINS_EPOCH, DrainRecord
from notifymesh.log import fields

log = logging.getLogger(__name__)

RECORD_TRIES = 5  # drains begun by others meanwhile: each try reads them again and checks


class Mirrored(Protocol):
    """A PrefixMirror: its items, name -> record (rebound at each re-read)."""
    items: Mapping


class DrainView(Protocol):
    """The cluster as this process mirrors it (notifymesh.server.cluster.Cluster):
    topics (pubsub_pb2.Topic), placements (ShardPlacement), leaders (LeaderRecord)."""
    topics: Mirrored
    placements: Mirrored
    leaders: Mirrored

    def live(self, kind: str) -> dict[str, str]: ...


class Drains(NamedTuple):
    records: dict[str, DrainRecord]  # node -> its drain
    epoch: int  # the version of the drains read: a record is refused once another drain was begun


class DrainStore(Protocol):
    async def draining(self) -> Drains:
        """The drains recorded, read from etcd itself (not a mirror)."""

    async def record(self, node: str, record: DrainRecord, epoch: int) -> bool:
        """Records the drain unless one is recorded already; False when another drain
        was begun since the drains of `epoch` were read (nothing recorded then)."""

    async def end(self, node: str) -> None: ...


class EtcdDrainStore:
    def __init__(self, etcd):
        self._etcd = etcd

    async def draining(self) -> Drains:
        # The epoch first: a drain recorded between the two reads then fails its
        # record's compare, rather than being missed by a check that passed.
        epoch = await self._etcd.get(DRAINS_EPOCH)
        records = {kv.key[len(DRAINING):].decode(): DrainRecord.parse(kv.value)
                   for kv in await self._etcd.get_prefix(DRAINING)}
        return Drains(records, epoch.mod_revision if epoch is not None else 0)

    async def record(self, node: str, record: DrainRecord, epoch: int) -> bool:
        key, txn = DRAINING + node.encode(), self._etcd.transactions
        recorded, _ = await self._etcd.transaction(
            compare=[txn.version(key) == 0, txn.mod(DRAINS_EPOCH) == epoch],
            success=[txn.put(key, record.encode()), txn.put(DRAINS_EPOCH, b"")], failure=[])
        return recorded

    async def end(self, node: str) -> None:
        await self._etcd.delete(DRAINING + node.encode())


class NodeDrains:
    def __init__(self, view: DrainView, store: DrainStore):
        self._view, self._store = view, store

    async def drain(self, node: str, undrain: bool = False) -> cluster_pb2.NodeDrain:
        """Records (or with undrain ends) the drain of a storage node; its progress.
        NOT_FOUND for a node that is no storage node; FAILED_PRECONDITION when the
        nodes left could not hold every partition's replication factor."""
        if not node:
            raise errors.InvalidArgument("node_id is required (a storage node's id, e.g. storage-2)")
        draining = (await self._store.draining()).records
        live = self._view.live("storage")
        placed = {n for p in self._view.placements.items.values() for n in p.replicas}
        if node not in live and node not in draining and node not in placed:
            raise errors.NotFound(f"storage node {node!r} not found; the live storage nodes: "
                                  f"{', '.join(sorted(live)) or '(none)'}")
        if undrain:
            if node in draining:
                await self._store.end(node)
                log.info("drain ended", extra=fields(node=node))
            return self._progress(node, None)
        if node not in draining:
            draining = await self._begin(node, live)
        return self._progress(node, draining.get(node))

    async def _begin(self, node: str, live: Mapping[str, str]) -> Mapping[str, DrainRecord]:
        """Checks and records the drain in one step: two drains begun at once cannot
        both pass the check against the drains before either."""
        for _ in range(RECORD_TRIES):
            drains = await self._store.draining()
            if node in drains.records:
                return drains.records  # recorded by a call that raced this one
            self._check_enough_left(node, live, drains.records)
            if await self._store.record(node, DrainRecord(now_ms()), drains.epoch):
                log.info("drain begun", extra=fields(node=node))
                return (await self._store.draining()).records
        raise errors.Aborted(f"drains of other nodes kept beginning while {node}'s was checked; try again")

    def _check_enough_left(self, node: str, live: Mapping[str, str], draining: Mapping[str, DrainRecord]) -> None:
        """Every partition must still find its replication factor of nodes on the ring."""
        left = sorted(n for n in live if n != node and n not in draining)
        topics = self._view.topics.items.values()
        widest = max(topics, key=lambda t: t.replication_factor, default=None)
        if widest is not None and len(left) < widest.replication_factor:
            others = f", {len(draining)} other(s) draining" if draining else ""
            raise errors.FailedPrecondition(
                f"draining {node} would leave {len(left)} live storage node(s) to place replicas on "
                f"({', '.join(left) or 'none'}{others}), fewer than the replication factor "
                f"{widest.replication_factor} of topic {widest.name!r}; add a storage node first")

    def _progress(self, node: str, record: DrainRecord | None) -> cluster_pb2.NodeDrain:
        """What the node still holds and leads, as this process's mirrors show it."""
        drain = cluster_pb2.NodeDrain(
            node_id=node, draining=record is not None,
            replicas=sum(node in p.replicas for p in self._view.placements.items.values()),
            leading=sum(leader.node == node for leader in self._view.leaders.items.values()))
        if record is not None:
            drain.since.CopyFrom(timestamp(record.since_ms))
        return drain
