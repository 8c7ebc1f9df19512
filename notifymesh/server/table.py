"""The replicated table's client (storage/table.py serves it): rows by key in the
partitions of internal_topics.TABLE_TOPIC, placed by rows.partition_of(partition
key). Each call goes to the partition's leader through StorageClient.call, with
its retries across a failover (a retried write writes the same values again; a
retried rate acquire is recognised by its token). Concurrent writes, rate
acquires and reads of one partition are each coalesced into one call (while one
is under way, the next gathers what arrives); reads of many keys go one call per
partition, the partitions in parallel."""

import asyncio
from collections import defaultdict
from typing import Awaitable, Callable, NamedTuple, TypeVar

from gen.notifymesh.internal.v1 import storage_pb2
from notifymesh import errors
from notifymesh.batching import Coalescer
from notifymesh.server.clients import StorageClient
from notifymesh.server.cluster import Cluster
from notifymesh.server.internal_topics import TABLE_TOPIC
from notifymesh.server.rows import partition_of

MAX_OPS_PER_CALL = 1_000   # a merged write carries whole requests up to this many ops ...
MAX_BYTES_PER_CALL = 4 << 20  # ... and bytes (storage refuses over 10,000 ops)
MAX_KEYS_PER_CALL = 10_000    # storage's bound of one TableRead
MAX_SCAN_ROWS = 10_000  # and of the rows one TableScanMany may ask for (prefixes x limit)

T = TypeVar("T")


class Scanned(NamedTuple):
    keys: list[bytes]
    values: list[bytes]
    more: bool


class RateDecision(NamedTuple):
    allowed: bool
    retry_after_ms: int
    count: int


class Acquire(NamedTuple):
    """One send counted against a limit (TableClient.rate_acquire_many)."""
    partition_key: str
    key: bytes  # rows.rate_counter_key or rows.duplicate_key
    limit: int
    period_ms: int
    token: str
    force: bool = False


def put(key: bytes, value: bytes, expire_ms: int = 0) -> storage_pb2.TableOp:
    return storage_pb2.TableOp(key=key, value=value, expire_ms=expire_ms)


def delete(key: bytes) -> storage_pb2.TableOp:
    return storage_pb2.TableOp(key=key, delete=True)


def erase(key: bytes) -> storage_pb2.TableOp:
    """A delete that also compacts the row's past values out of every replica's files."""
    return storage_pb2.TableOp(key=key, erase=True)


