"""In-memory implementations of the storage engine's interfaces
(storage/interfaces.py), to drive one part of the engine without RocksDB."""

import bisect

from gen.notifymesh.internal.v1 import storage_pb2
from gen.notifymesh.v1 import pubsub_pb2
from notifymesh.server.sealing import KeyRing
from storage import keys
from storage.log import ShardLog


class MemoryBatch:
    """A WriteBatch: the writes, applied in order by MemoryRecords.write."""

    def __init__(self):
        self.ops: list[tuple] = []

    def put(self, key: bytes, value: bytes) -> None:
        self.ops.append(("put", key, value))

    def delete(self, key: bytes) -> None:
        self.ops.append(("delete", key))

    def delete_range(self, begin: bytes, end: bytes) -> None:
        self.ops.append(("delete_range", begin, end))

    def __len__(self) -> int:
        return len(self.ops)


class MemoryRecords:
    """interfaces.Records over a dict."""

    def __init__(self, ring: KeyRing | None = None):
        self.values: dict[bytes, bytes] = {}
        self.writes = 0
        self.ring = ring if ring is not None else KeyRing(None, enabled=False)

    def batch(self) -> MemoryBatch:
        return MemoryBatch()

    def write(self, batch: MemoryBatch) -> None:
        self.writes += 1
        for op, *args in batch.ops:
            if op == "put":
                self.values[args[0]] = args[1]
            elif op == "delete":
                self.values.pop(args[0], None)
            else:
                for key in [k for k in self.values if args[0] <= k < args[1]]:
                    del self.values[key]

    def put(self, key: bytes, value: bytes) -> None:
        self.values[key] = value

    def get(self, key: bytes) -> bytes | None:
        return self.values.get(key)

    def get_many(self, keys_: list[bytes]) -> list[bytes | None]:
        return [self.values.get(key) for key in keys_]

    def prefixed(self, prefix: bytes, start: bytes = b""):
        for key in sorted(self.values):
            if key.startswith(prefix) and key >= start:
                yield key, self.values[key]

    def deliveries(self, shard: str) -> list[keys.Delivery]:
        """The delivery log of the shard, as recorded."""
        return [keys.parse_delivery(key, value, self.ring) for key, value in self.prefixed(keys.ShardKeys(shard).deliveries())]


class MemoryLog:
    """interfaces.LogStore over lists: every entry appended is committed at once
    (unless commit=False)."""

    def __init__(self):
        self.shards: dict[str, ShardLog] = {}
        self.entries: dict[str, dict[int, storage_pb2.StoredMessage]] = {}
        self.reads = 0  # entries read for delivery

    def shard(self, name: str) -> ShardLog:
        if name not in self.shards:
            self.shards[name] = ShardLog(name, int(name.rpartition("/")[2]))
            self.entries[name] = {}
        return self.shards[name]

    def append(self, shard: str, *data: bytes, append_ms: int = 0, commit: bool = True) -> list[int]:
        log_ = self.shard(shard)
        seqs = []
        for payload in data:
            message = pubsub_pb2.PubsubMessage(data=payload, message_id=f"id-{log_.end}")
            self.entries[shard][log_.end] = storage_pb2.StoredMessage(message=message, append_ms=append_ms, epoch=1)
            seqs.append(log_.end)
            log_.end += 1
        if commit:
            log_.commit = log_.end
        return seqs

    def message(self, log_: ShardLog, seq: int, messages: dict[int, bytes | None]) -> bytes | None:
        self.reads += 1
        entry = self.entries[log_.name].get(seq)
        return entry.message.SerializeToString() if entry is not None and entry.HasField("message") else None

    def identity(self, log_: ShardLog, seq: int) -> bytes | None:
        message = self.message(log_, seq, {})
        return keys.collected_value(message) if message is not None else None

    def entry(self, shard: str, seq: int) -> storage_pb2.StoredMessage | None:
        return self.entries.get(shard, {}).get(seq)

    def message_ids_from(self, log_: ShardLog, start: int) -> list[str]:
        return [e.message.message_id for seq, e in sorted(self.entries[log_.name].items()) if seq >= start]

    def first_seq_at_or_after(self, log_: ShardLog, ms: int) -> int:
        seqs = sorted(self.entries[log_.name])
        at = bisect.bisect_left([self.entries[log_.name][s].append_ms for s in seqs], ms)
        return seqs[at] if at < len(seqs) else log_.end

    def stub(self, log_: ShardLog, start: int, stop: int, keep, batch) -> list[tuple[int, bytes]]:
        replaced = []
        for seq in range(start, stop):
            entry = self.entries[log_.name].get(seq)
            if seq not in keep and entry is not None and entry.HasField("message"):
                replaced.append((seq, entry.message.SerializeToString()))
                entry.ClearField("message")
        return replaced

    def trim(self, shard: str, first: int) -> int:
        log_ = self.shard(shard)
        first = min(first, log_.commit)
        if first <= log_.first:
            return 0
        for seq in range(log_.first, first):
            self.entries[shard].pop(seq, None)
        freed, log_.first = first - log_.first, first
        return freed
