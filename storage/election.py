"""Leader election for one shard through etcd.

Without a leader, every replica announces its log position (a Candidacy: end, the
epoch of its last entry, its delivery state's stamp) under its member lease; once
a quorum of the replica set has announced, the most advanced one (rules:
choose_leader) claims leadership with a create-only transaction that also checks
that nothing it relied on changed since it read it: each announcement it counted
(a withdrawal deletes it) and the placement record. The create revision of the
leader key is the leader's epoch. A follower withdraws its announcement, before
taking a leader's first batch, in a transaction that checks the leader key is
still that leader's: etcd orders the two, so either the claim fails or the
follower refuses the deposed leader's batch.
"""

import asyncio
import time
import zlib
from typing import Any, NamedTuple, Protocol

from notifymesh.contracts import PLACEMENTS, Candidacy, LeaderRecord, candidate_key, candidates_prefix, leader_key
from storage.replication_rules import choose_leader

LOCK_STRIPES = 64  # above storage.replication's CAMPAIGNS_IN_FLIGHT: few of its campaigns wait on another's lock


class Registered(Protocol):
    """This node's member registration: its lease fences leadership."""
    addr: str
    lease: Any
    valid_until: float  # monotonic time until which the lease is certainly alive


class Announcements(NamedTuple):
    candidacies: dict[str, Candidacy]  # node -> its announced position
    revisions: dict[str, int]          # node -> mod revision of its candidacy key, as read


class ClaimBasis(NamedTuple):
    """What a claim relied on, as read: it fails if any of it changed since."""
    candidates: dict[str, int]  # node -> mod revision of each announcement counted
    placement_revision: int     # mod revision of the shard's placement record (0: not checked)


