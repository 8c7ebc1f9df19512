"""A storage node's shards: replicated logs in RocksDB, delivery state in memory.
Replication itself (who leads, who follows) is in storage/replication.py; this
module keeps one node's copy, as a facade over its parts, each with one job:

  storage/log.py           the log: entries, positions, recovery, trim and reset
  storage/group_commit.py  concurrent log writes share one synced WriteBatch
  storage/dedup.py         repeats and retries recognised at append
  storage/delivery.py      cursors and leases: pull, ack, nack, seek, their saved form
  storage/dead_letters.py  messages out of attempts: bury, list, redrive, sweep
  storage/delivery_log.py  each delivery attempt's outcome, and message status
  storage/retention.py     garbage collection of the log
  storage/stats.py         what each subscription owes, for describe
  storage/table.py         the replicated table's rows, applied from its shards' logs
  storage/keys.py          the RocksDB key layout; storage/db.py the RocksDB itself

They meet through the Protocols in storage/interfaces.py (LogStore, SubscriptionStore,
Records), so each can be driven by a fake in tests. Per-shard state of every part
is on the shard's ShardLog.
"""

from pathlib import Path
from typing import Awaitable

from gen.notifymesh.internal.v1 import storage_pb2
from gen.notifymesh.v1 import pubsub_pb2
from notifymesh.server.sealing import KeyRing
from storage.db import Database
from storage.dead_letters import DeadLetters
from storage.dedup import Dedup, Prepared
from storage.delivery import DeadLetter, Deliveries, Pull, Pulled, Seeked, StateUpdate, SubscriptionState
from storage.delivery_log import DeliveryLog, WrittenRecords
from storage.group_commit import GroupCommit
from storage.log import Entries, ShardLog, ShardLogs
from storage.retention import Retention, lowest_cursor
from storage.stats import Stats, SubscriptionStats
from storage.table import Table

NODE_ID_FILE = "NODE_ID"


