"""Group commit of log writes: concurrent appends (and replicated batches) share
one synced WriteBatch. While one group is being written, the next one forms."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from rocksdict import WriteBatch

from notifymesh import errors
from notifymesh.log import fields
from storage.db import Database

if TYPE_CHECKING:
    from storage.log import ShardLog

log = logging.getLogger(__name__)


@dataclass
class GroupWrite:
    """A write staged into the group being formed: what becomes true of its shard
    once the group is synced (or not, when the write failed)."""
    log: ShardLog
    end: int
    replacements: int
    dedup_keys: list[tuple[str, str]]  # (dedup key, message id) staged in the shard's staged_keys
    start: int = 0
    ids: list[str] = field(default_factory=list)  # message id of each entry from start on
    keys: list[str] = field(default_factory=list)  # dedup key of each entry from start on


class GroupCommit:
    def __init__(self, db: Database):
        self._db = db
        # Writes go into the group being formed, which the committer writes (synced)
        # as one batch while the next one forms.
        self._batch = WriteBatch(raw_mode=True)
        self._done: asyncio.Future | None = None
        self._writes: list[GroupWrite] = []
        self._writing: list[GroupWrite] = []  # the group being written
        self._wake = asyncio.Event()
        self._committer: asyncio.Task | None = None
        self._closed = False

    def start(self) -> None:
        self._committer = asyncio.create_task(self._commit_loop())

    def join(self) -> tuple[WriteBatch, asyncio.Future]:
        """The batch being formed, to add a synced write's puts to, and the future
        that is done once that batch is written (shared by every write of the group).
        Add the write's GroupWrite with staged() before yielding to the event loop."""
        if self._closed:
            raise errors.Unavailable("storage node is shutting down")
        if self._done is None:
            self._done = asyncio.get_running_loop().create_future()
        self._wake.set()
        return self._batch, self._done

    def staged(self, write: GroupWrite) -> None:
        self._writes.append(write)

    def unsynced(self, log_: ShardLog, start: int) -> list[tuple[str, str]]:
        """(message id, dedup key) of the entries of log_ from start on that are staged
        or being written, not yet readable: what replacing them must delete besides."""
        return [(message_id, dedup_key) for write in (*self._writing, *self._writes) if write.log is log_
                for seq, message_id, dedup_key in zip(range(write.start, write.end), write.ids, write.keys)
                if seq >= start]

    async def _commit_loop(self) -> None:
        """While one group is being written, the next accumulates: group commit."""
        while not (self._closed and self._done is None):
            await self._wake.wait()
            self._wake.clear()
            batch, done, writes = self._batch, self._done, self._writes
            if done is None:
                continue
            self._batch, self._done, self._writes = WriteBatch(raw_mode=True), None, []
            self._writing = writes
            try:
                await asyncio.to_thread(self._db.write_synced, batch)
            except Exception as e:
                log.error("log write failed", extra=fields(error=repr(e)))
                done.set_exception(errors.Unavailable(f"storage write failed: {e}"))
                done.exception()  # retrieved: a group no writer awaits any more is not an error
            else:
                for write in writes:  # groups complete in the order they were formed
                    if write.log.replacements == write.replacements:  # else these entries may be gone again
                        write.log.written = max(write.log.written, write.end)
                done.set_result(None)
            self._writing = []
            for write in writes:  # in RocksDB now, or never: repeats are found there
                staged = write.log.staged_keys
                for dedup_key, message_id in write.dedup_keys:
                    if staged.get(dedup_key) == message_id:
                        del staged[dedup_key]

    async def close(self) -> None:
        """Writes what is pending; no write joins after."""
        self._closed = True
        if self._committer:
            self._wake.set()
            await self._committer
