"""The leader's side of replication: the write path (append, replicate, commit)
and one replication stream per follower node.

The leader appends and, while its own write syncs, replicates to the other
replicas (one stream per follower node, one request in flight on it, carrying
every shard it leads there), and acknowledges a publish once a majority has the
entries on disk, itself included. It first writes a marker entry of its own
epoch and counts entries as committed only once an entry of its epoch is on a
majority (rules: commit_index). A leader whose member lease may have lapsed
acknowledges nothing (checked at admission and again once a majority has the
entries), so a deposed leader cannot get a write acknowledged. A leader that no
majority has answered within the lease resigns (check_quorum; rules: quorum_lost).
"""

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import Awaitable, Callable, NamedTuple, Protocol

import grpc

from gen.notifymesh.internal.v1 import storage_pb2, storage_pb2_grpc
from notifymesh import errors
from notifymesh.clock import now_ms
from notifymesh.contracts import Shard, shard_name
from notifymesh.log import fields
from notifymesh.server import rpc
from storage.election import Registered
from storage.delivery import StateUpdate
from storage.delivery_log import WrittenRecords
from storage.log import Entries, ShardLog
from notifymesh.server.config import Config
from storage.replication_rules import commit_index, quorum, quorum_lost

log = logging.getLogger(__name__)

REPLICATE_MAX_ENTRIES = 2000   # per shard per request
REPLICATE_MAX_RECORDS = 5000   # delivery records per shard per request (~80 bytes each)
# Bytes of one Replicate request (at least one entry goes, however big): a quarter of
# Config.max_grpc_message_bytes's default (64 MiB), which the follower's server
# enforces; the rest is room for delivery states and per-entry framing.
REPLICATE_MAX_BYTES = 16 * 1024 * 1024
SHARD_FRAMING_BYTES = 8        # a shard's tag and length in the request, besides its ShardEntries
REPLICATE_TIMEOUT_S = 5.0      # for a follower's answer
COMMIT_TIMEOUT_S = 5.0         # a publish not on a majority by then is UNAVAILABLE
LEASE_MARGIN_S = 0.5           # stop acknowledging this long before the lease could lapse
TICK_S = 0.5                   # elections, placement changes; the pause before retrying a follower
# Check-quorum: a leader not answered by a majority within the member lease resigns.
CHECK_QUORUM_S = float(Config.member_lease_ttl_s)
# An idle shard is sent an empty batch this often, so its followers' answers show they
# are there: three chances within the lease (measured: a request of 1,000 idle shards
# takes a follower 7.3 ms; every tick it would be 1.5% of a core per follower stream).
HEARTBEAT_S = CHECK_QUORUM_S / 3
# ... and does not stand again for this long, so a replica reaching a majority is elected
# rather than this node again (its log, with its unreplicated tail, is the most advanced).
HOLD_OFF_S = 2 * CHECK_QUORUM_S


_NO_ENTRIES = Entries()  # request_for's batch of a shard with none to send (read, never added to)


@dataclass
class Progress:
    """A leader's view of one other replica (or learner) of a shard."""
    next: int              # next entry to send
    match: int = 0         # entries below are on its disk
    state_version: int = -1  # the delivery state it has (ShardLog.state_version)
    state_due: bool = True   # send the delivery state with the next call (set every tick)
    first: int = -1          # the leader's first entry, as last sent
    records: int = 0         # the delivery records it has: a position in keys.ShardKeys.written
    heard: float = field(default_factory=time.monotonic)  # its last answer (from: leading began)


@dataclass
class Leadership:
    shard: str
    epoch: int
    replicas: list[str]
    marker: int                     # seq of this epoch's first entry
    progress: dict[str, Progress] = field(default_factory=dict)
    learners: set[str] = field(default_factory=set)
    waiters: list[tuple[int, asyncio.Future]] = field(default_factory=list)


