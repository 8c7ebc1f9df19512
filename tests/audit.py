"""The partition checker's accounting (tests/partitions.py feeds it): what it
concludes from the publishes and deliveries it saw and from who led. Pure, so
that tests/unit/test_checker_audit.py can show each conclusion fail on
synthetic inputs (two nodes leading one epoch, a lost message, ...)."""

from dataclasses import dataclass
from typing import Iterable, NamedTuple

from notifymesh.contracts import MessageId

MOST_LISTED = 10  # epochs listed by name in a report when not led by exactly one node; the rest counted


class Leading(NamedTuple):
    """A storage node's claim to lead a partition in an epoch (its `leading` log line)."""
    node: str
    partition: int
    epoch: int


class EpochLeaders(NamedTuple):
    """Who led one (partition, epoch): the nodes that claimed it, with etcd's grant
    (the node whose leader key etcd created at that revision; None: none was)."""
    partition: int
    epoch: int
    leaders: tuple[str, ...]  # the claimants and the granted node
    granted: str | None
    acknowledged: int  # acknowledged messages whose entry carries this epoch

    def one_leader(self) -> bool:
        return len(self.leaders) == 1 and self.granted is not None


@dataclass
class EpochAudit:
    epochs_led: int  # (partition, epoch) pairs some node claimed or that hold acknowledged entries
    leaders_per_epoch: dict[int, int]  # over the epochs with acknowledged writes: leaders -> how many epochs
    epochs_not_one_leader: list[dict]  # any epoch not led by exactly one granted node (at most MOST_LISTED)
    epochs_not_one_leader_count: int
    acknowledged_without_entry: int  # acknowledged ids no replica's log holds (must be 0)
    acknowledged_in_two_epochs: int  # acknowledged ids whose entries on the replicas differ in epoch

    @property
    def one_leader_per_epoch(self) -> bool:
        """Also false when an acknowledged message's epoch is unknown: its leader was not checked."""
        return self.epochs_not_one_leader_count == 0 and self.acknowledged_without_entry == 0


class Attribution(NamedTuple):
    """The acknowledged messages by the epoch of their entries."""
    counts: dict[tuple[int, int], int]  # (partition, epoch) -> acknowledged messages whose entry carries it
    without_entry: int
    in_two_epochs: int

    def epochs(self, claims: Iterable[Leading]) -> set[tuple[int, int]]:
        """Every (partition, epoch) to check: those claimed and those holding acknowledged entries."""
        return self.counts.keys() | {(claim.partition, claim.epoch) for claim in claims}


def attribute(stored_epochs: dict[str, set[int]], acknowledged: Iterable[str]) -> Attribution:
    """stored_epochs: message id -> the epochs of its entries on the replicas."""
    counts: dict[tuple[int, int], int] = {}
    without_entry = in_two = 0
    for message_id in acknowledged:
        epochs = stored_epochs.get(message_id)
        if not epochs:
            without_entry += 1
            continue
        in_two += len(epochs) > 1
        partition = MessageId.parse(message_id).partition
        for epoch in epochs:
            counts[(partition, epoch)] = counts.get((partition, epoch), 0) + 1
    return Attribution(counts, without_entry, in_two)


def audit_epochs(claims: list[Leading], grants: dict[tuple[int, int], str | None],
                 attribution: Attribution) -> EpochAudit:
    """An entry carries the epoch of the leader that appended it; a retry of it
    (same id) may be acknowledged by a later leader, whose epoch holds no entry of
    it: so every epoch claimed is checked, not only those holding acknowledged
    entries; one holding some must have had its one leader."""
    claimants: dict[tuple[int, int], set[str]] = {}
    for claim in claims:
        claimants.setdefault((claim.partition, claim.epoch), set()).add(claim.node)
    epochs = []
    for key in sorted(attribution.epochs(claims)):
        granted = grants.get(key)
        leaders = claimants.get(key, set()) | ({granted} if granted is not None else set())
        epochs.append(EpochLeaders(*key, tuple(sorted(leaders)), granted, attribution.counts.get(key, 0)))
    histogram: dict[int, int] = {}
    for epoch in epochs:
        if epoch.acknowledged:
            histogram[len(epoch.leaders)] = histogram.get(len(epoch.leaders), 0) + 1
    bad = [epoch._asdict() for epoch in epochs if not epoch.one_leader()]
    return EpochAudit(len(epochs), histogram, bad[:MOST_LISTED], len(bad), attribution.without_entry,
                      attribution.in_two_epochs)


