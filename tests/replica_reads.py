"""Reads of a storage node's RocksDB beside the running node, for the tests'
audits (a read-only open: RocksDB allows it, and it reads the synced WAL too)."""

from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from rocksdict import AccessType, Options, Rdict

T = TypeVar("T")

# A read-only open reads the files the manifest named at open; the running node's
# compaction may delete one of them before the read reaches it ("IO error: No such
# file or directory"). A read that meets this starts again from a fresh open. One
# loaded suite run met it once in an audit; 5 attempts leave room for bursts.
ATTEMPTS = 5


def read_replica(rocksdb_dir: Path, read: Callable[[Rdict], T]) -> T:
    """read(db) over a fresh read-only open of rocksdb_dir, again from a new open
    while a file it opened was compacted away meanwhile."""
    for attempt in range(ATTEMPTS):
        try:
            return _read_once(rocksdb_dir, read)
        except Exception as e:  # rocksdict raises a plain Exception with RocksDB's message
            if "No such file" not in str(e) or attempt == ATTEMPTS - 1:
                raise
    raise AssertionError("unreachable")


def _read_once(rocksdb_dir: Path, read: Callable[[Rdict], T]) -> T:
    db = Rdict(str(rocksdb_dir), Options(raw_mode=True), access_type=AccessType.read_only())
    try:
        return read(db)
    finally:
        db.close()