class ElectionStore(Protocol):
    """The etcd keys of elections: candidacies and the leader key."""

    async def announce(self, shard: str, node: str, candidacy: Candidacy, lease: Any) -> int:
        """Puts the candidacy; its revision."""

    async def announcements(self, shard: str) -> Announcements: ...

    async def withdraw(self, shard: str, node: str, leader_epoch: int | None) -> bool:
        """Deletes the node's candidacy; with leader_epoch, only if the leader key is
        that epoch's (its create revision). Whether it did."""

    async def claim(self, shard: str, record: LeaderRecord, lease: Any, basis: ClaimBasis) -> int | None:
        """Creates the leader key if there is none and nothing in basis changed; the
        epoch (its create revision) when the key then names record.node, None otherwise."""

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

    async def announce(self, shard: str, node: str, candidacy: Candidacy, lease: Any) -> int:
        put = await self._cluster.etcd.put(candidate_key(shard, node), candidacy.encode(), lease=lease)
        return put.header.revision

    async def announcements(self, shard: str) -> Announcements:
        prefix = candidates_prefix(shard)
        kvs = [(kv.key[len(prefix):].decode(), kv) for kv in await self._cluster.etcd.get_prefix(prefix)]
        return Announcements({node: Candidacy.parse(kv.value) for node, kv in kvs},
                             {node: kv.mod_revision for node, kv in kvs})

    async def withdraw(self, shard: str, node: str, leader_epoch: int | None) -> bool:
        etcd, key = self._cluster.etcd, candidate_key(shard, node)
        txn = etcd.transactions
        compare = [txn.create(leader_key(shard)) == leader_epoch] if leader_epoch is not None else []
        withdrawn, _ = await etcd.transaction(compare=compare, success=[txn.delete(key)], failure=[])
        return withdrawn

    async def claim(self, shard: str, record: LeaderRecord, lease: Any, basis: ClaimBasis) -> int | None:
        etcd, key = self._cluster.etcd, leader_key(shard)
        txn = etcd.transactions
        compare = [txn.create(key) == 0]
        compare += [txn.mod(candidate_key(shard, node)) == revision for node, revision in basis.candidates.items()]
        if basis.placement_revision:
            compare.append(txn.mod(PLACEMENTS + shard.encode()) == basis.placement_revision)
        won, _ = await etcd.transaction(compare=compare, success=[txn.put(key, record.encode(), lease=lease)],
                                        failure=[])
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
        # Shards whose candidacy key this node has put (or is putting: None) and not
        # yet withdrawn, with its revision; at most one per shard of this node.
        # Only this node writes its candidacy keys, and under its shard's lock.
        self._candidacies: dict[str, int | None] = {}
        # A shard's announcing and claiming, and withdrawing, one at a time: a withdrawal
        # while an announcement is on its way must come after it, or the announcement
        # outlives it. Shards share LOCK_STRIPES locks, so elections of other shards go
        # on meanwhile (storage.replication campaigns for several at once).
        self._locks = [asyncio.Lock() for _ in range(LOCK_STRIPES)]
        # Shards this node does not stand for until then (monotonic): it resigned them
        # for want of a majority. At most one per shard led; the past ones are dropped.
        self._held_off: dict[str, float] = {}

    def _lock_of(self, shard: str) -> asyncio.Lock:
        return self._locks[zlib.crc32(shard.encode()) % LOCK_STRIPES]

    def hold_off(self, shard: str, seconds: float) -> None:
        """This node does not stand for shard for that long (see check-quorum in storage.leader)."""
        now = time.monotonic()
        for past in [name for name, until in self._held_off.items() if until <= now]:  # shards gone meanwhile
            del self._held_off[past]
        self._held_off[shard] = now + seconds

    async def withdraw(self, shard: str, leader_epoch: int | None = None) -> bool:
        """A stale announcement could understate this log in a later election and let
        a less advanced replica win: it goes before this node takes any entry. With
        leader_epoch (a follower taking that leader's batch), only while the leader key
        is that leader's, in one etcd transaction: False, and the announcement stays,
        when it is not (the key lapsed, or a newer leader claimed it, perhaps counting
        this announcement): the batch must then be refused."""
        if shard not in self._candidacies:
            return True
        async with self._lock_of(shard):
            if shard not in self._candidacies:
                return True
            if self._candidacies[shard] is not None:  # put (None: the campaign waiting for the lock)
                if not await self._store.withdraw(shard, self._node, leader_epoch):
                    return False
            self._candidacies.pop(shard, None)
            return True

    async def delete_leader_key(self, shard: str, epoch: int) -> None:
        """Only the key of that epoch: never one a newer leader wrote."""
        await self._store.delete_leader(shard, epoch)

    async def still_leader(self, shard: str, led_epoch: int, leader: LeaderRecord | None, epoch: int) -> bool:
        """Whether the leadership of led_epoch stands, given the mirrored leader
        record and its epoch."""
        if leader is not None:
            return leader.node == self._node and epoch == led_epoch
        return await self._store.leader_epoch(shard) == led_epoch  # the mirror may not show our win yet

    async def campaign(self, shard: str, replicas: list[str], registration: Registered,
                       placement_revision: int = 0) -> int | None:
        """Announces this node's position; claims the leader key when this node is
        the best of a quorum, provided no announcement counted and not the placement
        record (of placement_revision; 0: not checked) changed meanwhile. The epoch
        won, or None (also while held off)."""
        if shard in self._held_off:
            if time.monotonic() < self._held_off[shard]:
                return None
            del self._held_off[shard]
        log_ = self._logs.shard(shard)
        mine = Candidacy(log_.end, log_.last_epoch, tuple(log_.state_stamp))
        self._candidacies.setdefault(shard, None)  # before the await: a withdrawal now waits for it
        async with self._lock_of(shard):
            if shard not in self._candidacies:  # withdrawn while this waited: this node follows
                return None
            self._candidacies[shard] = await self._store.announce(shard, self._node, mine, registration.lease)
            read = await self._store.announcements(shard)
            if choose_leader(read.candidacies, replicas) != self._node:
                return None
            counted = {node: revision for node, revision in read.revisions.items() if node in replicas}
            return await self._store.claim(shard, LeaderRecord(self._node, registration.addr), registration.lease,
                                           ClaimBasis(counted, placement_revision))