@dataclass(slots=True)
class Delivered:
    payload: bytes
    times: int
    highest_attempt: int


class Ledger:
    """Every acknowledged publish and every delivery of one checker run.

    Unavailability of a partition: the longest time in which no publish stored in
    it was acknowledged (message ids name their partition), from one
    acknowledgement in it to the next, or to the end of publishing. A failed or
    timed-out publish counts for no partition by itself, since the client cannot
    tell where it went: its time falls into the gap of the partition that
    acknowledged nothing. A batch spanning partitions (keyed messages) ends the gap
    of every partition its ids name. The checker publishes batches without keys,
    which the frontend sends whole to one partition, and runs one publishing loop
    per partition, so that a loop stuck on an unavailable partition does not keep
    the others from being acknowledged and inflate their gaps."""

    def __init__(self, partitions: int, now: float):
        self.acknowledged: dict[str, bytes] = {}  # message id -> payload
        self.delivered: dict[str, Delivered] = {}  # message id -> its deliveries
        self.failed = 0
        self.errors: dict[str, int] = {}
        self.redelivered = 0  # a later attempt: an ack lost or late, a stream broken (the mesh counted it)
        self.forgotten = 0  # not a later attempt: the delivery state lost, e.g. at a failover
        self.started = self._last_ack = now
        self.longest_stall_s = 0.0
        self.longest_stall_ended = now  # when it ended, to tell which fault it followed
        self._last_ack_in = {p: now for p in range(partitions)}
        self.unavailable_s = {p: 0.0 for p in range(partitions)}

    def acknowledge(self, ids: list[str], payloads: list[bytes], now: float) -> None:
        self.acknowledged.update(zip(ids, payloads))
        self._ended_stall(now)
        self._last_ack = now
        for partition in {MessageId.parse(message_id).partition for message_id in ids}:
            self._ended_gap(partition, now)

    def fail(self, count: int, error: str) -> None:
        self.failed += count
        self.errors[error] = self.errors.get(error, 0) + 1

    def deliver(self, message_id: str, payload: bytes, attempt: int) -> None:
        seen = self.delivered.get(message_id)
        if seen is None:
            self.delivered[message_id] = Delivered(payload, 1, attempt)
            return
        seen.times += 1
        if attempt > seen.highest_attempt:
            self.redelivered += 1
            seen.highest_attempt = attempt
        else:
            self.forgotten += 1

    def publishing_ended(self, now: float) -> None:
        self._ended_stall(now)
        for partition in self._last_ack_in:
            self._ended_gap(partition, now)

    def _ended_stall(self, now: float) -> None:
        if now - self._last_ack > self.longest_stall_s:
            self.longest_stall_s, self.longest_stall_ended = now - self._last_ack, now

    def _ended_gap(self, partition: int, now: float) -> None:
        last = self._last_ack_in.setdefault(partition, now)
        self.unavailable_s[partition] = max(self.unavailable_s.get(partition, 0.0), now - last)
        self._last_ack_in[partition] = now

    def lost(self) -> set[str]:
        return self.acknowledged.keys() - self.delivered.keys()

    def stored_twice(self) -> int:
        """Message ids beyond the first under which one payload was acknowledged or
        delivered: a publish stored twice (a retry the mesh did not recognise).
        Every payload the checker publishes is unique, so none is expected."""
        ids_of: dict[bytes, set[str]] = {}
        for message_id, payload in self.acknowledged.items():
            ids_of.setdefault(payload, set()).add(message_id)
        for message_id, delivered in self.delivered.items():
            ids_of.setdefault(delivered.payload, set()).add(message_id)
        return sum(len(ids) - 1 for ids in ids_of.values())

    def duplicates_by_cause(self) -> dict[str, int]:
        return {"redelivered": self.redelivered, "forgotten": self.forgotten, "stored_twice": self.stored_twice()}
