"""Delivery state of each shard, on its leader: per subscription a cursor (the
next seq never delivered) and leases for messages delivered but not yet
acknowledged; a lease past its deadline makes the message deliverable again.
Pull, ack, nack, modify-ack-deadline and seek work on it; each outcome of an attempt
is recorded in the delivery log (keys.ShardKeys.delivery, read by
storage/delivery_log.py).

The state lives in memory on the leader, which saves it about every 0.5 s, one
RocksDB value per subscription that changed since (save_state), and sends each
follower the subscriptions changed since the state it has (state_since): the
cost of a tick follows what changed, not how many leases and dead letters are
held. A crash loses at most that much, which only means messages are delivered
again, as at-least-once allows.
"""

import asyncio
import heapq
import logging
from dataclasses import dataclass, field
from typing import NamedTuple

from gen.notifymesh.internal.v1 import storage_pb2
from gen.notifymesh.v1 import pubsub_pb2
from notifymesh import errors
from notifymesh.backoff import retry_wait_ms
from notifymesh.clock import now_ms, to_ms
from notifymesh.contracts import AckId, ack_ids_by_subscription, ack_seqs_by_pair
from notifymesh.log import fields
from storage import keys, wire
from storage.interfaces import Batch, LogStore, Records
from storage.log import ShardLog
from storage.stats import RateWindow

log = logging.getLogger(__name__)

DEAD_LETTER_RETRY_MS = 30_000  # a dead letter not moved by then is tried again
# Dead-letterings waiting for the storage service to move them, at most. A queued
# DeadLetter holds no message (the move reads it from the log), a few hundred
# bytes, so the queue stays within a few MB. When it is full an exhausted message
# waits in its lease DEAD_LETTER_BUSY_MS at a time and a terminal nack is refused:
# back-pressure instead of growth when the dead-letter topic cannot take them.
MAX_QUEUED_DEAD_LETTERS = 10_000
# Per subscription and shard, what the delivery state holds at most:
# - leases (messages delivered and not yet acknowledged, or waiting for a retry):
#   at the limit no new message is delivered until one ends, as JetStream's
#   max_ack_pending; about 250 bytes each in memory, 28 in the saved state;
# - dead-letter records, for listing and redrive: past the limit the oldest record
#   goes (its message is in the dead-letter topic, and its outcome in the
#   delivery log).
MAX_LEASES, MAX_DEAD_LETTER_RECORDS = 20_000, 10_000
# Detached subscriptions a leader remembers for followers with an older state; one
# further behind than the oldest is sent the whole state.
MAX_REMOVED = 1_000
DEAD_LETTER_BUSY_MS = 1_000
# A pull names every subscription of its topic a sender serves (45,000 in the fan-out
# bench); one leasing for all of them in one go held the loop, and so the member
# lease's keep-alive, for seconds. The loop is let go between slices of this many.
PULL_YIELD_EVERY = 1_000


@dataclass(frozen=True)
class DeliveryPolicy:
    """A subscription's retry backoff and dead-lettering, from its record."""
    min_backoff_ms: int = 0
    max_backoff_ms: int = 0
    multiplier: float = 1.0
    max_attempts: int = 0
    dead_letter_topic: str = ""

    @classmethod
    def of(cls, subscription: pubsub_pb2.Subscription) -> "DeliveryPolicy":
        policy = subscription.retry_policy
        return cls(policy.minimum_backoff.ToMilliseconds(), policy.maximum_backoff.ToMilliseconds(),
                   policy.multiplier or 1.0, subscription.max_delivery_attempts, subscription.dead_letter_topic)

    def backoff_ms(self, attempt: int) -> int:
        """The wait after failed attempt number attempt (1-based)."""
        return retry_wait_ms(self.min_backoff_ms, self.max_backoff_ms, self.multiplier, attempt)

    def exhausted(self, attempt: int) -> bool:
        return bool(self.max_attempts and self.dead_letter_topic and attempt >= self.max_attempts)


class Lease:
    """One in-flight delivery (a plain object: one is made per delivery)."""
    __slots__ = ("deadline_ms", "attempt", "delivered_ms", "last_error")

    def __init__(self, deadline_ms: int, attempt: int, delivered_ms: int, last_error: str = ""):
        # deadline_ms: when the message may be delivered again (ack deadline plus
        # retry backoff); last_error: why the last attempt failed, if it was nacked.
        self.deadline_ms, self.attempt, self.delivered_ms, self.last_error = \
            deadline_ms, attempt, delivered_ms, last_error


