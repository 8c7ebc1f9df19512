"""Dead letters: messages out of delivery attempts. Delivery state queues them
(Deliveries.dead_letter); the storage service publishes each to its
subscription's dead-letter topic and then buries it here, where it is kept for
listing and redrive."""

from gen.notifymesh.internal.v1 import storage_pb2
from gen.notifymesh.v1 import pubsub_pb2
from notifymesh.clock import now_ms, timestamp
from storage import keys
from storage.delivery import MAX_DEAD_LETTER_RECORDS, DeadLetter, Lease
from storage.interfaces import LogStore, Records, SubscriptionStore


class DeadLetters:
    def __init__(self, logs: LogStore, subscriptions: SubscriptionStore, records: Records):
        self._logs, self._subscriptions, self._records = logs, subscriptions, records

    def move_key(self, dead: DeadLetter) -> str | None:
        """The idempotency key of the dead-lettering's move, None when there is
        nothing to move (acknowledged or redriven meanwhile). It names the attempt
        that ended the message's delivery by its delivery time, which a retried move
        of that dead-lettering keeps (its lease is pushed out, not replaced) and a
        redrive changes (the next attempt is delivered anew): each dead-lettering
        moves once, however often it is tried."""
        state = self._subscriptions.subscription(dead.shard, dead.subscription)
        lease = state.leases.get(dead.seq)
        if lease is None or lease.attempt != dead.attempts:
            return None
        return f"dead-letter/{dead.subscription}/{dead.message_id}/{lease.delivered_ms}"

    def message(self, dead: DeadLetter) -> pubsub_pb2.PubsubMessage | None:
        """The message to move (None: gone meanwhile, with its shard or by retention)."""
        log_ = self._logs.shards.get(dead.shard)
        message = self._logs.message(log_, dead.seq, {}) if log_ is not None else None
        return pubsub_pb2.PubsubMessage.FromString(message) if message is not None else None

    def bury(self, dead: DeadLetter, dead_letter_message_id: str) -> None:
        """The message is in the dead-letter topic: its lease becomes a dead-letter
        record, kept for listing and redrive."""
        state = self._subscriptions.subscription(dead.shard, dead.subscription)
        lease = state.leases.pop(dead.seq, None)
        if lease is None:
            return  # acknowledged meanwhile, or buried already
        record = storage_pb2.DeadLetterRecord(seq=dead.seq, delivery_attempts=dead.attempts, dead_ms=now_ms(),
                                              last_error=dead.error, dead_letter_message_id=dead_letter_message_id)
        state.dead_letters[dead.seq] = record
        if len(state.dead_letters) > MAX_DEAD_LETTER_RECORDS:
            del state.dead_letters[min(state.dead_letters)]
        log_ = self._logs.shards[dead.shard]
        self._records.put(log_.layout.delivery(dead.seq, dead.subscription, lease.delivered_ms, dead.attempts),
                          keys.delivery_record(record.dead_ms, pubsub_pb2.DEAD_LETTER, dead.error))
        log_.touch(state)

    def list(self, shard: str, subscription: str, limit: int,
             after_seq: int = -1) -> storage_pb2.StorageListDeadLettersResponse:
        """Up to limit dead letters with a seq above after_seq, lowest first, with
        their seqs (a page's position) and whether more are kept after them."""
        state = self._subscriptions.subscription(shard, subscription)
        listed = storage_pb2.StorageListDeadLettersResponse()
        for seq in sorted(seq for seq in state.dead_letters if seq > after_seq):
            if len(listed.seqs) == limit:
                listed.more = True
                break
            record, entry = state.dead_letters[seq], self._logs.entry(shard, seq)
            if entry is not None:
                listed.dead_letters.append(pubsub_pb2.DeadLetter(
                    message=entry.message, delivery_attempts=record.delivery_attempts,
                    dead_letter_time=timestamp(record.dead_ms), last_error=record.last_error,
                    dead_letter_message_id=record.dead_letter_message_id))
                listed.seqs.append(seq)
        return listed

    def redrive(self, shard: str, subscription: str) -> int:
        """Makes the subscription's dead letters deliverable now, to it alone, with
        their attempts counted from zero again."""
        state = self._subscriptions.subscription(shard, subscription)
        log_ = self._logs.shards[shard]
        now = now_ms()
        redriven = len(state.dead_letters)
        for seq in state.dead_letters:
            state.lease(seq, Lease(now, 0, 0))
        state.dead_letters.clear()
        if redriven:
            log_.touch(state)
            log_.notify()
        return redriven

    def sweep(self, shard: str) -> None:
        """Moves due, exhausted leases to the dead-letter queue even while no
        subscriber pulls."""
        log_ = self._logs.shards.get(shard)
        if log_ is None:
            return
        now = now_ms()
        for state in log_.subscriptions.values():
            if not state.policy.max_attempts:
                continue
            for seq, lease in list(state.leases.items()):
                if lease.deadline_ms <= now and state.policy.exhausted(lease.attempt):
                    message = self._logs.message(log_, seq, {})
                    if message is not None and not self._subscriptions.dead_letter(log_, state, seq, message,
                                                                                   lease, now):
                        return  # the queue is full: the rest wait for a later sweep
