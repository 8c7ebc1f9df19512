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
refuse any epoch older than the newest they have seen, and a leader whose member
lease may have lapsed acknowledges nothing, so a deposed leader cannot get a
write acknowledged.

The leader also keeps the placement in line with the ring over the live storage
nodes: a node that should hold the shard but does not is fed as a learner until
it has everything committed, and then swapped into the placement (a
compare-and-swap on the record) for one that should not.
"""

import asyncio
import logging
import time
from dataclasses import dataclass, field

import grpc

from gen.notifymesh.internal.v1 import storage_pb2, storage_pb2_grpc
from gen.notifymesh.v1 import cluster_pb2
from notifymesh import errors
from notifymesh.server import rpc
from notifymesh.contracts import (PLACEMENTS, Candidacy, LeaderRecord, Shard, candidate_key, candidates_prefix,
                                  leader_key, shard_name)
from notifymesh.server.cluster import Cluster
from notifymesh.clock import now_ms
from notifymesh.log import fields
from storage import keys
from storage.engine import Entries, StorageEngine

log = logging.getLogger(__name__)

REPLICATE_MAX_ENTRIES = 2000   # per shard per request
REPLICATE_TIMEOUT_S = 5.0      # for a follower's answer
COMMIT_TIMEOUT_S = 5.0         # a publish not on a majority by then is UNAVAILABLE
LEASE_MARGIN_S = 0.5           # stop acknowledging this long before the lease could lapse
TICK_S = 0.5                   # elections, placement changes
ABANDONED_AFTER_S = 30.0
FINAL_STATE_TIMEOUT_S = 2.0    # on shutdown, for the followers to take the last delivery state       # a shard held here but placed elsewhere, unheard of this long, is dropped


def quorum(replicas) -> int:
    return len(replicas) // 2 + 1


@dataclass
class Progress:
    """A leader's view of one other replica (or learner) of a shard."""
    next: int              # next entry to send
    match: int = 0         # entries below are on its disk
    state_version: int = -1  # the delivery state it has (ShardLog.state_version)
    state_due: bool = True   # send the delivery state with the next call (set every tick)
    first: int = -1          # the leader's first entry, as last sent


@dataclass
class Leadership:
    shard: str
    epoch: int
    replicas: list[str]
    marker: int                     # seq of this epoch's first entry
    progress: dict[str, Progress] = field(default_factory=dict)
    learners: set[str] = field(default_factory=set)
    waiters: list[tuple[int, asyncio.Future]] = field(default_factory=list)


