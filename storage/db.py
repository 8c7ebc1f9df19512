"""The node's RocksDB, opened once and shared by the engine's parts. The log is
written synced (through group commit); everything else unsynced: delivery
records, saved delivery state, trims. Losing those in a crash at worst delivers
a message again, as at-least-once allows."""

from pathlib import Path
from typing import Iterator

from rocksdict import Options, Rdict, WriteBatch, WriteOptions

from notifymesh.server.sealing import KeyRing


class Database:
    """Implements interfaces.Records. The log's hot reads use `rdict` directly."""

    def __init__(self, path: Path, ring: KeyRing | None = None):
        # Seals the values that hold what clients sent (storage/keys.py says which);
        # without one (unit tests), values are written in the clear.
        self.ring = ring if ring is not None else KeyRing(None, enabled=False)
        options = Options(raw_mode=True)
        options.create_if_missing(True)
        self.rdict = Rdict(str(path), options)
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
