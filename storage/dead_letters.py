"""Dead letters: messages out of delivery attempts. Delivery state queues them
(Deliveries.dead_letter); the storage service publishes each to its
subscription's dead-letter topic and then buries it here, where it is kept for
listing and redrive: by a person (RedriveDeadLetters), or by the subscription's
redrive rules, which the leader's sweep applies."""

import re

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
                                              last_error=dead.error, dead_letter_message_id=dead_letter_message_id,
                                              redrives=state.redrives.pop(dead.seq, 0))
        state.dead_letters[dead.seq] = record
        if len(state.dead_letters) > MAX_DEAD_LETTER_RECORDS:
            del state.dead_letters[min(state.dead_letters)]
        log_ = self._logs.shards[dead.shard]
        key = log_.layout.delivery(dead.seq, dead.subscription, lease.delivered_ms, dead.attempts)
        log_.layout.put_delivery(self._records, key, keys.error_record(self._records.ring, key, record.dead_ms,
                                                                       pubsub_pb2.DEAD_LETTER, dead.error))
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
                    dead_letter_message_id=record.dead_letter_message_id, redrives=record.redrives))
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

    def redrive_by_rules(self, shard: str) -> int:
        """Sends back the dead letters a rule of their subscription's record matches
        (the first rule whose reason is found in the last error decides), once they
        have been dead for its `after`, fewer than its max_redrives times; drops
        the redrive counts of leases acknowledged since. Returns how many went back."""
        log_ = self._logs.shards.get(shard)
        if log_ is None:
            return 0
        now, redriven = now_ms(), 0
        for state in log_.subscriptions.values():
            # Without dead letters and redrive counts there is nothing to do: checked first,
            # as this runs each second over every subscription of the shard (10,000 of them
            # were a tenth of the leader's samples while their streams attached).
            if not state.dead_letters and not state.redrives:
                continue
            gone = [seq for seq in state.redrives if seq not in state.leases]
            for seq in gone:
                del state.redrives[seq]
            rules = state.record.redrive_rules if state.record is not None else ()
            if not rules:
                if gone:
                    log_.touch(state)
                continue
            due = [record for record in state.dead_letters.values() if (rule := matching(rules, record.last_error))
                   and record.redrives < rule.max_redrives and record.dead_ms + rule.after.ToMilliseconds() <= now]
            for record in due:
                del state.dead_letters[record.seq]
                state.lease(record.seq, Lease(now, 0, 0))
                state.redrives[record.seq] = record.redrives + 1
            if due or gone:
                log_.touch(state)
            redriven += len(due)
        if redriven:
            log_.notify()
        return redriven

    def sweep(self, shard: str) -> None:
        """Moves due, exhausted leases to the dead-letter queue even while no
        subscriber pulls, and applies the redrive rules."""
        log_ = self._logs.shards.get(shard)
        if log_ is None:
            return
        self.redrive_by_rules(shard)
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


def matching(rules, last_error: str) -> pubsub_pb2.RedriveRule | None:
    """The first rule whose reason is found in last_error (patterns are checked when
    stored; re caches the compiled ones)."""
    for rule in rules:
        if re.search(rule.reason, last_error):
            return rule
    return None
