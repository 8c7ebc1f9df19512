"""The follower's side of replication: the Replicate handler.

A follower refuses any epoch older than the newest it has seen (and any batch of
a shard it still leads); the newest seen survives a restart (the log's seen_epoch,
on disk before the batch is answered, and the epoch of its last entry), checks that each batch fits its log (rules:
resend_from), truncating a divergent tail by overwriting it, and writes the
batches of one request in one synced write.
"""

import asyncio
import time
from typing import Awaitable, Mapping, Protocol

from gen.notifymesh.internal.v1 import storage_pb2
from gen.notifymesh.v1 import pubsub_pb2
from notifymesh import errors
from notifymesh.contracts import shard_name
from notifymesh.server import tracing
from storage.delivery import StateUpdate
from storage.log import Entries, ShardLog
from storage.replication_rules import epoch_refused, leader_deposed, newest_epoch, resend_from


def _message_of(entry: bytes) -> pubsub_pb2.PubsubMessage:
    return storage_pb2.StoredMessage.FromString(entry).message


class FollowerLog(Protocol):
    """What the follower needs of the storage engine."""

    def shard(self, name: str) -> ShardLog: ...
    def epoch_at(self, shard: str, seq: int) -> int | None: ...
    def save_epoch(self, shard: str, epoch: int) -> Awaitable[None] | None: ...
    def reset(self, shard: str, first: int) -> None: ...
    def write_replicated(self, shard: str, start: int, entries: Entries) -> Awaitable[None]: ...
    def advance_commit(self, shard: str, commit: int) -> None: ...
    def import_states(self, shard: str, update: StateUpdate) -> None: ...
    def trim(self, shard: str, first: int) -> int: ...
    def store_replicated(self, shard: str, delivery_keys: list[bytes], values: list[bytes]) -> None: ...


class Led(Protocol):
    epoch: int


class Leading(Protocol):
    """The shards this node leads (storage.leader.Leader)."""

    @property
    def led(self) -> Mapping[str, Led]: ...

    async def step_down(self, shard: str, reason: str, resign: bool = False) -> None: ...


class Candidate(Protocol):
    """This node's candidacies (storage.election.Election)."""

    async def withdraw(self, shard: str, leader_epoch: int | None = None) -> bool:
        """False: the leader key is not leader_epoch's, the announcement stays."""


class Follower:
    def __init__(self, engine: FollowerLog, leading: Leading, candidate: Candidate, known_epoch: dict[str, int],
                 last_heard: dict[str, float]):
        """known_epoch: the newest epoch seen of each shard (shared with the leader
        side); last_heard: when a leader last fed each shard (monotonic), for placement."""
        self._engine, self._leading, self._candidate = engine, leading, candidate
        self._known_epoch, self._last_heard = known_epoch, last_heard
        # Leader node -> when a request of it last came (monotonic), for silent_leaders:
        # the storage nodes, at most.
        self._heard_from: dict[str, float] = {}
        self._open = False

    def open(self) -> None:
        """The engine has recovered and writes: batches are taken from now on."""
        self._open = True

    def silent_leaders(self, leaders: Mapping[str, str], after_s: float) -> list[str]:
        """The addresses of the leaders (node -> address: those of the shards this node
        follows) that sent nothing here for after_s, counted from when they were
        first asked about. A live leader sends each shard a heartbeat every
        leader.HEARTBEAT_S at least."""
        now = time.monotonic()
        for gone in self._heard_from.keys() - leaders.keys():
            del self._heard_from[gone]
        return [addr for node, addr in leaders.items() if now - self._heard_from.setdefault(node, now) >= after_s]

    async def _admit(self, shard: str, batch: storage_pb2.ShardEntries, result: storage_pb2.ShardResult,
                     writes: list[Awaitable[None]]) -> bool:
        """Whether the batch's epoch is taken: not older than the newest seen here
        (in memory, on disk, or as the epoch of the log's last entry), and this node
        does not lead the shard (after stepping down for a newer epoch). A taken
        epoch is saved with the writes, so it is on disk before the answer."""
        led = self._leading.led
        log_ = self._engine.shard(shard)
        known = max(self._known_epoch.get(shard, 0), log_.seen_epoch, log_.last_epoch)
        lead = led.get(shard)
        if leader_deposed(batch.epoch, lead.epoch if lead is not None else None):
            await self._leading.step_down(shard, f"epoch {batch.epoch} replicates to this node")
            lead = led.get(shard)
        led_epoch = lead.epoch if lead is not None else None
        if epoch_refused(batch.epoch, known, led_epoch):
            result.newer_epoch = newest_epoch(known, led_epoch)
            result.end = log_.end
            return False
        self._known_epoch[shard] = batch.epoch
        if (saved := self._engine.save_epoch(shard, batch.epoch)) is not None:
            writes.append(saved)
        self._last_heard[shard] = time.monotonic()
        return True

    async def replicate(self, request: storage_pb2.ReplicateRequest) -> storage_pb2.ReplicateResponse:
        """Applies a leader's batches: refuses older epochs, checks that each batch
        fits the local log, writes all of them in one synced write."""
        if not self._open:
            raise errors.Unavailable("storage node is starting: its replication state is not loaded yet")
        self._heard_from[request.leader] = time.monotonic()
        results, writes, traced = [], [], []
        for batch in request.shards:
            shard = shard_name(batch.topic, batch.partition)
            result = storage_pb2.ShardResult(topic=batch.topic, partition=batch.partition)
            results.append(result)
            if not await self._admit(shard, batch, result, writes):
                continue
            log_ = self._engine.shard(shard)
            if not await self._candidate.withdraw(shard, batch.epoch):  # that leader's key is gone
                result.end = log_.end
                continue
            if log_.end < batch.first:
                self._engine.reset(shard, batch.first)  # too far behind: start over at the leader's first
            resend = resend_from(self._engine, shard, batch.start, batch.prev_epoch, log_.first, log_.end)
            if resend is not None:  # a gap, or our tail diverges: the leader sends from there
                result.end = resend
                continue
            if batch.entries or batch.start < log_.end:
                writes.append(self._engine.write_replicated(shard, batch.start, Entries.replicated(batch)))
                # A table write's entries carry no trace context (storage/table.py makes them
                # without attributes): not searched for one, up to 1 MiB of rows each.
                if not log_.table and (contexts := tracing.contexts_in(batch.entries, _message_of)):
                    traced.append(tracing.replicate_span(shard, contexts, len(batch.entries)))
            result.ok = True
        try:
            await asyncio.gather(*writes)
        finally:
            for span in traced:  # the synced write of the traced entries
                span.end()
        for batch, result in zip(request.shards, results):
            if result.ok:
                shard = shard_name(batch.topic, batch.partition)
                log_ = self._engine.shard(shard)
                self._engine.advance_commit(shard, batch.commit)
                if batch.has_subscriptions:
                    self._engine.import_states(shard, StateUpdate.of(batch))
                if batch.delivery_keys:
                    self._engine.store_replicated(shard, list(batch.delivery_keys), list(batch.delivery_records))
                self._engine.trim(shard, batch.first)
                result.end = log_.end
        return storage_pb2.ReplicateResponse(shards=results)