class SentShard(NamedTuple):
    """What a Replicate request carried for one shard, to read its result by."""
    epoch: int
    states_sent: bool     # it carried the delivery state ...
    state_version: int    # ... of this version
    first: int            # the leader's first entry
    records_end: int      # the position after the delivery records it carried


class Outgoing(NamedTuple):
    request: storage_pb2.ReplicateRequest
    sent: dict[str, SentShard]


class LeaderLog(Protocol):
    """What the leader needs of the storage engine."""

    def shard(self, name: str) -> ShardLog: ...
    def lead(self, shard: str, epoch: int) -> None: ...
    def prepare(self, shard: str, messages, epoch: int, dedup_window_ms: int, retry: bool,
                by_payload: bool) -> tuple[list[str], Entries]: ...
    async def load_recent_ids(self, shard: str) -> None: ...
    def write_entries(self, shard: str, start: int, entries: Entries) -> Awaitable[None]: ...
    def entries_from(self, shard: str, start: int, limit: int, max_bytes: int | None = None,
                     at_least_one: bool = True) -> Entries: ...
    def epoch_at(self, shard: str, seq: int) -> int | None: ...
    def save_epoch(self, shard: str, epoch: int) -> Awaitable[None] | None: ...
    def release_tail(self, shard: str, below: int) -> None: ...
    def advance_commit(self, shard: str, commit: int) -> None: ...
    def save_state(self, shard: str) -> None: ...
    def state_since(self, shard: str, version: int) -> StateUpdate: ...
    def written_since(self, shard: str, position: int, limit: int, max_bytes: int) -> WrittenRecords: ...
    def release_written(self, shard: str, below: int) -> None: ...


class Peers(Protocol):
    """The live storage nodes and channels to them (the Cluster has these)."""

    def live(self, kind: str) -> dict[str, str]: ...
    def channel(self, addr: str) -> grpc.aio.Channel: ...
    def reads_table_ops(self, node: str) -> bool: ...


class LeaderKeys(Protocol):
    """The election's part in taking and giving up leadership."""

    async def withdraw(self, shard: str, leader_epoch: int | None = None) -> bool: ...
    async def delete_leader_key(self, shard: str, epoch: int) -> None: ...
    def hold_off(self, shard: str, seconds: float) -> None: ...


