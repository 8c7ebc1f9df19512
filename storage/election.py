"""Leader election for one shard through etcd.

Without a leader, every replica announces its log position (a Candidacy: end, the
epoch of its last entry, its delivery state's stamp) under its member lease; once
a quorum of the replica set has announced, the most advanced one (rules:
choose_leader) claims leadership with a create-only transaction. The create
revision of the leader key is the leader's epoch.
"""

import time
from typing import Any, Protocol

from notifymesh.contracts import Candidacy, LeaderRecord, candidate_key, candidates_prefix, leader_key
from storage.replication_rules import choose_leader


class Registered(Protocol):
    """This node's member registration: its lease fences leadership."""
    addr: str
    lease: Any
    valid_until: float  # monotonic time until which the lease is certainly alive


class ElectionStore(Protocol):
    """The etcd keys of elections: candidacies and the leader key."""

    async def announce(self, shard: str, node: str, candidacy: Candidacy, lease: Any) -> None: ...

    async def announcements(self, shard: str) -> dict[str, Candidacy]: ...

    async def withdraw(self, shard: str, node: str) -> None: ...

    async def claim(self, shard: str, record: LeaderRecord, lease: Any) -> int | None:
        """Creates the leader key if there is none; the epoch (its create revision)
        when the key then names record.node, None otherwise."""

    async def delete_leader(self, shard: str, epoch: int) -> None:
        """Deletes the leader key only if it is the one of that epoch."""

    async def leader_epoch(self, shard: str) -> int | None:
        """The create revision of the leader key (None: no key), read from etcd."""


class LogPosition(Protocol):
    end: int
    last_epoch: int
    state_stamp: tuple[int, int]


class Positions(Protocol):
    def shard(self, name: str) -> LogPosition: ...


class EtcdElectionStore:
    """ElectionStore on the cluster's etcd client."""

    def __init__(self, cluster):
        self._cluster = cluster

    async def announce(self, shard: str, node: str, candidacy: Candidacy, lease: Any) -> None:
        await self._cluster.etcd.put(candidate_key(shard, node), candidacy.encode(), lease=lease)

    async def announcements(self, shard: str) -> dict[str, Candidacy]:
        prefix = candidates_prefix(shard)
        return {kv.key[len(prefix):].decode(): Candidacy.parse(kv.value)
                for kv in await self._cluster.etcd.get_prefix(prefix)}

    async def withdraw(self, shard: str, node: str) -> None:
        await self._cluster.etcd.delete(candidate_key(shard, node))

    async def claim(self, shard: str, record: LeaderRecord, lease: Any) -> int | None:
        etcd, key = self._cluster.etcd, leader_key(shard)
        txn = etcd.transactions
        won, _ = await etcd.transaction(compare=[txn.create(key) == 0],
                                        success=[txn.put(key, record.encode(), lease=lease)], failure=[])
        if not won:
            return None
        kv = await etcd.get(key)
        if kv is None or LeaderRecord.parse(kv.value).node != record.node:
            return None
        return kv.create_revision

    async def delete_leader(self, shard: str, epoch: int) -> None:
        etcd, key = self._cluster.etcd, leader_key(shard)
        txn = etcd.transactions
        await etcd.transaction(compare=[txn.create(key) == epoch], success=[txn.delete(key)], failure=[])

    async def leader_epoch(self, shard: str) -> int | None:
        kv = await self._cluster.etcd.get(leader_key(shard))
        return None if kv is None else kv.create_revision


class Election:
    """This node's side of the elections of the shards it is a replica of."""

    def __init__(self, store: ElectionStore, logs: Positions, node_id: str):
        self._store, self._logs, self._node = store, logs, node_id
        # Shards whose candidacy key this node has put and not yet withdrawn.
        self._candidacies: set[str] = set()
        # Shards this node does not stand for until then (monotonic): it resigned them
        # for want of a majority. At most one per shard, dropped once past.
        self._held_off: dict[str, float] = {}

    def hold_off(self, shard: str, seconds: float) -> None:
        """This node does not stand for shard for that long (see check-quorum in storage.leader)."""
        self._held_off[shard] = time.monotonic() + seconds

    async def withdraw(self, shard: str) -> None:
        """A stale announcement could understate this log in a later election and let
        a less advanced replica win: it goes before this node takes any entry."""
        if shard in self._candidacies:
            await self._store.withdraw(shard, self._node)
            self._candidacies.discard(shard)

    async def delete_leader_key(self, shard: str, epoch: int) -> None:
        """Only the key of that epoch: never one a newer leader wrote."""
        await self._store.delete_leader(shard, epoch)

    async def still_leader(self, shard: str, led_epoch: int, leader: LeaderRecord | None, epoch: int) -> bool:
        """Whether the leadership of led_epoch stands, given the mirrored leader
        record and its epoch."""
        if leader is not None:
            return leader.node == self._node and epoch == led_epoch
        return await self._store.leader_epoch(shard) == led_epoch  # the mirror may not show our win yet

    async def campaign(self, shard: str, replicas: list[str], registration: Registered) -> int | None:
        """Announces this node's position; claims the leader key when this node is
        the best of a quorum. The epoch won, or None (also while held off)."""
        if shard in self._held_off:
            if time.monotonic() < self._held_off[shard]:
                return None
            del self._held_off[shard]
        log_ = self._logs.shard(shard)
        mine = Candidacy(log_.end, log_.last_epoch, tuple(log_.state_stamp))
        await self._store.announce(shard, self._node, mine, registration.lease)
        self._candidacies.add(shard)
        if choose_leader(await self._store.announcements(shard), replicas) != self._node:
            return None
        return await self._store.claim(shard, LeaderRecord(self._node, registration.addr), registration.lease)
