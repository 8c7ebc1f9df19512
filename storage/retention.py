"""Garbage collection of the log, on the leader: deletes what every subscription
has moved past, and what is older than the topic's retention (expiring it for
subscriptions that never took it). Followers drop what the leader no longer
keeps (replication sends them its first entry).

What it deletes leaves its identity behind (keys.ShardKeys.collected: id, publish
time, attributes), for its status while its delivery log is kept; the delivery
log's collection deletes both."""

from notifymesh.clock import now_ms
from storage import keys
from storage.delivery import SubscriptionState
from storage.interfaces import LogStore, Records, SubscriptionStore
from storage.log import ShardLog

# Entries deleted per collect() at most: recording their identities costs about
# 5-9 us each on the event loop (20,000 took 100-180 ms on a loaded 2-core
# machine), so a chunk holds it for 10-20 ms; the storage service collects
# chunk after chunk, yielding between them, until a shard is done.
COLLECT_CHUNK = 2_000


class Retention:
    def __init__(self, logs: LogStore, subscriptions: SubscriptionStore, records: Records):
        self._logs, self._subscriptions, self._records = logs, subscriptions, records

    def collect(self, shard: str, retention_ms: int | None) -> int:
        """Deletes what no subscription still needs, and what is past retention, up
        to COLLECT_CHUNK entries; returns how many entries were freed."""
        if shard not in self._logs.shards:
            return 0
        log_ = self._subscriptions.restored(shard)
        if retention_ms is not None:
            expired_below = min(self._logs.first_seq_at_or_after(log_, now_ms() - retention_ms), log_.commit)
            for state in log_.subscriptions.values():
                _expire(log_, state, expired_below)
        low = min(min((s.low_watermark() for s in log_.subscriptions.values()), default=log_.commit),
                  log_.first + COLLECT_CHUNK)
        keep_identities(self._records, self._logs, log_, min(low, log_.commit))
        return self._logs.trim(shard, low)


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
        log_.state_version += 1


def keep_identities(records: Records, logs: LogStore, log_: ShardLog, below: int) -> None:
    """Records the identity of each message of log_ below below (its id, publish
    time and attributes, not its data), for message status once it is deleted:
    retention does so on the leader, and each follower before it trims."""
    batch, read, messages = records.batch(), logs.message, {}
    for seq in range(log_.first, below):
        # Most were delivered a moment ago: read from the log's recent entries in memory.
        if (message := read(log_, seq, messages)) is not None:  # else an epoch marker
            batch.put(log_.layout.collected(seq), keys.collected_value(message))
        messages.clear()
    if len(batch):
        records.write(batch)
