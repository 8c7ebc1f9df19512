"""The interfaces between the storage engine's parts, so that each part can be
driven by an in-memory fake in tests (tests/unit/storage_fakes.py):

- Records            RocksDB for what is not the log: delivery records, saved
                     delivery state, idempotency keys (db.Database).
- LogStore           what the other parts read of the shards' logs (log.ShardLogs).
- SubscriptionStore  the delivery state of each shard, for dead letters, the
                     delivery log and retention (delivery.Deliveries).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Container, Iterator, Protocol, runtime_checkable

if TYPE_CHECKING:
    from gen.notifymesh.internal.v1 import storage_pb2
    from notifymesh.server.sealing import KeyRing
    from storage.delivery import Lease, SubscriptionState
    from storage.log import ShardLog


@runtime_checkable
class Batch(Protocol):
    """Writes applied together (rocksdict.WriteBatch)."""

    def put(self, key: bytes, value: bytes) -> None: ...

    def delete(self, key: bytes) -> None: ...

    def delete_range(self, begin: bytes, end: bytes) -> None: ...

    def __len__(self) -> int: ...


@runtime_checkable
class Records(Protocol):
    """Unsynced keys and values (a crash may lose the latest). `ring` seals the
    values holding what clients sent (storage/keys.py)."""
    ring: KeyRing

    def batch(self) -> Batch: ...

    def write(self, batch: Batch) -> None: ...

    def put(self, key: bytes, value: bytes) -> None: ...

    def get(self, key: bytes) -> bytes | None: ...

    def get_many(self, keys: list[bytes]) -> list[bytes | None]: ...

    def prefixed(self, prefix: bytes, start: bytes = b"") -> Iterator[tuple[bytes, bytes]]:
        """The keys starting with prefix, in order, from start on (a scan resumed)."""


@runtime_checkable
class LogStore(Protocol):
    """The shards' logs, as the parts beside the log read them. Positions (first,
    commit, end) are fields of each ShardLog."""
    shards: dict[str, ShardLog]

    def shard(self, name: str) -> ShardLog:
        """The shard's log, created empty if it is not kept here yet."""

    def message(self, log_: ShardLog, seq: int, messages: dict[int, bytes | None]) -> bytes | None:
        """The serialized PubsubMessage of entry seq, None for an epoch marker or an
        entry gone; messages caches what was read from disk (called per delivery)."""

    def identity(self, log_: ShardLog, seq: int) -> bytes | None:
        """The identity (keys.collected_value) of entry seq, None for an epoch marker
        or an entry gone (called per entry retention deletes)."""

    def entry(self, shard: str, seq: int) -> storage_pb2.StoredMessage | None: ...

    def message_ids_from(self, log_: ShardLog, start: int) -> list[str]:
        """The ids of the messages from start to the end of the log."""

    def first_seq_at_or_after(self, log_: ShardLog, ms: int) -> int:
        """The first entry appended at or after ms (log_.end if none)."""

    def trim(self, shard: str, first: int) -> int:
        """Drops the committed entries below first; returns how many."""

    def stub(self, log_: ShardLog, start: int, stop: int, keep: Container[int], batch: Batch) -> list[tuple[int, bytes]]:
        """Replaces (in batch) the messages from start to stop but those in keep by
        stubs; returns the (seq, serialized message) of each replaced."""


@runtime_checkable
class SubscriptionStore(Protocol):
    """Each shard's subscriptions (cursors, leases, dead letters), kept on its ShardLog."""

    def restored(self, shard: str) -> ShardLog:
        """The shard, its delivery state in memory (taken out of the saved form)."""

    def subscription(self, shard: str, subscription: str) -> SubscriptionState:
        """Raises NotFound unless the subscription is attached to the shard."""

    def dead_letter(self, log_: ShardLog, state: SubscriptionState, seq: int, message: bytes, lease: Lease,
                    now: int) -> bool:
        """Queues the message for its dead-letter topic (False: the queue is full)."""
