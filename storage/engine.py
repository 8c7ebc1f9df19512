"""A storage node's messages, cursors and leases: RocksDB plus an in-memory index.

Publishing appends to a per-topic log with sequence numbers. Each subscription
has a cursor (the next sequence never delivered) and leases for messages
delivered but not yet acknowledged; a lease that passes its deadline makes the
message deliverable again. A message is deleted once every subscription has
moved past it (cursor beyond it, no lease on it), or when it is older than the
topic's retention.

Appends are group-committed: concurrent appends share one synced WriteBatch.
Cursor and lease updates are written without sync: losing one to a machine
crash only means a message is delivered again, which at-least-once allows.
"""

import asyncio
import heapq
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

from rocksdict import Options, Rdict, WriteBatch, WriteOptions

from gen.notifymesh.internal.v1 import storage_pb2
from gen.notifymesh.v1 import pubsub_pb2
from notifymesh import errors
from notifymesh.clock import now_ms, timestamp, to_ms
from notifymesh.log import fields
from storage import keys

log = logging.getLogger(__name__)

NODE_ID_FILE = "NODE_ID"


def new_message_id(publish_ms: int) -> str:
    """Time-ordered and unique without coordination: 44 bits of ms, 64 random bits."""
    return f"{publish_ms:011x}{os.urandom(8).hex()}"


def ack_id(seq: int, node_id: str) -> str:
    """Names the node: after a topic moves, another node's seq numbers mean other messages."""
    return f"{seq:x}:{node_id}"


def parse_ack_id(value: str) -> tuple[int, str]:
    seq, sep, node_id = value.partition(":")
    try:
        if not sep or not node_id:
            raise ValueError
        return int(seq, 16), node_id
    except ValueError:
        raise errors.InvalidArgument(f"malformed ack id {value!r}") from None


@dataclass
class SubscriptionState:
    name: str
    cursor: int
    leases: dict[int, storage_pb2.Lease] = field(default_factory=dict)
    # (deadline_ms, seq); entries whose lease changed since are skipped when popped.
    deadlines: list[tuple[int, int]] = field(default_factory=list)

    def lease(self, seq: int, lease: storage_pb2.Lease) -> None:
        self.leases[seq] = lease
        heapq.heappush(self.deadlines, (lease.deadline_ms, seq))

    def next_deadline(self) -> int | None:
        while self.deadlines:
            deadline, seq = self.deadlines[0]
            lease = self.leases.get(seq)
            if lease is not None and lease.deadline_ms == deadline:
                return deadline
            heapq.heappop(self.deadlines)
        return None

    def low_watermark(self) -> int:
        """No message below this is still owed to the subscription."""
        return min(self.cursor, min(self.leases, default=self.cursor))


@dataclass
class TopicLog:
    name: str
    first: int = 0   # lowest seq possibly still stored
    end: int = 0     # one past the highest committed seq
    next: int = 0    # next seq to assign (> end while a commit is in progress)
    subscriptions: dict[str, SubscriptionState] = field(default_factory=dict)
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    def notify(self) -> None:
        """Wakes every pull waiting on this topic."""
        changed, self.changed = self.changed, asyncio.Event()
        changed.set()


@dataclass
class _Append:
    topic: str
    messages: list[storage_pb2.StoredMessage]
    dedup_window_ms: int
    done: asyncio.Future
    # False for a handoff: the messages keep the ids and publish times they have.
    new: bool = True


