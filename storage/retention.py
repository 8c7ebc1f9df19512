"""Garbage collection of the log, on the leader: deletes what every subscription
has moved past, and what is older than the topic's retention (expiring it for
subscriptions that never took it). Followers drop what the leader no longer
keeps (replication sends them its first entry).

The log is trimmed from its start, so an entry still owed to a subscription
(a lease that is never acknowledged, a dead letter kept for redrive) keeps every
later one. Below the lowest cursor, what no subscription needs is therefore
replaced by a stub (the entry without its message), so such an entry pins its
own message and the stubs' few bytes, not all later messages. Each replica
stubs by the delivery state it holds: a follower's may be older than its
leader's, but an entry below the cursor that no subscription needs never becomes
needed again (acks, expiry and dead-lettering only release entries; a redrive
turns a dead letter, pinned, into a lease, pinned), so an older state keeps more,
never less.

A seek (Deliveries.seek) moves a cursor back, which that rule does not allow
unless the entries it goes back over are still whole on every replica. So a seek
goes back no lower than seek_floor: the lowest cursor of the shard's
subscriptions (below it, entries may be stubs or gone), or, for a topic with
retain_acked (a window W, at most its retention), the first entry appended within
W. Collection and stubbing keep every entry appended within W + RETAIN_MARGIN_MS
on every replica, whatever the cursors: the margin covers clock skew between
replicas and a follower's delivery state lagging the leader's (about 0.5 s), so
what a seek moved back over is whole on a follower until its state has the new
cursor. (A follower cut off from its leader for longer than the margin may stub
entries a seek has since made owed again; enabling retain_acked on a topic keeps
what is acknowledged from then on.) Thus the lowest cursor never falls below what
any replica has stubbed, and the rule above holds.

What it deletes or stubs leaves its identity behind (id, publish time, attributes:
keys.ShardKeys.identities for a chunk collected, keys.ShardKeys.collected for a
stub), for its status while its delivery log is kept; the delivery log's
collection deletes both."""

from notifymesh.clock import now_ms
from storage import keys
from storage.delivery import SubscriptionState
from storage.interfaces import LogStore, Records, SubscriptionStore
from storage.log import ShardLog

# Entries deleted per collect() at most: recording their identities cost about
# 5-9 us each on the event loop when each was read back (20,000 took 100-180 ms on
# a loaded 2-core machine), 2-3 us from the identities kept in memory
# (ShardLog.identities), so a chunk holds it for at most 10-20 ms; the storage
# service collects chunk after chunk, yielding between them, until a shard is done.
COLLECT_CHUNK = 2_000
# With a topic's retain_acked window, what collection and stubbing keep beyond it
# (a seek reaches only within the window): clock skew between replicas, and a
# follower's delivery state a little behind its leader's (module docstring).
RETAIN_MARGIN_MS = 60_000