class Replication:
    def __init__(self, engine: StorageEngine, cluster: Cluster, registration_of, node_id: str,
                 replication_factor_of):
        """registration_of(): this node's Registration (its lease fences leadership);
        replication_factor_of(topic): the topic's replication factor."""
        self._engine, self._cluster, self._node = engine, cluster, node_id
        self._registration_of, self._rf_of = registration_of, replication_factor_of
        self.led: dict[str, Leadership] = {}
        self._known_epoch: dict[str, int] = {}
        # Shards whose candidacy key this node has put and not yet withdrawn.
        self._candidacies: set[str] = set()
        self._last_heard: dict[str, float] = {}
        self._senders: dict[str, asyncio.Task] = {}
        self._wake_sender: dict[str, asyncio.Event] = {}
        self._changed = asyncio.Event()
        self._task: asyncio.Task | None = None

    # -- lifecycle --------------------------------------------------------------

    def start(self) -> None:
        for mirror in (self._cluster.placements, self._cluster.leaders, self._cluster.members):
            mirror.on_change(lambda _name: self._changed.set())
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        """Sends the followers the final delivery state, then gives up every
        leadership at once so the others elect without waiting for the lease."""
        if self._task:
            self._task.cancel()
        for lead in self.led.values():
            self._engine.snapshot(lead.shard)  # saved here as well as sent
            for progress in lead.progress.values():
                progress.state_due = True
            self._wake(lead)
        give_up = time.monotonic() + FINAL_STATE_TIMEOUT_S
        while time.monotonic() < give_up and any(
                p.state_version != self._engine.shard(lead.shard).state_version
                for lead in self.led.values() for node, p in lead.progress.items()
                if node in self._cluster.live("storage")):
            await asyncio.sleep(0.02)
        tasks = [t for t in (self._task, *self._senders.values()) if t]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for shard in list(self.led):
            await self._step_down(shard, "shutting down", resign=True)

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
                for lead in self.led.values():  # delivery state goes out once a tick, not with every batch
                    self._engine.snapshot(lead.shard)
                    for progress in lead.progress.values():
                        progress.state_due = True
                    self._wake(lead)
            if self._registration_of() is None:  # not registered yet: cannot lead
                continue
            try:
                await self._reconcile()
            except asyncio.CancelledError:
                raise
            except Exception as e:
                log.warning("replication round failed", extra=fields(error=repr(e)))

    async def _reconcile(self) -> None:
        placements, leaders = self._cluster.placements.items, self._cluster.leaders.items
        for shard, placement in list(placements.items()):
            leader = leaders.get(shard)
            epoch = self._cluster.epoch(shard)
            if leader is not None:
                self._known_epoch[shard] = max(self._known_epoch.get(shard, 0), epoch)
            lead = self.led.get(shard)
            if lead is not None and not await self._still_leader(shard, lead, leader, epoch):
                await self._step_down(shard, "leader key changed")
                lead = None
            if leader is not None and leader.node == self._node and lead is None:
                await self._delete_leader_key(shard, epoch)  # from before this process restarted
                log.info("cleared the leader key of an earlier run", extra=fields(shard=shard, epoch=epoch))
            elif leader is None and self._node in placement.replicas:
                await self._campaign(shard, placement)
            elif lead is not None:
                await self._maintain_placement(lead, placement)
        for shard in list(self.led):
            if shard not in placements:
                await self._step_down(shard, "topic deleted", resign=True)
        await self._drop_abandoned(placements)

    # -- elections --------------------------------------------------------------

    async def _withdraw_candidacy(self, shard: str) -> None:
        """A stale announcement could understate this log in a later election and let
        a less advanced replica win: it goes before this node takes any entry."""
        if shard in self._candidacies:
            await self._cluster.etcd.delete(candidate_key(shard, self._node))
            self._candidacies.discard(shard)

    async def _delete_leader_key(self, shard: str, epoch: int) -> None:
        """Only the key of that epoch: never one a newer leader wrote."""
        etcd, key = self._cluster.etcd, leader_key(shard)
        txn = etcd.transactions
        await etcd.transaction(compare=[txn.create(key) == epoch], success=[txn.delete(key)], failure=[])

    async def _still_leader(self, shard: str, lead: Leadership, leader: LeaderRecord | None, epoch: int) -> bool:
        if leader is not None:
            return leader.node == self._node and epoch == lead.epoch
        kv = await self._cluster.etcd.get(leader_key(shard))  # the mirror may not show our win yet
        return kv is not None and kv.create_revision == lead.epoch

    async def _campaign(self, shard: str, placement: storage_pb2.ShardPlacement) -> None:
        registration = self._registration_of()
        log_ = self._engine.shard(shard)
        etcd = self._cluster.etcd
        mine = Candidacy(log_.end, log_.last_epoch, tuple(log_.state_stamp))
        await etcd.put(candidate_key(shard, self._node), mine.encode(), lease=registration.lease)
        self._candidacies.add(shard)
        prefix = candidates_prefix(shard)
        announced = {kv.key[len(prefix):].decode(): Candidacy.parse(kv.value) for kv in await etcd.get_prefix(prefix)}
        announced = {node: pos for node, pos in announced.items() if node in placement.replicas}
        if len(announced) < quorum(placement.replicas):
            return
        # The most advanced log; among equal logs, the newest delivery state.
        best = max(announced, key=lambda node: (announced[node].last_epoch, announced[node].end,
                                                announced[node].state, node))
        if best != self._node:
            return
        key = leader_key(shard)
        value = LeaderRecord(self._node, registration.addr).encode()
        txn = etcd.transactions
        won, _ = await etcd.transaction(compare=[txn.create(key) == 0],
                                        success=[txn.put(key, value, lease=registration.lease)], failure=[])
        if not won:
            return
        kv = await etcd.get(key)
        if kv is None or LeaderRecord.parse(kv.value).node != self._node:
            return
        await self._lead(shard, kv.create_revision, list(placement.replicas))

    async def _lead(self, shard: str, epoch: int, replicas: list[str]) -> None:
        self._known_epoch[shard] = epoch
        self._engine.lead(shard, epoch)
        log_ = self._engine.shard(shard)
        marker = log_.end
        lead = self.led[shard] = Leadership(shard, epoch, replicas, marker)
        for node in replicas:
            if node != self._node:
                lead.progress[node] = Progress(next=log_.end)
        # Stamped like any entry: attaching a subscription searches entries by append time.
        await self._engine.write_entries(
            shard, marker, Entries.of([storage_pb2.StoredMessage(epoch=epoch, append_ms=now_ms())]))
        await self._withdraw_candidacy(shard)
        log.info("leading", extra=fields(shard=shard, epoch=epoch, replicas=replicas, end=log_.end))
        self._advance_commit(lead)
        self._wake(lead)

    async def _step_down(self, shard: str, reason: str, resign: bool = False) -> None:
        lead = self.led.pop(shard, None)
        if lead is None:
            return
        for _, waiter in lead.waiters:
            if not waiter.done():
                waiter.set_exception(errors.Unavailable(f"leader of {shard} stepped down: {reason}"))
        log.info("stepped down", extra=fields(shard=shard, epoch=lead.epoch, reason=reason))
        self._engine.shard(shard).tail.clear()
        if resign:
            try:
                await self._delete_leader_key(shard, lead.epoch)
            except Exception as e:
                log.warning("resign failed", extra=fields(shard=shard, error=repr(e)))

    # -- the leader's write path -----------------------------------------------

    def leadership(self, shard: str) -> Leadership:
        lead = self.led.get(shard)
        if lead is None:
            raise errors.Unavailable(f"this node does not lead {shard}")
        if time.monotonic() > self._registration_of().valid_until - LEASE_MARGIN_S:
            raise errors.Unavailable(f"leadership of {shard} may have lapsed (member lease not renewed)")
        return lead

    async def append(self, shard: str, messages, retry: bool, dedup_window_ms: int, by_payload: bool) -> list[str]:
        lead = self.leadership(shard)
        live = self._cluster.live("storage")
        if sum(node in live for node in lead.replicas) < quorum(lead.replicas):
            raise errors.Unavailable(f"fewer than {quorum(lead.replicas)} of the replicas of {shard} are alive")
        ids, entries = self._engine.prepare(shard, messages, lead.epoch, dedup_window_ms, retry, by_payload)
        log_ = self._engine.shard(shard)
        start = log_.end
        if entries.raw:
            written = self._engine.write_entries(shard, start, entries)
            self._wake(lead)  # the followers write them while this node syncs: one sync's time, not two
            await written
        if self.led.get(shard) is not lead:
            raise errors.Unavailable(f"leader of {shard} stepped down")
        self._advance_commit(lead)
        await self._committed(lead, start + len(entries.raw))
        return ids

    async def _committed(self, lead: Leadership, upto: int) -> None:
        if self._engine.shard(lead.shard).commit >= upto:
            return
        waiter = asyncio.get_running_loop().create_future()
        lead.waiters.append((upto, waiter))
        try:
            await asyncio.wait_for(asyncio.shield(waiter), COMMIT_TIMEOUT_S)
        except TimeoutError:
            raise errors.Unavailable(f"{lead.shard}: not on a majority of replicas within {COMMIT_TIMEOUT_S:g}s") \
                from None

    def _advance_commit(self, lead: Leadership) -> None:
        log_ = self._engine.shard(lead.shard)
        matches = sorted([log_.written] + [lead.progress[n].match for n in lead.replicas if n != self._node
                                       and n in lead.progress], reverse=True)
        needed = quorum(lead.replicas)
        if len(matches) < needed:
            return
        # Followers may have synced entries this node is still syncing; it delivers
        # from its own disk, so it counts as committed only what it has written.
        commit = min(matches[needed - 1], log_.written)
        if commit > lead.marker:  # an entry of this epoch is on a majority: all before it is too
            self._engine.advance_commit(lead.shard, commit)
        commit = log_.commit
        still = []
        for upto, waiter in lead.waiters:
            if upto <= commit:
                if not waiter.done():
                    waiter.set_result(None)
            else:
                still.append((upto, waiter))
        lead.waiters = still

    def _wake(self, lead: Leadership) -> None:
        for node in lead.progress:
            self._sender(node).set()

    # -- sending to one follower node ------------------------------------------

    def _sender(self, node: str) -> asyncio.Event:
        wake = self._wake_sender.get(node)
        if wake is None:
            wake = self._wake_sender[node] = asyncio.Event()
            self._senders[node] = asyncio.create_task(self._send_to(node, wake))
        return wake

    async def _send_to(self, node: str, wake: asyncio.Event) -> None:
        """One Replicate request in flight to node at a time, carrying every shard this
        node leads there; what accumulates meanwhile goes in the next."""
        stream = rpc.LockstepStream(lambda addr: storage_pb2_grpc.StorageStub(self._cluster.channel(addr)).Replicate())
        try:
            while True:
                await wake.wait()
                wake.clear()
                addr = self._cluster.live("storage").get(node)
                if addr is None:  # not alive: the next tick wakes this again
                    continue
                try:
                    request, sent = self._request_for(node)
                    if not request.shards:
                        continue
                    response = await stream.exchange(addr, request, REPLICATE_TIMEOUT_S)
                    if await self._handle_results(node, response, sent):
                        wake.set()
                except asyncio.CancelledError:
                    raise
                except Exception as e:  # the node is down or restarting: retry after a pause
                    code = e.code().name if isinstance(e, grpc.aio.AioRpcError) else repr(e)
                    log.debug("replicate failed", extra=fields(to=node, error=code))
                    await asyncio.sleep(TICK_S)
                    wake.set()
        finally:
            stream.close()

    def _request_for(self, node: str) -> tuple[storage_pb2.ReplicateRequest, dict]:
        request = storage_pb2.ReplicateRequest(leader=self._node)
        sent = {}
        for shard, lead in self.led.items():
            progress = lead.progress.get(node)
            if progress is None:
                continue
            log_ = self._engine.shard(shard)
            start = max(progress.next, log_.first)
            entries = self._engine.entries_from(shard, start, REPLICATE_MAX_ENTRIES) if start < log_.end else Entries()
            states = progress.state_due and progress.state_version != log_.state_version
            if not entries.raw and progress.match >= log_.end and not states and progress.first == log_.first:
                continue
            prev_epoch = (self._engine.epoch_at(shard, start - 1) or 0) if start - 1 >= log_.first else 0
            topic, partition = Shard.parse(shard)
            shard_entries = storage_pb2.ShardEntries(
                topic=topic, partition=partition, epoch=lead.epoch, start=start, prev_epoch=prev_epoch,
                entries=entries.raw, message_ids=entries.ids, dedup_keys=entries.dedup_keys,
                dedup_until_ms=entries.dedup_until_ms, last_entry_epoch=entries.last_epoch, commit=log_.commit,
                first=log_.first, has_subscriptions=states)
            if states:
                shard_entries.subscriptions.extend(self._engine.snapshot(shard))
                shard_entries.state_epoch, shard_entries.state_version = lead.epoch, log_.state_version
            request.shards.append(shard_entries)
            sent[shard] = (lead.epoch, states, log_.state_version, log_.first)
        return request, sent

    async def _handle_results(self, node: str, response: storage_pb2.ReplicateResponse, sent: dict) -> bool:
        more = False
        for result in response.shards:
            shard = shard_name(result.topic, result.partition)
            lead = self.led.get(shard)
            if lead is None or shard not in sent or sent[shard][0] != lead.epoch:
                continue
            if result.newer_epoch > lead.epoch:
                await self._step_down(shard, f"{node} knows a newer epoch {result.newer_epoch}")
                continue
            progress = lead.progress.get(node)
            if progress is None:
                continue
            _, states_sent, state_version, first = sent[shard]
            if result.ok:
                progress.match = progress.next = result.end
                progress.first = first
                if states_sent:
                    progress.state_version, progress.state_due = state_version, False
                self._advance_commit(lead)
                self._engine.release_tail(shard, min(p.match for p in lead.progress.values()))
            else:
                progress.next = result.end  # where the follower's log fits ours
            if progress.next < self._engine.shard(shard).end:
                more = True
        return more

    # -- the follower side ------------------------------------------------------

    async def replicate(self, request: storage_pb2.ReplicateRequest) -> storage_pb2.ReplicateResponse:
        """Applies a leader's batches: refuses older epochs, checks that each batch
        fits the local log, writes all of them in one synced write."""
        results, writes = [], []
        for batch in request.shards:
            shard = shard_name(batch.topic, batch.partition)
            result = storage_pb2.ShardResult(topic=batch.topic, partition=batch.partition)
            results.append(result)
            known = self._known_epoch.get(shard, 0)
            if shard in self.led and batch.epoch > self.led[shard].epoch:
                await self._step_down(shard, f"epoch {batch.epoch} replicates to this node")
            if batch.epoch < known or shard in self.led:
                result.newer_epoch = max(known, self.led[shard].epoch if shard in self.led else 0)
                result.end = self._engine.shard(shard).end
                continue
            self._known_epoch[shard] = batch.epoch
            self._last_heard[shard] = time.monotonic()
            await self._withdraw_candidacy(shard)
            log_ = self._engine.shard(shard)
            if log_.end < batch.first:
                self._engine.reset(shard, batch.first)  # too far behind: start over at the leader's first
            if batch.start < log_.first or batch.start > log_.end:
                result.end = log_.end  # does not fit: the leader sends from our end
                continue
            if batch.start - 1 >= log_.first and batch.prev_epoch \
                    and self._engine.epoch_at(shard, batch.start - 1) != batch.prev_epoch:
                result.end = self._first_of_epoch(shard, batch.start - 1)  # our tail diverges from there
                continue
            if batch.entries or batch.start < log_.end:
                writes.append(self._engine.write_replicated(shard, batch.start, Entries.replicated(batch)))
            result.ok = True
        await asyncio.gather(*writes)
        for batch, result in zip(request.shards, results):
            if result.ok:
                shard = shard_name(batch.topic, batch.partition)
                log_ = self._engine.shard(shard)
                self._engine.advance_commit(shard, batch.commit)
                if batch.has_subscriptions:
                    self._engine.import_states(shard, list(batch.subscriptions),
                                               (batch.state_epoch, batch.state_version))
                self._engine.trim(shard, batch.first)
                result.end = log_.end
        return storage_pb2.ReplicateResponse(shards=results)

    def _first_of_epoch(self, shard: str, seq: int) -> int:
        """The first seq of the run of entries with the same epoch as seq (epochs
        never decrease along a log), so one round trip skips a whole stale epoch."""
        epoch = self._engine.epoch_at(shard, seq)
        low, high = self._engine.shard(shard).first, seq
        while low < high:
            mid = (low + high) // 2
            if (self._engine.epoch_at(shard, mid) or 0) < (epoch or 0):
                low = mid + 1
            else:
                high = mid
        return low

    # -- placement --------------------------------------------------------------

    async def _maintain_placement(self, lead: Leadership, placement: storage_pb2.ShardPlacement) -> None:
        """Feeds nodes the ring wants as learners; swaps one in once it has every
        committed entry. The placement never shrinks: without a caught-up
        replacement, a dead replica stays and counts against the quorum."""
        lead.replicas = list(placement.replicas)
        live = self._cluster.live("storage")
        topic, _ = Shard.parse(lead.shard)
        wanted = self._cluster.rings["storage"].replicas(lead.shard, self._rf_of(topic) or len(lead.replicas))
        log_ = self._engine.shard(lead.shard)
        for node in list(lead.progress):
            if node not in lead.replicas and node not in wanted:
                del lead.progress[node]
                lead.learners.discard(node)
        additions = [n for n in wanted if n not in lead.replicas and n in live]
        for node in additions:
            if node not in lead.progress:
                lead.progress[node] = Progress(next=log_.end)
                lead.learners.add(node)
                log.info("learner added", extra=fields(shard=lead.shard, node=node))
                self._sender(node).set()
        for node in lead.replicas:
            if node != self._node and node not in lead.progress:
                lead.progress[node] = Progress(next=log_.end)
        ready = [n for n in additions if lead.progress[n].match >= log_.commit > lead.marker]
        if not ready:
            return
        removable = sorted((n for n in lead.replicas if n not in wanted), key=lambda n: (n in live, n))
        target = self._rf_of(topic) or len(lead.replicas)
        if not removable and len(lead.replicas) >= target:
            return
        new = [n for n in lead.replicas if not removable or n != removable[0]] + [ready[0]]
        record = storage_pb2.ShardPlacement(topic=placement.topic, partition=placement.partition, replicas=new,
                                            replication_factor=placement.replication_factor)
        key = PLACEMENTS + lead.shard.encode()
        mod = self._cluster.placements.revisions.get(lead.shard, (0, 0))[1]
        etcd = self._cluster.etcd
        txn = etcd.transactions
        swapped, _ = await etcd.transaction(compare=[txn.mod(key) == mod],
                                            success=[txn.put(key, record.SerializeToString())], failure=[])
        if not swapped:
            return
        log.info("replica set changed", extra=fields(shard=lead.shard, replicas=new,
                                                     removed=removable[0] if removable else None))
        lead.replicas = new
        lead.learners.discard(ready[0])
        if self._node not in new:
            await self._step_down(lead.shard, "moved off this node", resign=True)

    async def _drop_abandoned(self, placements) -> None:
        """Drops the copy of a shard this node is no longer a replica of (topic
        deleted, or moved away), once no leader has fed it for a while."""
        now = time.monotonic()
        for shard in list(self._engine.shards):
            placement = placements.get(shard)
            if placement is not None and self._node in placement.replicas:
                continue
            if shard in self.led or now - self._last_heard.get(shard, 0.0) < ABANDONED_AFTER_S:
                continue
            kv = await self._cluster.etcd.get(PLACEMENTS + shard.encode())  # confirm: the mirror may lag
            if kv is None or self._node not in storage_pb2.ShardPlacement.FromString(kv.value).replicas:
                self._engine.drop(shard)
                self._last_heard.pop(shard, None)

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
        return out
