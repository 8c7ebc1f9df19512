"""The rules of replication as plain functions, without I/O: who wins an election,
whether a follower takes a leader's batch, how far a leader may commit, and how
the replica set changes. The election, leader, follower and placement modules
apply them; tests/unit/test_replication_rules.py checks them without etcd or gRPC.

Positions are seqs: `end` is one past a log's last entry, a commit index c means
the entries below c are committed.
"""

from typing import Collection, Mapping, NamedTuple, Protocol, Sequence

from notifymesh.contracts import Candidacy


def quorum(replicas: Collection) -> int:
    return len(replicas) // 2 + 1


# -- elections -------------------------------------------------------------------------


def choose_leader(announced: Mapping[str, Candidacy], replicas: Sequence[str]) -> str | None:
    """The node that should lead, among the announcements (node -> Candidacy) of
    the members of the replica set; None while fewer than a quorum of them have
    announced. An announcement of a node outside the replica set (a stale one, or
    a learner's) does not count.

    The most advanced log wins (the epoch of its last entry, then its end); among
    equal logs, the newest delivery state; then the node placed first in replicas
    (the shard's placement: consistent hashing orders each shard's nodes its own
    way, so a fresh cluster's leaders spread over its nodes; the highest node id,
    the tie-break before, gave a fresh 3-node mesh's storage-3 41-43 of 64 shards
    and storage-1 none). Any majority overlaps the majority that acknowledged a
    write, so the most advanced log of a majority holds every acknowledged entry."""
    members = {node: position for node, position in announced.items() if node in replicas}
    if len(members) < quorum(replicas):
        return None
    placed = {node: rank for rank, node in enumerate(replicas)}
    return max(members, key=lambda node: (members[node].last_epoch, members[node].end, members[node].state,
                                          -placed[node]))


# -- the follower's checks of a leader's batch -------------------------------------------


def leader_deposed(batch_epoch: int, led_epoch: int | None) -> bool:
    """A batch of a newer epoch reaches this node while it leads the shard
    (led_epoch; None when it does not): it must step down."""
    return led_epoch is not None and batch_epoch > led_epoch


def epoch_refused(batch_epoch: int, known_epoch: int, led_epoch: int | None) -> bool:
    """Whether a follower refuses a batch: its epoch is older than the newest it
    has seen (known_epoch), or this node still leads the shard (led_epoch, after
    leader_deposed was acted on; None when it does not lead it)."""
    return batch_epoch < known_epoch or led_epoch is not None


def newest_epoch(known_epoch: int, led_epoch: int | None) -> int:
    """The epoch a refusal reports, so that an older leader steps down."""
    return max(known_epoch, led_epoch if led_epoch is not None else 0)


class EpochsOf(Protocol):
    """The epochs of a local log's entries (the storage engine has this)."""

    def epoch_at(self, shard: str, seq: int) -> int | None: ...


def resend_from(log: EpochsOf, shard: str, start: int, prev_epoch: int, first: int, end: int) -> int | None:
    """Whether a batch starting at start, whose previous entry has prev_epoch (0:
    not given), fits the local log [first, end): None when it does; otherwise the
    seq the leader should send from. A batch beyond our end, or below our first,
    leaves a gap: from our end. A previous entry of another epoch means our tail
    diverges: from the start of that entry's epoch run."""
    if start < first or start > end:
        return end
    if start - 1 >= first and prev_epoch and log.epoch_at(shard, start - 1) != prev_epoch:
        return first_of_epoch(log, shard, start - 1, first)
    return None


def first_of_epoch(log: EpochsOf, shard: str, seq: int, first: int) -> int:
    """The first seq of the run of entries with the same epoch as seq (epochs
    never decrease along a log), so one round trip skips a whole stale epoch."""
    epoch = log.epoch_at(shard, seq)
    low, high = first, seq
    while low < high:
        mid = (low + high) // 2
        if (log.epoch_at(shard, mid) or 0) < (epoch or 0):
            low = mid + 1
        else:
            high = mid
    return low


# -- the leader's commit ------------------------------------------------------------------


def commit_index(commit: int, written: int, follower_matches: list[int], replicas: Collection[str],
                 marker: int) -> int | None:
    """The leader's new commit index, from its current one, what it has synced
    itself (written) and what the other members of the replica set have on disk
    (follower_matches); None when fewer positions than a quorum are known.

    Followers may have synced entries this node is still syncing; it delivers from
    its own disk, so it counts as committed only what it has written. Only once an
    entry of its own epoch (the marker and after) is on a majority is all before
    it committed: an older epoch's tail is never taken for committed. The commit
    never moves backwards."""
    positions = sorted([written, *follower_matches], reverse=True)
    needed = quorum(replicas)
    if len(positions) < needed:
        return None
    majority_has = min(positions[needed - 1], written)
    if majority_has > marker and majority_has > commit:
        return majority_has
    return commit


# -- check-quorum ----------------------------------------------------------------------------


def quorum_lost(heard: Mapping[str, float], replicas: Collection[str], node: str, now: float,
                lease_s: float) -> bool:
    """Check-quorum: whether the leader node has not heard from a majority of its
    replica set (itself counted) within lease_s, so it must step down and let a
    replica that still reaches a majority lead. heard: when each other node last
    answered (monotonic seconds); a node outside the replica set (a learner) does
    not count."""
    recent = sum(1 for other in replicas if other == node or now - heard.get(other, float("-inf")) <= lease_s)
    return recent < quorum(replicas)


# -- placement ------------------------------------------------------------------------------


class ReplicaSwap(NamedTuple):
    replicas: list[str]   # the new replica set
    added: str
    removed: str | None   # None: the set grew to its target size


def replica_swap(replicas: Sequence[str], wanted: Collection[str], live: Collection[str], ready: Sequence[str],
                 target: int) -> ReplicaSwap | None:
    """The next replica set: the first caught-up learner (ready) in, and out one
    member the ring no longer wants, a dead one first (then by node id). None when
    there is nothing to swap in, or nobody to swap out and the set is full."""
    if not ready:
        return None
    removable = sorted((n for n in replicas if n not in wanted), key=lambda n: (n in live, n))
    if not removable and len(replicas) >= target:
        return None
    removed = removable[0] if removable else None
    new = [n for n in replicas if removed is None or n != removed] + [ready[0]]
    return ReplicaSwap(new, ready[0], removed)