class StorageEngine:
    def __init__(self, data_dir: Path, node_id: str, ring: KeyRing | None = None):
        data_dir.mkdir(parents=True, exist_ok=True)
        id_file = data_dir / NODE_ID_FILE
        if id_file.exists() and id_file.read_text().strip() != node_id:
            raise SystemExit(f"{data_dir} belongs to storage node {id_file.read_text().strip()!r}, not {node_id!r}")
        id_file.write_text(node_id + "\n")
        self.node_id = node_id
        self.db = Database(data_dir / "rocksdb", ring)
        self._group = GroupCommit(self.db)
        self.log = ShardLogs(self.db, self._group)
        self.shards: dict[str, ShardLog] = self.log.shards  # the same dict: every part sees one set of shards
        self.dedup = Dedup(self.log, self.db)
        self.deliveries = Deliveries(self.log, self.db)
        self.dead_letter_store = DeadLetters(self.log, self.deliveries, self.db)
        self.delivery_log = DeliveryLog(self.log, self.deliveries, self.db)
        self.retention = Retention(self.log, self.deliveries, self.db)
        self.stats = Stats(self.log, self.deliveries)
        self.table = Table(self.log, self.db)
        # Messages out of delivery attempts, for the storage service to move.
        self.dead_letters = self.deliveries.dead_letters
        self._closed = False
        self.deliveries.recover()
        self.log.recover()
        self.table.recover()

    def start(self) -> None:
        self._group.start()

    # -- the log (storage/log.py) ----------------------------------------------------

    def shard(self, name: str) -> ShardLog:
        return self.log.shard(name)

    def epoch_at(self, shard: str, seq: int) -> int | None:
        return self.log.epoch_at(shard, seq)

    def write_entries(self, shard: str, start: int, entries: Entries) -> Awaitable[None]:
        return self.log.write_entries(shard, start, entries)

    def write_replicated(self, shard: str, start: int, entries: Entries) -> Awaitable[None]:
        return self.log.write_replicated(shard, start, entries)

    def save_epoch(self, shard: str, epoch: int) -> Awaitable[None] | None:
        return self.log.save_epoch(shard, epoch)

    def release_tail(self, shard: str, below: int) -> None:
        self.log.release_tail(shard, below)

    def advance_commit(self, shard: str, commit: int) -> None:
        self.log.advance_commit(shard, commit)
        if self.shards[shard].table:  # every replica applies at commit (a chunk; the node's table loop the rest)
            self.table.apply(shard)

    def entries_from(self, shard: str, start: int, limit: int, max_bytes: int | None = None,
                     at_least_one: bool = True) -> Entries:
        return self.log.entries_from(shard, start, limit, max_bytes, at_least_one)

    def reset(self, shard: str, first: int) -> None:
        self.log.reset(shard, first)
        if self.shards[shard].table:  # rows of erased values may be in its files: compact them out
            self.table.compact_later(shard)

    def trim(self, shard: str, first: int) -> int:
        """A follower drops what its leader no longer keeps, recording the identities
        of those messages first (COLLECT_CHUNK at a time: the rest with the next batch).
        A table shard's entries go once applied (storage/table.py)."""
        log_ = self.shard(shard)
        if log_.table:
            return self.log.trim(shard, min(first, log_.applied))
        return self.log.trim(shard, self.delivery_log.keep_identities(shard, first))

    def drop(self, shard: str) -> None:
        self.log.drop(shard)

    # -- appends (storage/dedup.py) --------------------------------------------------

    def prepare(self, shard: str, messages: list[pubsub_pb2.PubsubMessage], epoch: int, dedup_window_ms: int,
                retry: bool, by_payload: bool = False) -> Prepared:
        return self.dedup.prepare(shard, messages, epoch, dedup_window_ms, retry, by_payload)

    async def load_recent_ids(self, shard: str) -> None:
        await self.dedup.load_recent_ids(shard)

    def collect_idempotency_keys(self) -> int:
        return self.dedup.collect_idempotency_keys()

    async def sweep_idempotency_keys(self) -> int:
        return await self.dedup.sweep_idempotency_keys()

    # -- delivery state (storage/delivery.py) ----------------------------------------

    def attach(self, shard: str, subscription: pubsub_pb2.Subscription) -> SubscriptionState:
        return self.deliveries.attach(shard, subscription)

    def attach_known(self, shard: str, known: dict[str, pubsub_pb2.Subscription], every: bool = False) -> None:
        self.deliveries.attach_known(shard, known, every)

    def detach(self, shard: str, subscription: str) -> None:
        self.deliveries.detach(shard, subscription)

    def subscription(self, shard: str, subscription: str) -> SubscriptionState:
        return self.deliveries.subscription(shard, subscription)

    def lead(self, shard: str, epoch: int) -> None:
        self.deliveries.lead(shard, epoch)

    def save_state(self, shard: str) -> None:
        self.deliveries.save_state(shard)

    def state_since(self, shard: str, version: int) -> StateUpdate:
        return self.deliveries.state_since(shard, version)

    def import_states(self, shard: str, update: StateUpdate) -> None:
        self.deliveries.import_states(shard, update)

    async def pull(self, shard: str, pulls: list[Pull], wait_ms: int) -> dict[str, Pulled]:
        return await self.deliveries.pull(shard, pulls, wait_ms)

    def acknowledge(self, shard: str, subscription: str, ack_ids: list[str]) -> int:
        return self.deliveries.acknowledge(shard, subscription, ack_ids)

    def modify_ack_deadline(self, shard: str, subscription: str, ack_ids: list[str], ack_deadline_ms: int) -> None:
        self.deliveries.modify_ack_deadline(shard, subscription, ack_ids, ack_deadline_ms)

    def nack(self, shard: str, subscription: str, ack_ids: list[str], delay_ms: int | None = None,
             terminal: bool = False, reason: str = "", deferred: bool = False) -> None:
        self.deliveries.nack(shard, subscription, ack_ids, delay_ms, terminal, reason, deferred)

    def describe(self, shard: str, subscriptions: list[str]) -> list[SubscriptionStats]:
        return self.stats.describe(shard, subscriptions)

    def backlogs(self, shard: str) -> dict[str, int]:
        return self.stats.backlogs(shard)

    def seek(self, shard: str, subscription: str, time_ms: int | None, retention_ms: int | None,
             retain_acked_ms: int | None) -> Seeked:
        """time_ms None: to the end (a purge). Back no further than retention allows."""
        floor = self.retention.seek_floor(shard, retention_ms, retain_acked_ms)
        return self.deliveries.seek(shard, subscription, time_ms, floor)

    # -- dead letters (storage/dead_letters.py) ---------------------------------------

    def bury(self, dead: DeadLetter, dead_letter_message_id: str) -> None:
        self.dead_letter_store.bury(dead, dead_letter_message_id)

    def list_dead_letters(self, shard: str, subscription: str, limit: int,
                          after_seq: int = -1) -> storage_pb2.StorageListDeadLettersResponse:
        return self.dead_letter_store.list(shard, subscription, limit, after_seq)

    def redrive(self, shard: str, subscription: str) -> int:
        return self.dead_letter_store.redrive(shard, subscription)

    def sweep_dead_letters(self, shard: str) -> None:
        self.dead_letter_store.sweep(shard)

    # -- delivery log, garbage collection ----------------------------------------------

    def message_status(self, shard: str, message_id: str) -> pubsub_pb2.MessageStatus:
        return self.delivery_log.message_status(shard, message_id)

    def written_since(self, shard: str, position: int, limit: int, max_bytes: int) -> WrittenRecords:
        return self.delivery_log.written_since(shard, position, limit, max_bytes)

    def release_written(self, shard: str, below: int) -> None:
        self.shard(shard).layout.release_written(below)

    def store_replicated(self, shard: str, delivery_keys: list[bytes], values: list[bytes]) -> None:
        self.delivery_log.store_replicated(shard, delivery_keys, values)

    def collect_delivery_log(self, shard: str, older_than_ms: int) -> int:
        return self.delivery_log.collect(shard, older_than_ms)

    def collect(self, shard: str, retention_ms: int | None, retain_acked_ms: int | None = None) -> int:
        return self.retention.collect(shard, retention_ms, retain_acked_ms)

    def stub(self, shard: str, retain_acked_ms: int | None = None, settled_below: int | None = None) -> int:
        return self.retention.stub(shard, retain_acked_ms, settled_below)

    def lowest_cursor(self, shard: str) -> int | None:
        """Every entry of the shard from here on may still be delivered (None: no state)."""
        log_ = self.shards.get(shard)
        return lowest_cursor(log_) if log_ is not None else None

    # -- shutdown ---------------------------------------------------------------

    def stop_waiting(self) -> None:
        """Makes waiting pulls return now, so the server's grace period is not spent on them."""
        self.deliveries.stop_waiting()

    async def close(self) -> None:
        """Commits what is pending, flushes and closes RocksDB. Safe to call twice."""
        if self._closed:
            return
        self.stop_waiting()
        for name, log_ in self.shards.items():
            if log_.saved is None:  # the delivery state of a shard led here: the latest
                self.save_state(name)
        self._closed = True
        await self._group.close()
        self.db.close()
