"""What a subscription owes on a shard, for describe and cluster status: read off
the delivery state the leader keeps anyway (cursor, leases, dead letters) and a
ring of per-second delivery counts, never by counting the log, so it stays cheap
on a shard of millions of messages. Per subscription it costs two RocksDB reads
(plus about log2(entries) per leader change among its undelivered entries, see
markers_between), one read for the oldest message, and a pass over its leases
(at most delivery.MAX_LEASES: 1.6 ms; the backlog alone, for cluster status,
skips it).

- backlog: the entries from the cursor to the commit that are messages (not
  epoch markers), plus the leases (in flight, or waiting for a redelivery or
  their move to the dead-letter topic);
- in flight: the leases delivered and neither acknowledged nor nacked, before
  their ack deadline;
- oldest unacknowledged: the publish time of the lowest seq still owed;
- delivered in the last minute: the subscription's RateWindow;
- dead letters: the records kept.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable, NamedTuple

from gen.notifymesh.internal.v1 import storage_pb2
from notifymesh.clock import now_ms
from storage.interfaces import LogStore, SubscriptionStore

if TYPE_CHECKING:
    from storage.delivery import SubscriptionState

RATE_WINDOW_S = 60


class RateWindow:
    """Counts per second over the last RATE_WINDOW_S seconds, in a ring of that many
    counters: bounded whatever the rate. A clock that steps back counts into the
    newest second."""
    __slots__ = ("counts", "second")

    def __init__(self):
        self.counts, self.second = [0] * RATE_WINDOW_S, 0

    def _advance(self, now: int) -> None:
        second = now // 1000
        if second <= self.second:
            return
        for passed in range(self.second + 1, min(second, self.second + RATE_WINDOW_S) + 1):
            self.counts[passed % RATE_WINDOW_S] = 0
        self.second = second

    def add(self, count: int, now: int) -> None:
        self._advance(now)
        self.counts[self.second % RATE_WINDOW_S] += count

    def total(self, now: int) -> int:
        """What was added in the last RATE_WINDOW_S seconds (this one included)."""
        self._advance(now)
        return sum(self.counts)


class SubscriptionStats(NamedTuple):
    """One subscription's numbers on one shard (see the module's docstring)."""
    subscription: str
    backlog: int
    in_flight: int
    oldest_unacked_age_ms: int | None  # since the oldest message owed was published; None: none
    delivered_last_minute: int
    dead_letters: int


class EntryInfo(NamedTuple):
    """What the numbers need of one log entry."""
    epoch: int
    is_message: bool  # else an epoch marker (or a stub)
    append_ms: int  # a message's publish time

    @classmethod
    def of(cls, entry: storage_pb2.StoredMessage) -> EntryInfo:
        return cls(entry.epoch, entry.HasField("message"), entry.append_ms)


Entry = Callable[[int], EntryInfo | None]  # the entry at seq, None if gone or corrupted


def markers_between(entry: Entry, start: int, stop: int) -> int:
    """How many entries in [start, stop) hold no message: every leader's first
    entry of its epoch is such a marker, and epochs only grow along the log, so
    past the one at start they are where the epoch changes, found by bisection:
    two reads without a leader change, about log2(stop - start) more per change.
    (Stubs, the other message-less entries, are below every cursor.)"""
    if start >= stop:
        return 0

    def epoch(seq: int) -> int:
        found = entry(seq)
        return found.epoch if found is not None else -1

    first = entry(start)
    count = int(first is not None and not first.is_message)
    low, low_epoch, last_epoch = start, first.epoch if first is not None else -1, epoch(stop - 1)
    while low_epoch < last_epoch:
        high = stop - 1  # low's epoch < high's: the first entry of a newer epoch is in (low, high]
        while high - low > 1:
            mid = (low + high) // 2
            if epoch(mid) > low_epoch:
                high = mid
            else:
                low = mid
        changed = entry(high)  # its epoch is newer than low's, so it was read
        count += int(not changed.is_message)
        low, low_epoch = high, changed.epoch
    return count


def undelivered(state: SubscriptionState, commit: int, entry: Entry) -> int:
    """The messages from the subscription's cursor to the shard's commit."""
    return commit - state.cursor - markers_between(entry, state.cursor, commit) if state.cursor < commit else 0


def backlog(state: SubscriptionState, commit: int, entry: Entry) -> int:
    """of_subscription's backlog alone, without the pass over the leases."""
    return undelivered(state, commit, entry) + len(state.leases)


def of_subscription(state: SubscriptionState, commit: int, entry: Entry, now: int) -> SubscriptionStats:
    """The subscription's numbers on the shard whose commit is commit (on its leader)."""
    waiting = undelivered(state, commit, entry)
    oldest_seq = None
    if waiting:
        oldest_seq = state.cursor
        while (found := entry(oldest_seq)) is not None and not found.is_message and oldest_seq + 1 < commit:
            oldest_seq += 1  # past markers: one a leader change
    # A delivery's lease runs to its ack deadline plus the retry backoff (when the
    # message is delivered again): in flight until the ack deadline. About 80 ns a
    # lease (1.6 ms for MAX_LEASES), the backoff computed once per attempt number.
    in_flight, backoffs, backoff_ms = 0, {}, state.policy.backoff_ms
    for lease in state.leases.values():
        if (attempt := lease.attempt) and not lease.last_error:
            if (backoff := backoffs.get(attempt)) is None:
                backoff = backoffs[attempt] = backoff_ms(attempt)
            if lease.deadline_ms - backoff > now:
                in_flight += 1
    if state.leases:
        lowest_leased = min(state.leases)
        oldest_seq = lowest_leased if oldest_seq is None else min(oldest_seq, lowest_leased)
    oldest_age = None
    if oldest_seq is not None and (found := entry(oldest_seq)) is not None and found.is_message:
        oldest_age = max(0, now - found.append_ms)
    return SubscriptionStats(state.name, waiting + len(state.leases), in_flight, oldest_age,
                             state.delivered.total(now), len(state.dead_letters))


class Stats:
    def __init__(self, logs: LogStore, subscriptions: SubscriptionStore):
        self._logs, self._subscriptions = logs, subscriptions

    def describe(self, shard: str, names: list[str]) -> list[SubscriptionStats]:
        """The numbers of those of the named subscriptions attached to the shard."""
        log_, entry, now = self._subscriptions.restored(shard), self._entry_reader(shard), now_ms()
        return [of_subscription(log_.subscriptions[name], log_.commit, entry, now)
                for name in names if name in log_.subscriptions]

    def backlogs(self, shard: str) -> dict[str, int]:
        """Each attached subscription's backlog, by name."""
        log_, entry = self._subscriptions.restored(shard), self._entry_reader(shard)
        return {name: backlog(state, log_.commit, entry) for name, state in sorted(log_.subscriptions.items())}

    def _entry_reader(self, shard: str) -> Entry:
        """What the numbers need of the shard's entries, each read once in a call (the
        subscriptions share the one before the commit); a few dozen bytes each."""
        read: dict[int, EntryInfo | None] = {}

        def entry(seq: int) -> EntryInfo | None:
            if seq not in read:
                found = self._logs.entry(shard, seq)
                read[seq] = EntryInfo.of(found) if found is not None else None
            return read[seq]
        return entry