@dataclass
class SubscriptionState:
    name: str
    cursor: int
    leases: dict[int, Lease] = field(default_factory=dict)
    # (deadline_ms, seq); entries whose lease changed since are skipped when popped.
    # A lease's deadline is when the message may be delivered again: the ack
    # deadline plus the retry backoff.
    deadlines: list[tuple[int, int]] = field(default_factory=list)
    policy: DeliveryPolicy = DeliveryPolicy()
    # Messages moved to the dead-letter topic, by seq: kept for listing and redrive.
    dead_letters: dict[int, storage_pb2.DeadLetterRecord] = field(default_factory=dict)
    # Leases a redrive rule sent back: seq -> redrives so far (storage/dead_letters.py);
    # at most one per lease, dropped with it.
    redrives: dict[int, int] = field(default_factory=dict)
    created_ms: int = 0  # the subscription's create time: older messages were never its own
    record: pubsub_pb2.Subscription | None = None  # the etcd record policy and created_ms come from
    version: int = 0  # the shard's state_version at its last change (ShardLog.touch)
    # Its saved form, as of version saved_version (built once per change, for disk and followers).
    saved: storage_pb2.SubscriptionState | None = None
    saved_version: int = -1
    # Deliveries per second over the last minute, for describe (in memory only).
    delivered: RateWindow = field(default_factory=RateWindow)

    def lease(self, seq: int, lease: Lease) -> None:
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
        """No entry below this is still owed to the subscription."""
        return min(self.cursor, min(self.leases, default=self.cursor), min(self.dead_letters, default=self.cursor))


@dataclass
class DeadLetter:
    """A message out of delivery attempts, for the storage service to move."""
    shard: str
    subscription: str
    seq: int
    message_id: str
    attempts: int
    topic: str
    error: str


class StateUpdate(NamedTuple):
    """Delivery state for a follower: the subscriptions changed since the state it
    has and those detached since (delta), or every subscription (not delta); and
    the stamp (leader epoch, state_version) of the state it brings it to."""
    states: list[storage_pb2.SubscriptionState]
    removed: list[str]
    delta: bool
    stamp: tuple[int, int]

    @classmethod
    def of(cls, batch: storage_pb2.ShardEntries) -> "StateUpdate":
        return cls(list(batch.subscriptions), list(batch.removed_subscriptions), batch.state_delta,
                   (batch.state_epoch, batch.state_version))


class Pull(NamedTuple):
    """One subscription's part of a pull; max_messages 0: lease none, only wait
    until it has a deliverable message (a sender with no room to spare)."""
    subscription: str
    max_messages: int
    ack_deadline_ms: int


class Pulled(NamedTuple):
    """What one subscription got: serialized ReceivedMessages and their ack ids;
    ready: it has a deliverable message left."""
    received: list[bytes]
    ack_ids: list[str]
    ready: bool = False


NOTHING_LEASED = Pulled([], [])


class Seeked(NamedTuple):
    """A seek's outcome on one shard: the subscription's new cursor, and whether
    going back stopped short of the time asked (limited): at what every replica
    keeps whole (the floor), or at the first entry kept, messages appended since
    that time having been deleted."""
    cursor: int
    limited: bool