class Retention:
    def __init__(self, logs: LogStore, subscriptions: SubscriptionStore, records: Records):
        self._logs, self._subscriptions, self._records = logs, subscriptions, records

    def collect(self, shard: str, retention_ms: int | None, retain_acked_ms: int | None = None) -> int:
        """Deletes what no subscription still needs, and what is past retention, up
        to COLLECT_CHUNK entries, though nothing within the retain_acked window
        (plus RETAIN_MARGIN_MS); returns how many entries were freed."""
        if shard not in self._logs.shards:
            return 0
        log_ = self._subscriptions.restored(shard)
        expired_below = None if retention_ms is None else \
            min(self._logs.first_seq_at_or_after(log_, now_ms() - retention_ms), log_.commit)
        kept_from = self._kept_from(log_, retain_acked_ms)
        # A round looks at every subscription of the shard, each second: when nothing it
        # goes by changed since a round that freed nothing, this one would free nothing
        # either. (Idle, 10,000 subscriptions' rounds were a sixth of the leader's samples.)
        if log_.collected_at == (log_.state_version, log_.commit, log_.first, expired_below, kept_from):
            return 0
        if expired_below is not None:
            for state in log_.subscriptions.values():
                _expire(log_, state, expired_below)
        low = min(min((s.low_watermark() for s in log_.subscriptions.values()), default=log_.commit),
                  log_.first + COLLECT_CHUNK, kept_from)
        keep_identities(self._records, self._logs, log_, min(low, log_.commit))
        freed = self._logs.trim(shard, low)
        if not freed:
            log_.collected_at = (log_.state_version, log_.commit, log_.first, expired_below, kept_from)
        return freed

    def stub(self, shard: str, retain_acked_ms: int | None = None, settled_below: int | None = None) -> int:
        """Stubs the entries below the lowest cursor that no subscription needs, by
        the delivery state this replica holds, but none within the retain_acked
        window (plus RETAIN_MARGIN_MS), and (settled_below) none at or above that
        either, going over COLLECT_CHUNK entries at most; returns how many it went over."""
        log_ = self._logs.shards.get(shard)
        below = lowest_cursor(log_) if log_ is not None else None
        if below is None:
            return 0
        if settled_below is not None:
            below = min(below, settled_below)
        start = max(log_.first, log_.stubbed_to)
        stop = min(below, log_.commit, start + COLLECT_CHUNK, self._kept_from(log_, retain_acked_ms))
        if start >= stop:  # the common case, every round: nothing new below the cursors
            return 0
        batch = self._records.batch()
        replaced = self._logs.stub(log_, start, stop, pinned_below(log_, stop), batch)
        for seq, message in replaced:
            key = log_.layout.collected(seq)
            batch.put(key, keys.seal_value(self._records.ring, key, keys.collected_value(message)))
        self._records.write(batch)
        log_.stubbed_to = stop
        return stop - start

    def seek_floor(self, shard: str, retention_ms: int | None, retain_acked_ms: int | None) -> int:
        """The lowest entry a seek may move a cursor of the shard back to (the
        module docstring says why): whole on every replica, and within retention."""
        log_ = self._subscriptions.restored(shard)
        floor = min((s.cursor for s in log_.subscriptions.values()), default=log_.commit)
        now = now_ms()
        if retain_acked_ms:
            floor = min(floor, self._logs.first_seq_at_or_after(log_, now - retain_acked_ms))
        if retention_ms is not None:
            floor = max(floor, self._logs.first_seq_at_or_after(log_, now - retention_ms))
        # What this replica stubbed already (before the window was enabled, say) stays out of reach.
        return max(floor, log_.first, log_.stubbed_to)

    def _kept_from(self, log_: ShardLog, retain_acked_ms: int | None) -> int:
        """The first entry the retain_acked window keeps (log_.end without one)."""
        if not retain_acked_ms:
            return log_.end
        return self._logs.first_seq_at_or_after(log_, now_ms() - retain_acked_ms - RETAIN_MARGIN_MS)


def _states(log_: ShardLog):
    """The delivery state this replica goes by: the leader's in memory, or as saved
    or received (a follower's); None when it has none."""
    if log_.saved:
        return list(log_.saved.values())
    if log_.saved is None and log_.subscriptions:
        return list(log_.subscriptions.values())
    return None


def lowest_cursor(log_: ShardLog) -> int | None:
    """Every entry from here on may still be delivered to some subscription."""
    states = _states(log_)
    return min(state.cursor for state in states) if states else None


def pinned_below(log_: ShardLog, below: int) -> frozenset[int]:
    """The entries below below still owed to a subscription: leased, or dead letters."""
    pinned = set()
    for state in _states(log_) or ():
        if isinstance(state, SubscriptionState):
            pinned.update(state.leases, state.dead_letters)
        else:  # the saved form
            pinned.update(lease.seq for lease in keys.parse_lease_states(state.leases))
            pinned.update(record.seq for record in state.dead_letters)
    return frozenset(seq for seq in pinned if seq < below)


def _expire(log_: ShardLog, state: SubscriptionState, below: int) -> None:
    """The subscription gives up the entries below (past retention)."""
    expired = [seq for seq in state.leases if seq < below]
    dead = [seq for seq in state.dead_letters if seq < below]
    if expired or dead or state.cursor < below:
        for seq in expired:
            del state.leases[seq]
        for seq in dead:
            del state.dead_letters[seq]
        state.cursor = max(state.cursor, below)
        log_.touch(state)


def keep_identities(records: Records, logs: LogStore, log_: ShardLog, below: int) -> None:
    """Records the identity of each message of log_ below below (its id, publish
    time and attributes, not its data), for message status once it is deleted:
    retention does so on the leader, and each follower before it trims; all of
    them in one value (keys.identities_value), sealed once."""
    identity = logs.identity
    # Most were written a second ago: their identities are in memory (ShardLog.identities).
    kept = [(seq, value) for seq in range(log_.first, below) if (value := identity(log_, seq)) is not None]
    if kept:  # else only epoch markers
        last = kept[-1][0]
        key = log_.layout.identities(last)
        records.put(key, keys.seal_value(records.ring, key, keys.identities_value(kept, last)))