class TableClient:
    def __init__(self, cluster: Cluster):
        self._cluster = cluster
        self._storage = StorageClient(cluster)
        self._partitions: int | None = None  # the table topic's partition count, once known
        self._writes: Coalescer[storage_pb2.TableOp, None] = Coalescer(
            self._send_write, MAX_OPS_PER_CALL, MAX_BYTES_PER_CALL, lambda op: op.ByteSize())
        # Acquires, and the rows written along with them (None for each of those).
        self._acquires: Coalescer[storage_pb2.RateAcquire | storage_pb2.TableOp, RateDecision | None] = Coalescer(
            self._send_acquires, MAX_OPS_PER_CALL)
        # Reads too: a notification of 10 recipients reads about as many partitions, and
        # at 100 such notifications a second TableRead was 13 calls a notification, the
        # most of any call (bench/notify.py --mode latency, docs/benchmarks.md 2026-12-03).
        self._reads: Coalescer[bytes, bytes | None] = Coalescer(self._send_read, MAX_KEYS_PER_CALL)

    def partition(self, partition_key: str) -> int:
        if self._partitions is None:
            topic = self._cluster.topics.items.get(TABLE_TOPIC)
            if topic is None:
                raise errors.Unavailable(f"the table topic {TABLE_TOPIC!r} is not known here yet "
                                         "(metadata creates it at start)")
            self._partitions = topic.partition_count  # fixed: no public call may change the topic
        return partition_of(partition_key, self._partitions)

    async def _known(self) -> None:
        """Reads the table topic from etcd when the mirror has not seen it yet."""
        if self._partitions is None and TABLE_TOPIC not in self._cluster.topics.items:
            try:
                self._partitions = (await self._cluster.topic(TABLE_TOPIC)).partition_count
            except errors.NotFound:
                raise errors.Unavailable(f"the table topic {TABLE_TOPIC!r} is not created yet") from None

    async def _partition(self, partition_key: str) -> int:
        await self._known()
        return self.partition(partition_key)

    async def _send_write(self, partition: int, ops: list[storage_pb2.TableOp]) -> None:
        await self._storage.call("TableWrite", TABLE_TOPIC, partition,
                                 storage_pb2.TableWriteRequest(partition=partition, ops=ops))

    async def write(self, partition_key: str, ops: list[storage_pb2.TableOp]) -> None:
        """Durable (on a majority, applied on the leader) when it returns."""
        await self._write_partition(await self._partition(partition_key), ops)

    async def _write_partition(self, partition: int, ops: list[storage_pb2.TableOp]) -> None:
        await asyncio.gather(*(self._writes.submit(partition, ops[i:i + MAX_OPS_PER_CALL])
                               for i in range(0, len(ops), MAX_OPS_PER_CALL)))

    async def write_many(self, ops_by_partition_key: dict[str, list[storage_pb2.TableOp]]) -> None:
        by_partition: dict[int, list[storage_pb2.TableOp]] = defaultdict(list)
        await self._known()
        for partition_key, ops in ops_by_partition_key.items():
            by_partition[self.partition(partition_key)].extend(ops)
        await asyncio.gather(*(self._write_partition(p, ops) for p, ops in by_partition.items()))

    async def _send_read(self, partition: int, keys: list[bytes]) -> list[bytes | None]:
        response = await self._storage.call("TableRead", TABLE_TOPIC, partition, storage_pb2.TableReadRequest(
            partition=partition, keys=keys))
        return [v if found else None for v, found in zip(response.values, response.found)]

    async def _read_partition(self, partition: int, keys: list[bytes]) -> list[bytes | None]:
        chunks = await asyncio.gather(*(self._reads.submit(partition, keys[i:i + MAX_KEYS_PER_CALL])
                                        for i in range(0, len(keys), MAX_KEYS_PER_CALL)))
        return [value for chunk in chunks for value in chunk]

    async def read(self, partition_key: str, keys: list[bytes]) -> list[bytes | None]:
        """The value of each row, None for a row that does not exist (or expired)."""
        return await self._read_partition(await self._partition(partition_key), keys) if keys else []

    async def read_many(self, keys_by_partition_key: dict[str, list[bytes]]) -> dict[bytes, bytes | None]:
        by_partition: dict[int, list[bytes]] = defaultdict(list)
        await self._known()
        for partition_key, keys in keys_by_partition_key.items():
            by_partition[self.partition(partition_key)].extend(keys)
        partitions = [(p, list(dict.fromkeys(keys))) for p, keys in by_partition.items() if keys]
        results = await asyncio.gather(*(self._read_partition(p, keys) for p, keys in partitions))
        return {key: value for (_, keys), values in zip(partitions, results) for key, value in zip(keys, values)}

    async def scan(self, partition_key: str, prefix: bytes, start_after: bytes = b"", limit: int = 1000,
                   reverse: bool = False) -> Scanned:
        """Rows whose keys start with prefix, in key order (reverse: highest first),
        after start_after (reverse: before it); more: rows remain."""
        partition = await self._partition(partition_key)
        response = await self._storage.call("TableScan", TABLE_TOPIC, partition, storage_pb2.TableScanRequest(
            partition=partition, prefix=prefix, start_after=start_after, limit=limit, reverse=reverse))
        return Scanned(list(response.keys), list(response.values), response.more)

    async def scan_many(self, scans: list[tuple[str, bytes]], limit: int) -> list[Scanned]:
        """The first rows (at most limit) under each (partition key, prefix): one call
        per partition (and per MAX_SCAN_ROWS rows asked for), the partitions in parallel."""
        async def call(partition: int, indexes: list[int]) -> list[Scanned]:
            response = await self._storage.call("TableScanMany", TABLE_TOPIC, partition,
                                                storage_pb2.TableScanManyRequest(
                                                    partition=partition, prefixes=[scans[i][1] for i in indexes],
                                                    limit=limit))
            return [Scanned(list(scanned.keys), list(scanned.values), scanned.more) for scanned in response.scans]
        return await self._by_partition([key for key, _ in scans], max(1, MAX_SCAN_ROWS // limit), call)

    async def _by_partition(self, partition_keys: list[str], per_call: int,
                            call: Callable[[int, list[int]], Awaitable[list[T]]]) -> list[T]:
        """call(partition, indexes) for the items of each partition (their indexes in
        partition_keys, at most per_call a call), the partitions in parallel; the
        results in the items' order."""
        await self._known()
        by_partition: dict[int, list[int]] = defaultdict(list)
        for i, partition_key in enumerate(partition_keys):
            by_partition[self.partition(partition_key)].append(i)
        results: list = [None] * len(partition_keys)

        async def one(partition: int, indexes: list[int]) -> None:
            for i, result in zip(indexes, await call(partition, indexes)):
                results[i] = result

        await asyncio.gather(*(one(p, indexes[i:i + per_call]) for p, indexes in by_partition.items()
                               for i in range(0, len(indexes), per_call)))
        return results

    async def _send_acquires(self, partition: int, items: list[storage_pb2.RateAcquire | storage_pb2.TableOp]
                             ) -> list[RateDecision | None]:
        request = storage_pb2.RateAcquireRequest(partition=partition)
        for item in items:
            (request.acquires if isinstance(item, storage_pb2.RateAcquire) else request.ops).append(item)
        response = await self._storage.call("RateAcquire", TABLE_TOPIC, partition, request)
        if request.ops and not response.ops_written:  # a leader of an older version: they go apart
            await self._send_write(partition, list(request.ops))
        decisions = iter(response.decisions)
        results: list[RateDecision | None] = []
        for item in items:
            d = next(decisions) if isinstance(item, storage_pb2.RateAcquire) else None
            results.append(None if d is None else RateDecision(d.allowed, d.retry_after_ms, d.count))
        return results

    async def rate_acquire(self, partition_key: str, key: bytes, limit: int, period_ms: int, token: str,
                           force: bool = False) -> RateDecision:
        """Counts a send against at most limit per period_ms (rows.rate_counter_key),
        once per token; force counts it even over the limit. Concurrent acquires of a
        partition go in one call (a fan-out page checks a thousand recipients at once)."""
        (decision,) = await self.rate_acquire_many([Acquire(partition_key, key, limit, period_ms, token, force)])
        return decision

    async def rate_acquire_many(self, acquires: list[Acquire],
                                writes: dict[str, list[storage_pb2.TableOp]] | None = None) -> list[RateDecision]:
        """rate_acquire of each, in order: one request per partition (merged with
        concurrent ones), not one a row. A fan-out page's duplicate checks made a task
        and a request for each of its 1,000 recipients (docs/benchmarks.md, 2026-12-01);
        a channel worker's batch checks its tasks' limits so too. writes (ops by
        partition key): rows written in the same replicated writes (a partition without
        acquires: a write of its own), durable when this returns."""
        items: list[tuple[str, storage_pb2.RateAcquire | storage_pb2.TableOp]] = [
            (a.partition_key, storage_pb2.RateAcquire(key=a.key, limit=a.limit, period_ms=a.period_ms,
                                                      token=a.token, force=a.force)) for a in acquires]
        items += [(partition_key, op) for partition_key, ops in (writes or {}).items() for op in ops]

        def call(partition: int, indexes: list[int]) -> Awaitable[list[RateDecision | None]]:
            return self._acquires.submit(partition, [items[i][1] for i in indexes])
        results = await self._by_partition([partition_key for partition_key, _ in items], MAX_OPS_PER_CALL, call)
        return results[:len(acquires)]