class Deliveries:
    """Implements interfaces.SubscriptionStore."""

    def __init__(self, logs: LogStore, records: Records, max_queued_dead_letters: int = MAX_QUEUED_DEAD_LETTERS):
        self._logs, self._records = logs, records
        # Messages out of delivery attempts, for the storage service to move.
        self.dead_letters: asyncio.Queue[DeadLetter] = asyncio.Queue(max_queued_dead_letters)
        self._draining = False

    def recover(self) -> None:
        """Finds the saved delivery state of every shard (taken into memory when led)."""
        for key, value in self._records.prefixed(keys.STATE):
            log_ = self._logs.shard(keys.shard_of(key))
            if log_.saved is None:
                log_.saved = {}
            if (subscription := keys.subscription_of_state(key)) is not None:
                saved = keys.open_value(self._records.ring, key, value)
                log_.saved[subscription] = keys.parse_subscription_state(saved)
                continue
            stamp = keys.parse_delivery_state(value)
            log_.state_stamp = (stamp.epoch, stamp.version)
            for state in stamp.subscriptions:  # saved by an earlier version: its own keys (after) win
                log_.saved.setdefault(state.name, state)

    # -- subscriptions ----------------------------------------------------------

    def attach(self, shard: str, subscription: pubsub_pb2.Subscription) -> SubscriptionState:
        """Starts the subscription at the first entry appended at or after its create
        time, unless it is attached already; takes its delivery policy either way."""
        log_ = self.restored(shard)
        state = log_.subscriptions.get(subscription.name)
        if state is not None and state.record is not subscription:  # new, or restored from a snapshot
            state.record, state.policy = subscription, DeliveryPolicy.of(subscription)
            state.created_ms = to_ms(subscription.create_time)
        if state is None:
            cursor = self._logs.first_seq_at_or_after(log_, to_ms(subscription.create_time))
            state = log_.subscriptions[subscription.name] = SubscriptionState(
                subscription.name, cursor, policy=DeliveryPolicy.of(subscription),
                created_ms=to_ms(subscription.create_time), record=subscription)
            log_.touch(state)
            log.info("subscription attached", extra=fields(shard=shard, subscription=subscription.name,
                                                           cursor=cursor, first=log_.first, end=log_.end))
        return state

    def attach_known(self, shard: str, known: dict[str, pubsub_pb2.Subscription], every: bool = False) -> None:
        """Attaches each subscription of known (etcd's, of the shard's topic), taking its
        record. Once all are attached under this leadership, a call (unless every)
        compares their names and attaches nothing: the leader's GC round does this each
        second, and attaching each of 10,000 subscriptions again was a fifth of the
        leader's samples while one message went to them all (bench fanout_streams).
        A changed record comes through attach() of its own."""
        log_ = self.restored(shard)
        if not every and log_.known_attached == log_.leader_epoch and known.keys() <= log_.subscriptions.keys():
            return
        for record in list(known.values()):
            self.attach(shard, record)
        log_.known_attached = log_.leader_epoch

    def detach(self, shard: str, subscription: str) -> None:
        log_ = self._logs.shards.get(shard)
        if log_ is None or log_.subscriptions.pop(subscription, None) is None:
            return
        log_.state_version += 1
        log_.removed[subscription] = log_.state_version
        if len(log_.removed) > MAX_REMOVED:  # the oldest half goes: a follower behind them gets everything
            forgotten = sorted(log_.removed.items(), key=lambda item: item[1])[:MAX_REMOVED // 2]
            for name, _ in forgotten:
                del log_.removed[name]
            log_.removed_floor = forgotten[-1][1]
        log_.notify()
        log.info("subscription detached", extra=fields(shard=shard, subscription=subscription))

    def subscription(self, shard: str, subscription: str) -> SubscriptionState:
        log_ = self.restored(shard) if shard in self._logs.shards else None
        state = log_.subscriptions.get(subscription) if log_ else None
        if state is None:
            raise errors.NotFound(f"subscription {subscription!r} is not attached to shard {shard}")
        return state

    # -- saved form: leading, snapshots, followers ----------------------------------

    def lead(self, shard: str, epoch: int) -> None:
        """This node leads the shard from now on: its delivery state comes out of the
        saved (or received) form."""
        log_ = self.restored(shard)
        log_.leader_epoch, log_.saved_version = epoch, -1
        log_.removed.clear()
        log_.removed_floor = log_.state_version

    def restored(self, shard: str) -> ShardLog:
        log_ = self._logs.shard(shard)
        if log_.saved is not None:
            log_.subscriptions = {}
            for saved in log_.saved.values():
                state = log_.subscriptions[saved.name] = SubscriptionState(saved.name, saved.cursor)
                errors_ = saved.lease_errors
                for lease in keys.parse_lease_states(saved.leases):
                    state.lease(lease.seq, Lease(lease.deadline_ms, lease.attempt, lease.delivered_ms,
                                                 errors_.get(lease.seq, "")))
                for dead in saved.dead_letters:
                    state.dead_letters[dead.seq] = dead
                state.redrives.update(saved.redrives)
                log_.touch(state)
            log_.saved = None
        return log_

    @staticmethod
    def _saved_form(state: SubscriptionState) -> storage_pb2.SubscriptionState:
        if state.saved_version != state.version:
            pack = keys.lease_state
            state.saved = storage_pb2.SubscriptionState(
                name=state.name, cursor=state.cursor, dead_letters=state.dead_letters.values(),
                leases=b"".join(pack(seq, lease.deadline_ms, lease.delivered_ms, lease.attempt)
                                for seq, lease in state.leases.items()),
                lease_errors={seq: lease.last_error for seq, lease in state.leases.items() if lease.last_error},
                redrives=state.redrives)
            state.saved_version = state.version
        return state.saved

    def save_state(self, shard: str) -> None:
        """Saves (without sync) the leader's delivery state: the subscriptions changed
        since it last did, and the stamp."""
        log_ = self.restored(shard)
        if log_.saved_version == log_.state_version:
            return
        batch, layout = self._records.batch(), log_.layout
        for state in log_.subscriptions.values():
            if state.version > log_.saved_version:
                key = layout.subscription_state(state.name)  # sealed: dead letters' and leases' errors
                batch.put(key, keys.seal_value(self._records.ring, key,
                                               keys.subscription_state_value(self._saved_form(state))))
        for name, version in log_.removed.items():
            if version > log_.saved_version and name not in log_.subscriptions:
                batch.delete(layout.subscription_state(name))
        if log_.saved_version < log_.removed_floor:  # removals forgotten: delete what is not kept
            for key, _ in self._records.prefixed(layout.subscription_state_prefix):
                if keys.subscription_of_state(key) not in log_.subscriptions:
                    batch.delete(key)
        log_.saved_version = log_.state_version
        log_.state_stamp = (log_.leader_epoch, log_.state_version)
        batch.put(layout.state, keys.delivery_state_value(
            storage_pb2.DeliveryState(epoch=log_.leader_epoch, version=log_.state_version)))
        self._records.write(batch)

    def state_since(self, shard: str, version: int) -> StateUpdate:
        """What a follower that has the leader's state of version (-1: none) lacks."""
        log_ = self.restored(shard)
        stamp = (log_.leader_epoch, log_.state_version)
        states = log_.subscriptions.values()
        if version < log_.removed_floor:
            return StateUpdate([self._saved_form(s) for s in states], [], False, stamp)
        return StateUpdate([self._saved_form(s) for s in states if s.version > version],
                           [name for name, at in log_.removed.items() if at > version], True, stamp)

    def import_states(self, shard: str, update: StateUpdate) -> None:
        """A follower takes the leader's delivery state as it is (and leaves it in
        that form until it leads)."""
        log_ = self._logs.shard(shard)
        layout, batch = log_.layout, self._records.batch()
        if not update.delta:
            saved = {}
            batch.delete_range(layout.subscription_state_prefix, keys.prefix_end(layout.subscription_state_prefix))
        elif log_.saved is not None:
            saved = log_.saved
        else:  # taken into memory meanwhile (a status read): back to the saved form
            saved = {state.name: self._saved_form(state) for state in log_.subscriptions.values()}
        for state in update.states:
            value = keys.subscription_state_value(state)
            key = layout.subscription_state(state.name)
            batch.put(key, keys.seal_value(self._records.ring, key, value))
            saved[state.name] = keys.parse_subscription_state(value)  # a copy: the request is not kept alive
        for name in update.removed:
            saved.pop(name, None)
            batch.delete(layout.subscription_state(name))
        log_.state_stamp = update.stamp
        batch.put(layout.state, keys.delivery_state_value(
            storage_pb2.DeliveryState(epoch=update.stamp[0], version=update.stamp[1])))
        self._records.write(batch)
        log_.saved, log_.subscriptions = saved, {}

    # -- delivery (leader) ------------------------------------------------------

    async def pull(self, shard: str, pulls: list[Pull], wait_ms: int) -> dict[str, Pulled]:
        """For each subscription, leases deliverable messages: expired leases first,
        then new committed entries. Waits up to wait_ms for a first one. Returns what
        each subscription with messages got."""
        loop = asyncio.get_running_loop()
        give_up = loop.time() + wait_ms / 1000
        while True:
            if shard not in self._logs.shards:
                raise errors.NotFound(f"shard {shard} is not kept here")
            log_ = self.restored(shard)
            now = now_ms()
            batch = self._records.batch()
            messages: dict[int, bytes | None] = {}  # each entry read once for all subscriptions
            pulled = {}
            soonest = None
            for index, (name, max_messages, ack_deadline_ms) in enumerate(pulls):
                if index and not index % PULL_YIELD_EVERY:
                    if len(batch):  # leases recorded before anything else may touch these subscriptions
                        self._records.write(batch)
                        batch = self._records.batch()
                    await asyncio.sleep(0)
                state = log_.subscriptions.get(name)
                if state is None:
                    continue
                if max_messages:
                    records = len(batch)
                    leased = self._lease_deliverable(log_, state, max_messages, now, now + ack_deadline_ms,
                                                     messages, batch)
                    if leased.received or len(batch) > records:
                        log_.touch(state)
                else:  # a watch leases nothing (and asks for every idle subscription of the topic)
                    leased = NOTHING_LEASED
                due = state.next_deadline()
                ready = (state.cursor < log_.commit and len(state.leases) < MAX_LEASES) or \
                    (due is not None and due <= now)
                if leased.received or (ready and not max_messages):
                    pulled[name] = leased._replace(ready=ready)
                elif due is not None:
                    soonest = due if soonest is None else min(soonest, due)
            if len(batch):
                self._records.write(batch)
            remaining = give_up - loop.time()
            if pulled or remaining <= 0 or self._draining:
                return pulled
            if soonest is not None:
                remaining = min(remaining, max(0.0, (soonest - now_ms()) / 1000))
            try:
                await asyncio.wait_for(log_.changed.wait(), remaining)
            except TimeoutError:
                pass

    def _lease_deliverable(self, log_: ShardLog, state: SubscriptionState, max_messages: int, now: int,
                           deadline: int, messages: dict[int, bytes | None], batch: Batch) -> Pulled:
        """Synchronous on purpose: nothing else runs between choosing messages and
        recording their leases, so two pulls never lease one message twice."""
        raws: list[bytes] = []
        ack_ids: list[str] = []
        name, policy, read = state.name, state.policy, self._logs.message
        ack_id_of = AckId.encoder(log_.partition, name)
        while len(raws) < max_messages and (due := state.next_deadline()) is not None and due <= now:
            _, seq = heapq.heappop(state.deadlines)
            message = read(log_, seq, messages)
            previous = state.leases[seq]
            if message is None:  # expired by retention meanwhile
                del state.leases[seq]
                log_.touch(state)
                continue
            attempts = previous.attempt
            if attempts and not previous.last_error:  # neither acked nor nacked in time
                log_.layout.put_delivery(batch, log_.layout.delivery(seq, name, previous.delivered_ms, attempts),
                                         keys.delivery_record(0, pubsub_pb2.EXPIRED))
            if policy.exhausted(attempts):
                self.dead_letter(log_, state, seq, message, previous, now)
                continue
            state.lease(seq, Lease(deadline + policy.backoff_ms(attempts + 1), attempts + 1, now))
            ack_id = ack_id_of(seq)
            raws.append(wire.received_message(ack_id, message, attempts + 1))
            ack_ids.append(ack_id)
        room = min(max_messages - len(raws), MAX_LEASES - len(state.leases))
        if room > 0 and state.cursor < log_.commit:
            first_deadline = deadline + policy.backoff_ms(1)
            seq, room = state.cursor, len(raws) + room
            while seq < log_.commit and len(raws) < room:
                message = read(log_, seq, messages)
                if message is not None:  # else an epoch marker, or corrupted
                    state.lease(seq, Lease(first_deadline, 1, now))
                    ack_id = ack_id_of(seq)
                    raws.append(wire.received_message(ack_id, message, 1))
                    ack_ids.append(ack_id)
                seq += 1
            state.cursor = seq
        if raws:
            state.delivered.add(len(raws), now)
        return Pulled(raws, ack_ids)

    def dead_letter(self, log_: ShardLog, state: SubscriptionState, seq: int, message: bytes, lease: Lease,
                    now: int) -> bool:
        """Queues the message for its dead-letter topic; the lease stays (pushed out)
        until it has moved there (see DeadLetters.bury), so a failure to move it only
        delays it. False when the queue is full: the lease comes due again in
        DEAD_LETTER_BUSY_MS, and is queued then."""
        error = lease.last_error or "not acknowledged within the ack deadline"
        try:
            self.dead_letters.put_nowait(DeadLetter(log_.name, state.name, seq,
                                                    pubsub_pb2.PubsubMessage.FromString(message).message_id,
                                                    lease.attempt, state.policy.dead_letter_topic, error))
            queued, wait_ms = True, DEAD_LETTER_RETRY_MS
        except asyncio.QueueFull:
            queued, wait_ms = False, DEAD_LETTER_BUSY_MS
        state.lease(seq, Lease(now + wait_ms, lease.attempt, lease.delivered_ms, error))
        log_.touch(state)
        return queued

    # -- acks ---------------------------------------------------------------------

    def _seqs(self, log_: ShardLog, subscription: str, ack_ids: list[str]) -> list[int]:
        return self._seqs_by_subscription(log_, subscription, ack_ids).get(subscription, [])

    @staticmethod
    def _seqs_by_subscription(log_: ShardLog, subscription: str, ack_ids: list[str]) -> dict[str, list[int]]:
        """The entries the ack ids name, by subscription; all of subscription's
        unless that is "" (any)."""
        seqs: dict[str, list[int]] = {}
        for group, named in ack_seqs_by_pair(ack_ids).items():
            if group.partition != log_.partition or (subscription and group.subscription != subscription):
                raise errors.InvalidArgument(f"ack id {AckId(group.partition, named[0], group.subscription).encode()!r} "
                                             f"is not of {subscription or 'this shard'!r} partition {log_.partition}")
            seqs[group.subscription] = named  # one group a subscription: this shard's partition
        return seqs

    def acknowledge(self, shard: str, subscription: str, ack_ids: list[str]) -> int:
        """Ends the leases; returns how many were in flight (others were acked already).
        Subscription "": each ack id's own (a sender merged acks of several), and
        those of a subscription no longer attached are dropped."""
        if subscription:
            self.subscription(shard, subscription)  # NOT_FOUND unless attached
        elif shard not in self._logs.shards:
            return 0
        log_ = self.restored(shard)
        by_subscription = self._seqs_by_subscription(log_, subscription, ack_ids)
        batch = self._records.batch()
        layout, acked_record = log_.layout, keys.delivery_record(now_ms(), pubsub_pb2.ACKED)
        delivery_key, put_delivery = layout.delivery, layout.put_delivery
        acked = 0
        for name, seqs in by_subscription.items():
            state = log_.subscriptions.get(name)
            if state is None:
                continue
            acked_before = acked
            for seq in seqs:
                lease = state.leases.pop(seq, None)
                if lease is not None:
                    put_delivery(batch, delivery_key(seq, name, lease.delivered_ms, lease.attempt), acked_record)
                    acked += 1
            if acked > acked_before:
                log_.touch(state)
        if acked:
            self._records.write(batch)
        return acked

    def modify_ack_deadline(self, shard: str, subscription: str, ack_ids: list[str], ack_deadline_ms: int) -> None:
        """Moves the deadline of in-flight messages; 0 is a nack. A nack of subscription
        "": each ack id's own (a sender merged those of streams gone), and those of a
        subscription no longer attached are dropped."""
        if ack_deadline_ms == 0:
            if subscription:
                self.nack(shard, subscription, ack_ids)
            elif shard in self._logs.shards:
                attached = self.restored(shard).subscriptions
                for name, ids in ack_ids_by_subscription(ack_ids).items():
                    if name in attached:
                        self.nack(shard, name, ids)
            return
        state = self.subscription(shard, subscription)
        log_ = self._logs.shards[shard]
        deadline = now_ms() + ack_deadline_ms
        for seq in self._seqs(log_, subscription, ack_ids):
            lease = state.leases.get(seq)
            if lease is not None:
                state.lease(seq, Lease(deadline, lease.attempt, lease.delivered_ms, lease.last_error))
                log_.touch(state)

    def nack(self, shard: str, subscription: str, ack_ids: list[str], delay_ms: int | None = None,
             terminal: bool = False, reason: str = "", deferred: bool = False) -> None:
        """Gives in-flight messages back: deliverable again after delay_ms (by default
        the retry backoff), or, when terminal, queued for the dead-letter topic now.
        Deferred: after delay_ms, as the same attempt again (no failure: a rate-limit
        delay), recorded as DEFERRED."""
        state = self.subscription(shard, subscription)
        log_ = self._logs.shards[shard]
        if terminal and not state.policy.dead_letter_topic:
            raise errors.FailedPrecondition(f"subscription {subscription!r} has no dead-letter topic")
        if deferred and (terminal or delay_ms is None):
            raise errors.InvalidArgument("a deferred nack takes a delay_ms and is not terminal")
        seqs = self._seqs(log_, subscription, ack_ids)
        if terminal and (room := self.dead_letters.maxsize - self.dead_letters.qsize()) < len(seqs):
            raise errors.ResourceExhausted(
                f"{self.dead_letters.qsize()} dead-letterings are waiting to move, room for {room} more; "
                "nothing was nacked: retry later")
        batch = self._records.batch()
        now = now_ms()
        error = reason or ("nacked as terminal" if terminal else "nacked")
        for seq in seqs:
            lease = state.leases.get(seq)
            if lease is None:
                continue
            outcome = pubsub_pb2.DEFERRED if deferred else pubsub_pb2.NACKED
            key = log_.layout.delivery(seq, subscription, lease.delivered_ms, lease.attempt)
            log_.layout.put_delivery(batch, key, keys.error_record(self._records.ring, key, now, outcome, error))
            if deferred:  # the next delivery counts as this attempt again (its outcome is recorded: no expiry)
                state.lease(seq, Lease(now + delay_ms, lease.attempt - 1, lease.delivered_ms, error or "deferred"))
                continue
            if terminal and (message := self._logs.message(log_, seq, {})) is not None:
                self.dead_letter(log_, state, seq, message, Lease(0, lease.attempt, lease.delivered_ms, error), now)
                continue
            wait = state.policy.backoff_ms(lease.attempt) if delay_ms is None else delay_ms
            state.lease(seq, Lease(now + wait, lease.attempt, lease.delivered_ms, error))
        if len(batch):
            self._records.write(batch)
            log_.touch(state)
            log_.notify()

    def seek(self, shard: str, subscription: str, time_ms: int | None, floor: int) -> Seeked:
        """Moves the subscription's cursor to the first entry appended at or after
        time_ms (None: the commit point, a purge), though back no lower than floor
        (retention.Retention.seek_floor: what every replica still keeps). Its leases
        end: the entries from the cursor on are delivered again, those below the
        time count as acknowledged, as in Pub/Sub's Seek; those between (a seek back
        stopped short at floor) are delivered again at once. Dead letters stay, for
        listing and redrive."""
        state = self.subscription(shard, subscription)
        log_ = self._logs.shards[shard]
        target = log_.commit if time_ms is None else min(self._logs.first_seq_at_or_after(log_, time_ms),
                                                         log_.commit)
        cursor = target if target >= state.cursor else max(target, min(floor, state.cursor))
        batch, now = self._records.batch(), now_ms()
        for seq, lease in state.leases.items():
            if lease.attempt and not lease.last_error:  # in flight (a nacked attempt has its outcome)
                log_.layout.put_delivery(batch, log_.layout.delivery(seq, subscription, lease.delivered_ms,
                                                                     lease.attempt),
                                         keys.delivery_record(now, pubsub_pb2.SEEK))
        if len(batch):
            self._records.write(batch)
        owed = [seq for seq in state.leases if target <= seq < cursor]  # whole: leased
        state.cursor, state.leases, state.deadlines = cursor, {}, []
        for seq in owed:
            state.lease(seq, Lease(now, 0, 0))
        log_.touch(state)
        log_.notify()
        log.info("subscription seek", extra=fields(shard=shard, subscription=subscription, cursor=cursor,
                                                   target=target, commit=log_.commit))
        # Going back to the first entry kept may have gone past messages deleted below it.
        gone = time_ms is not None and target == log_.first and 0 < log_.trimmed_ms >= time_ms
        return Seeked(cursor, target < cursor or gone)

    def stop_waiting(self) -> None:
        """Makes waiting pulls return now, so the server's grace period is not spent on them."""
        self._draining = True
        for log_ in self._logs.shards.values():
            log_.notify()
