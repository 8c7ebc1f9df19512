"""Garbage collection of the log, on the leader: deletes what every subscription
has moved past, and what is older than the topic's retention (expiring it for
subscriptions that never took it). Followers drop what the leader no longer
keeps (replication sends them its first entry)."""

from notifymesh.clock import now_ms
from storage.delivery import SubscriptionState
from storage.interfaces import LogStore, SubscriptionStore
from storage.log import ShardLog


class Retention:
    def __init__(self, logs: LogStore, subscriptions: SubscriptionStore):
        self._logs, self._subscriptions = logs, subscriptions

    def collect(self, shard: str, retention_ms: int | None) -> int:
        """Deletes what no subscription still needs, and what is past retention;
        returns how many entries were freed."""
        if shard not in self._logs.shards:
            return 0
        log_ = self._subscriptions.restored(shard)
        if retention_ms is not None:
            expired_below = min(self._logs.first_seq_at_or_after(log_, now_ms() - retention_ms), log_.commit)
            for state in log_.subscriptions.values():
                _expire(log_, state, expired_below)
        low = min((s.low_watermark() for s in log_.subscriptions.values()), default=log_.commit)
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