class Leader:
    """The shards this node leads (led), their write path and the streams to followers."""

    def __init__(self, engine: LeaderLog, peers: Peers, keys: LeaderKeys, node_id: str,
                 registration_of: Callable[[], Registered | None], known_epoch: dict[str, int],
                 max_request_bytes: int = REPLICATE_MAX_BYTES, lease_s: float = CHECK_QUORUM_S):
        """known_epoch: the newest epoch seen of each shard, shared with the follower side;
        max_request_bytes: the bound of one Replicate request (well under the gRPC limit);
        lease_s: how long a leader may go unanswered by a majority (check_quorum)."""
        self._engine, self._peers, self._keys, self._node = engine, peers, keys, node_id
        self._max_request_bytes, self._lease_s = max_request_bytes, lease_s
        self._registration_of, self._known_epoch = registration_of, known_epoch
        self.led: dict[str, Leadership] = {}  # never rebound: the coordinator shares it
        self.senders: dict[str, asyncio.Task] = {}
        self._wake_sender: dict[str, asyncio.Event] = {}

    # -- taking and giving up leadership ------------------------------------------

    async def lead(self, shard: str, epoch: int, replicas: list[str]) -> None:
        self._known_epoch[shard] = epoch
        self._engine.lead(shard, epoch)
        log_ = self._engine.shard(shard)
        marker = log_.end
        lead = self.led[shard] = Leadership(shard, epoch, replicas, marker)
        for node in replicas:
            if node != self._node:
                lead.progress[node] = Progress(next=log_.end)
        saved = self._engine.save_epoch(shard, epoch)  # a restart remembers the epoch led (the follower's check)
        # Stamped like any entry: attaching a subscription searches entries by append time.
        await self._engine.write_entries(
            shard, marker, Entries.of([storage_pb2.StoredMessage(epoch=epoch, append_ms=now_ms())]))
        if saved is not None:
            await saved
        await self._keys.withdraw(shard)
        log.info("leading", extra=fields(shard=shard, epoch=epoch, replicas=replicas, end=log_.end))
        self.advance_commit(lead)
        self.wake(lead)

    async def step_down(self, shard: str, reason: str, resign: bool = False) -> None:
        lead = self.led.pop(shard, None)
        if lead is None:
            return
        for _, waiter in lead.waiters:
            if not waiter.done():
                waiter.set_exception(errors.Unavailable(f"leader of {shard} stepped down: {reason}"))
        log.info("stepped down", extra=fields(shard=shard, epoch=lead.epoch, reason=reason))
        log_ = self._engine.shard(shard)
        log_.tail.clear()
        self._engine.release_written(shard, log_.layout.written_end)  # a follower's records come from its leader
        if resign:
            try:
                await self._keys.delete_leader_key(shard, lead.epoch)
            except Exception as e:
                log.warning("resign failed", extra=fields(shard=shard, error=repr(e)))

    async def check_quorum(self) -> None:
        """Resigns every shard whose leader has not been answered by a majority of its
        replica set within the lease (rules: quorum_lost): cut off from its followers
        but not from etcd, it would otherwise lead, and refuse every publish, forever."""
        now = time.monotonic()
        for shard, lead in list(self.led.items()):
            heard = {node: p.heard for node, p in lead.progress.items() if node not in lead.learners}
            if quorum_lost(heard, lead.replicas, self._node, now, self._lease_s):
                self._keys.hold_off(shard, HOLD_OFF_S)
                await self.step_down(shard, f"no answer from a majority within {self._lease_s:g}s", resign=True)

    def state_due(self) -> None:
        """Saves the delivery state of every shard led and has what changed sent to
        the followers with the next request (once a tick, not with every batch)."""
        for lead in self.led.values():
            self._engine.save_state(lead.shard)
            layout = self._engine.shard(lead.shard).layout
            self._engine.release_written(lead.shard, min((p.records for p in lead.progress.values()),
                                                         default=layout.written_end))
            for progress in lead.progress.values():
                progress.state_due = True
            self.wake(lead)

    def states_pending(self) -> bool:
        """Whether a live follower lacks the latest delivery state of a shard led."""
        live = self._peers.live("storage")
        return any(p.state_version != self._engine.shard(lead.shard).state_version
                   for lead in self.led.values() for node, p in lead.progress.items() if node in live)

    # -- the write path -------------------------------------------------------------

    def leadership(self, shard: str) -> Leadership:
        lead = self.led.get(shard)
        if lead is None:
            raise errors.Unavailable(f"this node does not lead {shard}")
        if time.monotonic() > self._registration_of().valid_until - LEASE_MARGIN_S:
            raise errors.Unavailable(f"leadership of {shard} may have lapsed (member lease not renewed)")
        return lead

    async def append(self, shard: str, messages, retry: bool, dedup_window_ms: int, by_payload: bool) -> list[str]:
        if retry:  # read in slices before prepare, which runs without yielding
            await self._engine.load_recent_ids(shard)
        lead = self._writable(shard)
        ids, entries = self._engine.prepare(shard, messages, lead.epoch, dedup_window_ms, retry, by_payload)
        await self._commit_entries(shard, lead, entries)
        return ids

    async def append_entries(self, shard: str, make: Callable[[int, int], Entries]) -> int:
        """Appends the entries make(epoch, start) returns (called without yielding,
        once the write is admitted) and waits until they are committed; returns the
        end of the entries written. The replicated table's write path."""
        lead = self._writable(shard)
        entries = make(lead.epoch, self._engine.shard(shard).end)
        return await self._commit_entries(shard, lead, entries)

    def many_rows(self, shard: str) -> bool:
        """Whether a table write to shard may take entries of many rows: every node its
        entries go to (followers and learners) is live and reads them. Else one row
        an entry, as before them, so a storage node of an older version, beside this
        one during a rolling update, applies what it is sent."""
        return all(self._peers.reads_table_ops(node) for node in self.leadership(shard).progress)

    def _writable(self, shard: str) -> Leadership:
        lead = self.leadership(shard)
        live = self._peers.live("storage")
        if sum(node in live for node in lead.replicas) < quorum(lead.replicas):
            raise errors.Unavailable(f"fewer than {quorum(lead.replicas)} of the replicas of {shard} are alive")
        return lead

    async def _commit_entries(self, shard: str, lead: Leadership, entries: Entries) -> int:
        log_ = self._engine.shard(shard)
        start = log_.end
        if entries.raw:
            written = self._engine.write_entries(shard, start, entries)
            self.wake(lead)  # the followers write them while this node syncs: one sync's time, not two
            await written
        if self.led.get(shard) is not lead:
            raise errors.Unavailable(f"leader of {shard} stepped down")
        self.advance_commit(lead)
        await self._committed(lead, start + len(entries.raw))
        # The quorum may have taken longer than the lease: another node may lead by now.
        if self.led.get(shard) is not lead:
            raise errors.Unavailable(f"leader of {shard} stepped down")
        self.leadership(shard)
        return start + len(entries.raw)

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

    def advance_commit(self, lead: Leadership) -> None:
        """Commits what a majority has (rules: commit_index) and releases the
        appends waiting for it."""
        log_ = self._engine.shard(lead.shard)
        commit = commit_index(log_.commit, log_.written, [lead.progress[n].match for n in lead.replicas
                                                          if n != self._node and n in lead.progress],
                              lead.replicas, lead.marker)
        if commit is None:
            return
        if commit > log_.commit:
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

    def wake(self, lead: Leadership) -> None:
        for node in lead.progress:
            self.wake_node(node)

    # -- the stream to one follower node ----------------------------------------------

    def wake_node(self, node: str) -> None:
        """Has the sender to node send what it has not yet (started on first use)."""
        wake = self._wake_sender.get(node)
        if wake is None:
            wake = self._wake_sender[node] = asyncio.Event()
            self.senders[node] = asyncio.create_task(self._send_to(node, wake))
        wake.set()

    async def _send_to(self, node: str, wake: asyncio.Event) -> None:
        """One Replicate request in flight to node at a time, carrying every shard this
        node leads there; what accumulates meanwhile goes in the next."""
        stream = rpc.LockstepStream(lambda addr: storage_pb2_grpc.StorageStub(self._peers.channel(addr)).Replicate())
        try:
            while True:
                await wake.wait()
                wake.clear()
                addr = self._peers.live("storage").get(node)
                if addr is None:  # not alive: the next tick wakes this again
                    continue
                try:
                    outgoing = self.request_for(node)
                    if not outgoing.request.shards:
                        continue
                    response = await stream.exchange(addr, outgoing.request, REPLICATE_TIMEOUT_S)
                    if await self._handle_results(node, response, outgoing.sent):
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

    def request_for(self, node: str) -> Outgoing:
        """The next Replicate request to node: for each shard led there, the entries
        it lacks (up to REPLICATE_MAX_ENTRIES, and max_request_bytes for the whole
        request, though at least one entry), the delivery state when due, and the
        delivery records written since its last answer (in what room is left)."""
        request = storage_pb2.ReplicateRequest(leader=self._node)
        sent, budget, any_entries = {}, self._max_request_bytes, False
        # Once a request, not once a shard: a request looks at every shard led (a third
        # of the 64 internal shards at least), most with nothing to send.
        now = time.monotonic()
        for shard, lead in self.led.items():
            progress = lead.progress.get(node)
            if progress is None:
                continue
            log_ = self._engine.shard(shard)
            start = max(progress.next, log_.first)
            entries = _NO_ENTRIES
            if start < log_.end and (budget > 0 or not any_entries):
                entries = self._engine.entries_from(shard, start, REPLICATE_MAX_ENTRIES, max(budget, 0),
                                                    at_least_one=not any_entries)
            states = progress.state_due and progress.state_version != log_.state_version
            records_due = progress.records < log_.layout.written_end
            heartbeat = now - progress.heard >= HEARTBEAT_S
            if (not entries.raw and progress.match >= log_.end and not states and progress.first == log_.first
                    and not heartbeat and not records_due):
                continue
            shard_entries = self._shard_entries(request, shard, lead, start, entries,
                                                progress.state_version if states else None)
            budget -= shard_entries.ByteSize() + SHARD_FRAMING_BYTES
            records = WrittenRecords([], [], progress.records, 0)
            if records_due and budget > 0:  # in the room left: what does not fit goes next time
                records = self._engine.written_since(shard, progress.records, REPLICATE_MAX_RECORDS, budget)
                shard_entries.delivery_keys.extend(records.keys)
                shard_entries.delivery_records.extend(records.values)
                budget -= records.size
            any_entries = any_entries or bool(entries.raw)
            sent[shard] = SentShard(lead.epoch, states, log_.state_version, log_.first, records.end)
        return Outgoing(request, sent)

    def _shard_entries(self, request: storage_pb2.ReplicateRequest, shard: str, lead: Leadership, start: int,
                       entries: Entries, state_since: int | None) -> storage_pb2.ShardEntries:
        """A follower's batch, added to request: the entries, and with state_since (the
        version of the delivery state it has) what it lacks of that. Made in place:
        a batch made apart and appended was copied whole, its entries' bytes too (a
        request of 20 shards, one with 24 KB of entries, took 100 us to build and
        serialize against 121-138 appended, in-process)."""
        log_ = self._engine.shard(shard)
        prev_epoch = (self._engine.epoch_at(shard, start - 1) or 0) if start - 1 >= log_.first else 0
        topic, partition = Shard.parse(shard)
        shard_entries = request.shards.add(
            topic=topic, partition=partition, epoch=lead.epoch, start=start, prev_epoch=prev_epoch,
            entries=entries.raw, message_ids=entries.ids, dedup_keys=entries.dedup_keys,
            dedup_until_ms=entries.dedup_until_ms, last_entry_epoch=entries.last_epoch, commit=log_.commit,
            first=log_.first, has_subscriptions=state_since is not None)
        if state_since is not None:
            update = self._engine.state_since(shard, state_since)
            shard_entries.subscriptions.extend(update.states)
            shard_entries.removed_subscriptions.extend(update.removed)
            shard_entries.state_delta = update.delta
            shard_entries.state_epoch, shard_entries.state_version = update.stamp
        return shard_entries

    async def _handle_results(self, node: str, response: storage_pb2.ReplicateResponse,
                              sent: dict[str, SentShard]) -> bool:
        """Takes in a follower's answer; whether there is more to send it."""
        more = False
        for result in response.shards:
            shard = shard_name(result.topic, result.partition)
            lead = self.led.get(shard)
            if lead is None or shard not in sent or sent[shard].epoch != lead.epoch:
                continue
            if result.newer_epoch > lead.epoch:
                await self.step_down(shard, f"{node} knows a newer epoch {result.newer_epoch}")
                continue
            progress = lead.progress.get(node)
            if progress is None:
                continue
            progress.heard = time.monotonic()
            what = sent[shard]
            if result.ok:
                progress.match = progress.next = result.end
                progress.first = what.first
                if what.states_sent:
                    progress.state_version, progress.state_due = what.state_version, False
                progress.records = max(progress.records, what.records_end)
                self.advance_commit(lead)
                self._engine.release_tail(shard, min(p.match for p in lead.progress.values()))
            else:
                progress.next = result.end  # where the follower's log fits ours
            if progress.next < self._engine.shard(shard).end:
                more = True
        return more