class StorageEngine:
    def __init__(self, data_dir: Path, node_id: str):
        data_dir.mkdir(parents=True, exist_ok=True)
        id_file = data_dir / NODE_ID_FILE
        if id_file.exists() and id_file.read_text().strip() != node_id:
            raise SystemExit(f"{data_dir} belongs to storage node {id_file.read_text().strip()!r}, not {node_id!r}")
        id_file.write_text(node_id + "\n")
        self.node_id = node_id
        options = Options(raw_mode=True)
        options.create_if_missing(True)
        self._db = Rdict(str(data_dir / "rocksdb"), options)
        self._synced = WriteOptions()
        self._synced.sync = True
        self._unsynced = WriteOptions()
        self.topics: dict[str, TopicLog] = {}
        self._pending: list[_Append] = []
        self._wake_committer = asyncio.Event()
        self._committer: asyncio.Task | None = None
        self._closed = False
        self._draining = False
        self._recover()

    # -- recovery ---------------------------------------------------------------

    def _recover(self) -> None:
        """Rebuilds the in-memory index from the keys on disk."""
        db = self._db
        for key, value in db.items(from_key=b"c"):
            if not key.startswith(b"c"):
                break
            topic, sub = (part.decode() for part in key[1:].split(b"\0", 1))
            self._log(topic).subscriptions[sub] = SubscriptionState(sub, int.from_bytes(value, "big"))
        for key, value in db.items(from_key=b"l"):
            if not key.startswith(b"l"):
                break
            topic, sub, _ = key[1:].split(b"\0", 2)
            state = self._log(topic.decode()).subscriptions.get(sub.decode())
            if state is None:  # the cursor write was lost; the cursor recovery covers it
                continue
            state.lease(keys.seq_of(key), storage_pb2.Lease.FromString(value))
        it = db.iter()
        it.seek(b"m")
        while it.valid() and it.key().startswith(b"m"):
            topic = it.key()[1:].split(b"\0", 1)[0].decode()
            prefix = keys.message_prefix(topic)
            log_ = self._log(topic)
            log_.first = keys.seq_of(it.key())
            it.seek_for_prev(keys.prefix_end(prefix))
            log_.end = keys.seq_of(it.key()) + 1
            it.seek(keys.prefix_end(prefix))
        for log_ in self.topics.values():
            for state in log_.subscriptions.values():
                log_.end = max(log_.end, state.cursor, max(state.leases, default=-1) + 1)
            log_.next = log_.end
        log.info("recovered", extra=fields(topics=len(self.topics),
                                           messages=sum(t.end - t.first for t in self.topics.values())))

    def _log(self, topic: str) -> TopicLog:
        log_ = self.topics.get(topic)
        if log_ is None:
            log_ = self.topics[topic] = TopicLog(topic)
        return log_

    def start(self) -> None:
        self._committer = asyncio.create_task(self._commit_loop())

    # -- publish ----------------------------------------------------------------

    async def append(self, topic: str, messages: list[pubsub_pb2.PubsubMessage], dedup_window_ms: int) -> list[str]:
        """Stores messages durably; returns their ids (the original id for a repeated
        idempotency key). Returns only after the synced write."""
        stored = [storage_pb2.StoredMessage(message=m) for m in messages]
        return await self._enqueue(_Append(topic, stored, dedup_window_ms, self._future()))

    async def take_over(self, topic: str, messages: list[storage_pb2.StoredMessage], dedup_window_ms: int) -> None:
        """Stores messages handed over by another node, keeping their ids."""
        await self._enqueue(_Append(topic, messages, dedup_window_ms, self._future(), new=False))

    @staticmethod
    def _future() -> asyncio.Future:
        return asyncio.get_running_loop().create_future()

    async def _enqueue(self, append: _Append) -> list[str]:
        if self._closed:
            raise errors.Unavailable("storage node is shutting down")
        self._pending.append(append)
        self._wake_committer.set()
        return await append.done

    async def _commit_loop(self) -> None:
        """While one batch is being written, the next accumulates: group commit."""
        while not (self._closed and not self._pending):
            await self._wake_committer.wait()
            self._wake_committer.clear()
            appends, self._pending = self._pending, []
            if appends:
                await self._commit(appends)

    async def _commit(self, appends: list[_Append]) -> None:
        batch = WriteBatch(raw_mode=True)
        seen: dict[bytes, str] = {}  # idempotency keys first used within this batch
        results: list[list[str]] = []
        touched: set[str] = set()
        publish_ms = now_ms()
        publish_time = timestamp(publish_ms)
        for append in appends:
            log_ = self._log(append.topic)
            ids = []
            for stored in append.messages:
                message = stored.message
                if message.idempotency_key:
                    dedup_key = keys.idempotency(append.topic, message.idempotency_key)
                    original = seen.get(dedup_key) or self._seen_id(dedup_key, publish_ms)
                    if original:
                        ids.append(original)
                        continue
                seq = log_.next
                log_.next += 1
                if append.new:
                    message.message_id = new_message_id(publish_ms)
                    message.publish_time.CopyFrom(publish_time)
                stored.append_ms = publish_ms
                batch.put(keys.message(append.topic, seq), stored.SerializeToString())
                if message.idempotency_key:
                    seen[dedup_key] = message.message_id
                    batch.put(dedup_key, (publish_ms + append.dedup_window_ms).to_bytes(8, "big")
                              + message.message_id.encode())
                ids.append(message.message_id)
            results.append(ids)
            touched.add(append.topic)
        try:
            await asyncio.to_thread(self._db.write, batch, self._synced)
        except Exception as e:
            log.error("append write failed", extra=fields(error=repr(e)))
            for append in appends:
                if not append.done.done():
                    append.done.set_exception(errors.Unavailable(f"storage write failed: {e}"))
            return
        for topic in touched:
            log_ = self.topics[topic]
            log_.end = log_.next
            log_.notify()
        for append, ids in zip(appends, results):
            if not append.done.done():
                append.done.set_result(ids)

    def _seen_id(self, dedup_key: bytes, now: int) -> str | None:
        value = self._db.get(dedup_key)
        if value is None or int.from_bytes(value[:8], "big") <= now:
            return None
        return value[8:].decode()

    # -- subscriptions ----------------------------------------------------------

    def attach(self, subscription: pubsub_pb2.Subscription) -> SubscriptionState:
        """Starts the subscription at the first message published at or after its
        create time, unless it is attached already."""
        log_ = self._log(subscription.topic)
        state = log_.subscriptions.get(subscription.name)
        if state is None:
            cursor = self._first_seq_at_or_after(log_, to_ms(subscription.create_time))
            self._db.put(keys.cursor(log_.name, subscription.name), keys.seq_bytes(cursor), self._unsynced)
            state = log_.subscriptions[subscription.name] = SubscriptionState(subscription.name, cursor)
            log.info("subscription attached", extra=fields(subscription=subscription.name, cursor=cursor))
        return state

    def _first_seq_at_or_after(self, log_: TopicLog, ms: int) -> int:
        """Binary search over the stored messages, which are in append-time order."""
        low, high = log_.first, log_.end
        it = self._db.iter()
        while low < high:
            mid = (low + high) // 2
            it.seek(keys.message(log_.name, mid))
            if not it.valid() or not it.key().startswith(keys.message_prefix(log_.name)):
                high = mid
                continue
            seq = keys.seq_of(it.key())
            if storage_pb2.StoredMessage.FromString(it.value()).append_ms >= ms:
                high = mid
            else:
                low = seq + 1
        return low

    def detach(self, topic: str, subscription: str) -> None:
        log_ = self.topics.get(topic)
        if log_ is None or log_.subscriptions.pop(subscription, None) is None:
            return
        batch = WriteBatch(raw_mode=True)
        batch.delete(keys.cursor(topic, subscription))
        prefix = keys.lease_prefix(topic, subscription)
        batch.delete_range(prefix, keys.prefix_end(prefix))
        self._db.write(batch, self._unsynced)
        log_.notify()
        log.info("subscription detached", extra=fields(subscription=subscription))

    def drop_topic(self, topic: str) -> None:
        log_ = self.topics.pop(topic, None)
        if log_ is None:
            return
        batch = WriteBatch(raw_mode=True)
        for kind in (b"m", b"c", b"l", b"k"):
            prefix = kind + topic.encode() + b"\0"
            batch.delete_range(prefix, keys.prefix_end(prefix))
        self._db.write(batch, self._unsynced)
        log_.notify()
        log.info("topic dropped", extra=fields(topic=topic))

    def subscription(self, topic: str, subscription: str) -> SubscriptionState:
        log_ = self.topics.get(topic)
        state = log_.subscriptions.get(subscription) if log_ else None
        if state is None:
            raise errors.NotFound(f"subscription {subscription!r} is not attached on this storage node")
        return state

    # -- delivery ---------------------------------------------------------------

    async def pull(self, topic: str, subscription: str, max_messages: int, ack_deadline_ms: int,
                   wait_ms: int) -> list[pubsub_pb2.ReceivedMessage]:
        """Leases up to max_messages: expired leases first, then new messages. Waits up
        to wait_ms for one to become deliverable."""
        loop = asyncio.get_running_loop()
        give_up = loop.time() + wait_ms / 1000
        while True:
            log_ = self.topics.get(topic)
            state = self.subscription(topic, subscription)
            received = self._lease_deliverable(log_, state, max_messages, ack_deadline_ms)
            remaining = give_up - loop.time()
            if received or remaining <= 0 or self._draining:
                return received
            next_deadline = state.next_deadline()
            if next_deadline is not None:
                remaining = min(remaining, max(0.0, (next_deadline - now_ms()) / 1000))
            try:
                await asyncio.wait_for(log_.changed.wait(), remaining)
            except TimeoutError:
                pass

    def _lease_deliverable(self, log_: TopicLog, state: SubscriptionState, max_messages: int,
                           ack_deadline_ms: int) -> list[pubsub_pb2.ReceivedMessage]:
        """Synchronous on purpose: nothing else runs between choosing messages and
        recording their leases, so two pulls never lease one message twice."""
        now = now_ms()
        deadline = now + ack_deadline_ms
        batch = WriteBatch(raw_mode=True)
        received: list[pubsub_pb2.ReceivedMessage] = []
        # Redeliveries: leases past their deadline.
        while len(received) < max_messages and (due := state.next_deadline()) is not None and due <= now:
            _, seq = heapq.heappop(state.deadlines)
            value = self._db.get(keys.message(log_.name, seq))
            if value is None:  # expired by retention meanwhile
                del state.leases[seq]
                batch.delete(keys.lease(log_.name, state.name, seq))
                continue
            lease = storage_pb2.Lease(deadline_ms=deadline, delivery_attempt=state.leases[seq].delivery_attempt + 1)
            received.append(self._leased(log_, state, seq, storage_pb2.StoredMessage.FromString(value), lease, batch))
        # New messages from the cursor on.
        if len(received) < max_messages and state.cursor < log_.end:
            cursor = state.cursor
            stop = keys.message(log_.name, log_.end)
            for key, value in self._db.items(from_key=keys.message(log_.name, cursor)):
                if len(received) >= max_messages:
                    break
                if key >= stop:  # past this topic's committed messages (gaps were expired)
                    cursor = log_.end
                    break
                seq = keys.seq_of(key)
                cursor = seq + 1
                stored = storage_pb2.StoredMessage.FromString(value)
                if stored.only_subscriptions and state.name not in stored.only_subscriptions:
                    continue
                received.append(self._leased(log_, state, seq, stored,
                                             storage_pb2.Lease(deadline_ms=deadline, delivery_attempt=1), batch))
            else:
                cursor = log_.end
            if cursor > state.cursor:
                state.cursor = cursor
                batch.put(keys.cursor(log_.name, state.name), keys.seq_bytes(cursor))
        if len(batch):
            self._db.write(batch, self._unsynced)
        return received

    def _leased(self, log_: TopicLog, state: SubscriptionState, seq: int, stored: storage_pb2.StoredMessage,
                lease: storage_pb2.Lease, batch: WriteBatch) -> pubsub_pb2.ReceivedMessage:
        state.lease(seq, lease)
        batch.put(keys.lease(log_.name, state.name, seq), lease.SerializeToString())
        return pubsub_pb2.ReceivedMessage(ack_id=ack_id(seq, self.node_id), message=stored.message,
                                          delivery_attempt=lease.delivery_attempt)

    def acknowledge(self, topic: str, subscription: str, ack_ids: list[str]) -> int:
        """Ends the leases; returns how many were in flight (others were acked already)."""
        state = self.subscription(topic, subscription)
        batch = WriteBatch(raw_mode=True)
        acked = 0
        for seq in self._own_seqs(ack_ids):
            if state.leases.pop(seq, None) is not None:
                batch.delete(keys.lease(topic, subscription, seq))
                acked += 1
        if acked:
            self._db.write(batch, self._unsynced)
        return acked

    def _own_seqs(self, ack_ids: list[str]) -> list[int]:
        """The seqs of ack ids this node issued; others belong to a node that held the
        topic before, and their messages were handed over under new ids."""
        parsed = [parse_ack_id(a) for a in ack_ids]
        return [seq for seq, node_id in parsed if node_id == self.node_id]

    def modify_ack_deadline(self, topic: str, subscription: str, ack_ids: list[str], ack_deadline_ms: int) -> None:
        """Moves the deadline of in-flight messages; 0 makes them deliverable now (nack)."""
        log_ = self.topics.get(topic)
        state = self.subscription(topic, subscription)
        batch = WriteBatch(raw_mode=True)
        deadline = now_ms() + ack_deadline_ms
        for seq in self._own_seqs(ack_ids):
            lease = state.leases.get(seq)
            if lease is None:
                continue
            lease = storage_pb2.Lease(deadline_ms=deadline, delivery_attempt=lease.delivery_attempt)
            state.lease(seq, lease)
            batch.put(keys.lease(topic, subscription, seq), lease.SerializeToString())
        if len(batch):
            self._db.write(batch, self._unsynced)
            log_.notify()

    # -- handoff of topics this node no longer owns ------------------------------

    def handoff_chunk(self, topic: str, limit: int) -> tuple[list[storage_pb2.StoredMessage], int]:
        """Up to limit messages of topic that some subscription still needs, each
        naming those subscriptions, and the seq after the last one looked at."""
        log_ = self.topics[topic]
        states = list(log_.subscriptions.values())
        chunk: list[storage_pb2.StoredMessage] = []
        upto = log_.first
        stop = keys.message(topic, log_.end)
        for key, value in self._db.items(from_key=keys.message(topic, log_.first)):
            if len(chunk) >= limit:
                break
            if key >= stop:
                upto = log_.end
                break
            seq = keys.seq_of(key)
            upto = seq + 1
            stored = storage_pb2.StoredMessage.FromString(value)
            needed_by = [s.name for s in states if (seq >= s.cursor or seq in s.leases)
                         and (not stored.only_subscriptions or s.name in stored.only_subscriptions)]
            if needed_by:
                del stored.only_subscriptions[:]
                stored.only_subscriptions.extend(needed_by)
                chunk.append(stored)
        else:
            upto = log_.end
        return chunk, upto

    def handed_off(self, topic: str, upto: int) -> None:
        """Marks everything below upto as delivered here: the new owner has it now."""
        log_ = self.topics.get(topic)
        if log_ is None:
            return
        batch = WriteBatch(raw_mode=True)
        for state in log_.subscriptions.values():
            self._expire(log_, state, upto, batch)
        if len(batch):
            self._db.write(batch, self._unsynced)

    # -- garbage collection -----------------------------------------------------

    def collect(self, retention_ms: dict[str, int]) -> int:
        """Deletes what no subscription still needs, and what is past retention;
        returns how many message slots were freed. retention_ms: per topic."""
        now = now_ms()
        freed = 0
        batch = WriteBatch(raw_mode=True)
        for log_ in self.topics.values():
            retention = retention_ms.get(log_.name)
            if retention is not None:
                expired_below = self._first_seq_at_or_after(log_, now - retention)
                for state in log_.subscriptions.values():
                    self._expire(log_, state, expired_below, batch)
            low = min((s.low_watermark() for s in log_.subscriptions.values()), default=log_.end)
            if low > log_.first:
                batch.delete_range(keys.message(log_.name, log_.first), keys.message(log_.name, low))
                freed += low - log_.first
                log_.first = low
        if len(batch):
            self._db.write(batch, self._unsynced)
        return freed

    def _expire(self, log_: TopicLog, state: SubscriptionState, below: int, batch: WriteBatch) -> None:
        for seq in [seq for seq in state.leases if seq < below]:
            del state.leases[seq]
            batch.delete(keys.lease(log_.name, state.name, seq))
        if state.cursor < below:
            state.cursor = below
            batch.put(keys.cursor(log_.name, state.name), keys.seq_bytes(below))

    def collect_idempotency_keys(self) -> int:
        """Deletes idempotency keys past their window; returns how many."""
        now = now_ms()
        batch = WriteBatch(raw_mode=True)
        for key, value in self._db.items(from_key=b"k"):
            if not key.startswith(b"k"):
                break
            if int.from_bytes(value[:8], "big") <= now:
                batch.delete(key)
        if count := len(batch):
            self._db.write(batch, self._unsynced)
        return count

    # -- shutdown ---------------------------------------------------------------

    def stop_waiting(self) -> None:
        """Makes waiting pulls return now, so the server's grace period is not spent on them."""
        self._draining = True
        for log_ in self.topics.values():
            log_.notify()

    async def close(self) -> None:
        """Commits what is pending, flushes and closes RocksDB. Safe to call twice."""
        if self._closed:
            return
        self.stop_waiting()
        self._closed = True
        if self._committer:
            self._wake_committer.set()
            await self._committer
        self._db.flush_wal(True)
        self._db.close()
