"""The node's RocksDB, opened once and shared by the engine's parts. The log is
written synced (through group commit); everything else unsynced: delivery
records, saved delivery state, trims. Losing those in a crash at worst delivers
a message again, as at-least-once allows."""

from pathlib import Path
from typing import Iterator

from rocksdict import BlockBasedOptions, Options, Rdict, WriteBatch, WriteOptions

from notifymesh.server.sealing import KeyRing


# Bits a key of each table file's bloom filter: 10 is RocksDB's usual choice (about
# 1 % false positives), 1.25 bytes a key in memory and on disk. Most point reads
# miss: a table write's apply looks up each row it writes for the one it
# supersedes (an event row never has one), and a fan-out reads up to nine rows a
# recipient (contact, unsubscribe, devices marker, preferences), most never set.
# Measured (500,000 keys in two table files, rocksdict): a missing key's get 13.7 us
# without a filter, 1.6 with one; a present key's 11.2-12.5 against 8.8-9.3; scans alike.
BLOOM_BITS_PER_KEY = 10


def table_options() -> BlockBasedOptions:
    table = BlockBasedOptions()
    table.set_bloom_filter(BLOOM_BITS_PER_KEY, False)  # full filters (not block-based: RocksDB's legacy kind)
    return table


class Database:
    """Implements interfaces.Records. The log's hot reads use `rdict` directly."""

    def __init__(self, path: Path, ring: KeyRing | None = None):
        # Seals the values that hold what clients sent (storage/keys.py says which);
        # without one (unit tests), values are written in the clear.
        self.ring = ring if ring is not None else KeyRing(None, enabled=False)
        options = Options(raw_mode=True)
        options.create_if_missing(True)
        options.set_block_based_table_factory(table_options())
        # The default column family named with its options: opening an existing
        # database, rocksdict gives each family it finds default options otherwise (no
        # filters after a restart).
        self.rdict = Rdict(str(path), options, column_families={"default": options})
        self._unsynced = WriteOptions()

    @staticmethod
    def batch() -> WriteBatch:
        return WriteBatch(raw_mode=True)

    def write(self, batch: WriteBatch) -> None:
        self.rdict.write(batch, self._unsynced)

    def write_synced(self, batch: WriteBatch) -> None:
        """A durable write. rocksdict holds the GIL through a write, fsync included, which
        stalls every other thread of the process (measured: the event loop ran at about
        40% of its speed meanwhile); flush_wal releases it. The entries are visible to
        reads before the sync completes, but nothing reads them as durable until
        `written` moves (after this returns)."""
        self.rdict.write(batch, self._unsynced)
        self.rdict.flush_wal(True)

    def put(self, key: bytes, value: bytes) -> None:
        self.rdict.put(key, value, self._unsynced)

    def get(self, key: bytes) -> bytes | None:
        return self.rdict.get(key)

    def get_many(self, keys: list[bytes]) -> list[bytes | None]:
        """One multi-get."""
        return self.rdict.get(keys) if keys else []

    def prefixed(self, prefix: bytes, start: bytes = b"") -> Iterator[tuple[bytes, bytes]]:
        for key, value in self.rdict.items(from_key=max(prefix, start)):
            if not key.startswith(prefix):
                return
            yield key, value

    def close(self) -> None:
        self.rdict.flush_wal(True)
        self.rdict.close()
