"""The replication rules (storage/replication_rules.py) as plain functions, and the
follower and placement parts driven with in-memory fakes: no etcd, no gRPC."""

from gen.notifymesh.internal.v1 import storage_pb2
from notifymesh.contracts import Candidacy, LeaderRecord
from storage.election import Announcements, Election
from storage.follower import Follower
from storage.leader import Leadership
from storage.replication_rules import (choose_leader, commit_index, epoch_refused, first_of_epoch, leader_deposed,
                                       newest_epoch, quorum, quorum_lost, replica_swap, resend_from)

REPLICAS = ["storage-1", "storage-2", "storage-3"]
SHARD = "orders/0"


def at(end: int, last_epoch: int, state: tuple[int, int] = (0, 0)) -> Candidacy:
    return Candidacy(end, last_epoch, state)


# -- quorum and elections ------------------------------------------------------------


def test_quorum_is_a_strict_majority():
    assert [quorum(["n"] * size) for size in range(1, 7)] == [1, 2, 2, 3, 3, 4]


def test_no_leader_while_fewer_than_a_quorum_announced():
    assert choose_leader({"storage-1": at(10, 3)}, REPLICAS) is None
    assert choose_leader({}, REPLICAS) is None


def test_a_quorum_elects_the_most_advanced_log():
    announced = {"storage-1": at(10, 3), "storage-2": at(12, 3)}
    assert choose_leader(announced, REPLICAS) == "storage-2"


def test_the_epoch_of_the_last_entry_outranks_the_length_of_the_log():
    """A longer log ending in an older epoch holds a deposed leader's unacknowledged tail."""
    announced = {"storage-1": at(50, 2), "storage-2": at(12, 3)}
    assert choose_leader(announced, REPLICAS) == "storage-2"


def test_among_equal_logs_the_newest_delivery_state_wins():
    announced = {"storage-1": at(10, 3, (3, 9)), "storage-2": at(10, 3, (3, 7)), "storage-3": at(10, 3, (2, 40))}
    assert choose_leader(announced, REPLICAS) == "storage-1"


def test_ties_go_to_the_node_placed_first():
    """Each shard's placement orders its nodes its own way: a fresh cluster's leaders spread."""
    announced = {"storage-1": at(10, 3), "storage-3": at(10, 3), "storage-2": at(10, 3)}
    assert choose_leader(announced, ["storage-2", "storage-3", "storage-1"]) == "storage-2"
    assert choose_leader(announced, ["storage-1", "storage-2", "storage-3"]) == "storage-1"
    del announced["storage-1"]  # not among the quorum that announced: the next placed
    assert choose_leader(announced, ["storage-1", "storage-3", "storage-2"]) == "storage-3"


def test_an_announcement_from_outside_the_replica_set_is_ignored():
    """A stale announcement (a node since moved off, or a learner) neither counts
    towards the quorum nor wins, however advanced its log."""
    announced = {"storage-1": at(10, 3), "storage-9": at(99, 7)}
    assert choose_leader(announced, REPLICAS) is None
    announced["storage-2"] = at(8, 3)
    assert choose_leader(announced, REPLICAS) == "storage-1"


class FakeElectionStore:
    def __init__(self, others: dict[str, Candidacy]):
        self.announced = dict(others)
        self.claims: list[LeaderRecord] = []

    async def announce(self, shard, node, candidacy, lease):
        self.announced[node] = candidacy
        return 1

    async def announcements(self, shard):
        return Announcements(dict(self.announced), {node: 1 for node in self.announced})

    async def withdraw(self, shard, node, leader_epoch):
        self.announced.pop(node, None)
        return True

    async def claim(self, shard, record, lease, basis):
        self.claims.append(record)
        return 41

    async def delete_leader(self, shard, epoch):
        pass

    async def leader_epoch(self, shard):
        return None


class Position:
    def __init__(self, end, last_epoch, state_stamp=(0, 0)):
        self.end, self.last_epoch, self.state_stamp = end, last_epoch, state_stamp


class Positions:
    def __init__(self, position):
        self.position = position

    def shard(self, name):
        return self.position


class Registration:
    addr, lease, valid_until = "127.0.0.1:1", object(), float("inf")


async def test_campaign_claims_only_when_this_node_is_best_and_withdraws_after():
    store = FakeElectionStore({"storage-2": at(10, 3)})
    behind = Election(store, Positions(Position(9, 3)), "storage-1")
    assert await behind.campaign(SHARD, REPLICAS, Registration()) is None
    assert store.claims == [] and "storage-1" in store.announced
    await behind.withdraw(SHARD)
    assert "storage-1" not in store.announced

    ahead = Election(store, Positions(Position(11, 3)), "storage-3")
    assert await ahead.campaign(SHARD, REPLICAS, Registration()) == 41
    assert store.claims == [LeaderRecord("storage-3", "127.0.0.1:1")]


# -- the follower's epoch checks ---------------------------------------------------------


def test_an_older_epoch_is_refused_and_told_the_newest():
    assert epoch_refused(4, known_epoch=5, led_epoch=None)
    assert newest_epoch(5, None) == 5


def test_the_current_or_a_newer_epoch_is_accepted():
    assert not epoch_refused(5, known_epoch=5, led_epoch=None)
    assert not epoch_refused(6, known_epoch=5, led_epoch=None)
    assert not epoch_refused(1, known_epoch=0, led_epoch=None)


def test_a_leader_refuses_batches_of_its_own_or_an_older_epoch():
    assert not leader_deposed(5, led_epoch=5) and epoch_refused(5, known_epoch=5, led_epoch=5)
    assert not leader_deposed(3, led_epoch=5) and epoch_refused(3, known_epoch=5, led_epoch=5)
    assert newest_epoch(2, 5) == 5


def test_a_newer_epoch_deposes_the_leader_and_is_then_accepted():
    assert leader_deposed(6, led_epoch=5)
    assert not leader_deposed(6, led_epoch=None)
    assert not epoch_refused(6, known_epoch=5, led_epoch=None)  # once stepped down


class EpochLog:
    """A local log: the epoch of each entry, from first on."""

    def __init__(self, epochs: list[int], first: int = 0):
        self.epochs, self.first = epochs, first
        self.lookups = 0

    @property
    def end(self) -> int:
        return self.first + len(self.epochs)

    def epoch_at(self, shard, seq):
        self.lookups += 1
        return self.epochs[seq - self.first] if self.first <= seq < self.end else None


def test_a_batch_that_continues_the_log_fits():
    log = EpochLog([1, 1, 2])
    assert resend_from(log, SHARD, 3, 2, log.first, log.end) is None
    assert resend_from(log, SHARD, 1, 1, log.first, log.end) is None  # overlaps: rewritten from 1


def test_a_batch_beyond_the_end_or_below_the_first_is_sent_again_from_our_end():
    log = EpochLog([1, 1, 2], first=10)
    assert resend_from(log, SHARD, 14, 2, log.first, log.end) == 13
    assert resend_from(log, SHARD, 9, 1, log.first, log.end) == 13


def test_a_batch_without_a_previous_epoch_is_not_checked():
    log = EpochLog([1, 1, 2])
    assert resend_from(log, SHARD, 3, 0, log.first, log.end) is None
    assert log.lookups == 0


def test_a_divergent_tail_is_skipped_a_whole_epoch_at_a_time():
    """Our entries 3..5 are of epoch 2, the leader's entry 5 is of epoch 4: the leader
    sends from 3, the first of our stale epoch, and the write truncates the rest."""
    log = EpochLog([1, 1, 1, 2, 2, 2])
    assert resend_from(log, SHARD, 6, 4, log.first, log.end) == 3
    assert first_of_epoch(log, SHARD, 5, log.first) == 3
    assert first_of_epoch(log, SHARD, 2, log.first) == 0
    assert first_of_epoch(EpochLog([7, 7], first=20), SHARD, 21, 20) == 20


# -- the commit rule ------------------------------------------------------------------------


def test_commit_is_what_a_majority_has():
    assert commit_index(0, written=10, follower_matches=[7, 3], replicas=REPLICAS, marker=0) == 7
    assert commit_index(0, written=10, follower_matches=[12, 3], replicas=REPLICAS, marker=0) == 10


def test_commit_never_exceeds_what_this_node_has_written():
    """Followers may have synced what the leader is still syncing: it delivers from its own disk."""
    assert commit_index(0, written=0, follower_matches=[3, 3], replicas=REPLICAS, marker=0) == 0
    assert commit_index(0, written=2, follower_matches=[3, 3], replicas=REPLICAS, marker=0) == 2


def test_commit_never_moves_backwards():
    assert commit_index(9, written=10, follower_matches=[5, 3], replicas=REPLICAS, marker=0) == 9


def test_nothing_commits_until_an_entry_of_this_epoch_is_on_a_majority():
    """The marker (this epoch's first entry) is at 5: entries below it are an older
    epoch's, committed only together with it."""
    assert commit_index(0, written=6, follower_matches=[5, 5], replicas=REPLICAS, marker=5) == 0
    assert commit_index(0, written=6, follower_matches=[6, 0], replicas=REPLICAS, marker=5) == 6


def test_no_decision_with_fewer_positions_than_a_quorum():
    five = REPLICAS + ["storage-4", "storage-5"]
    assert commit_index(0, written=10, follower_matches=[10], replicas=five, marker=0) is None
    assert commit_index(0, written=10, follower_matches=[10, 0], replicas=five, marker=0) == 0
    assert commit_index(0, written=10, follower_matches=[10, 10], replicas=five, marker=0) == 10


# -- placement --------------------------------------------------------------------------------


def test_a_caught_up_learner_replaces_a_dead_replica_first():
    swap = replica_swap(["a", "b", "c"], wanted=["a", "d", "e"], live=["a", "b", "d"], ready=["d"], target=3)
    assert swap is not None and swap.replicas == ["a", "b", "d"] and swap.removed == "c" and swap.added == "d"


def test_no_swap_without_a_ready_learner_or_when_full_and_all_wanted():
    assert replica_swap(["a", "b", "c"], ["a", "d", "e"], ["a", "b", "c", "d"], [], 3) is None
    assert replica_swap(["a", "b", "c"], ["a", "b", "c"], ["a", "b", "c", "d"], ["d"], 3) is None
    grown = replica_swap(["a", "b"], ["a", "b", "c"], ["a", "b", "c"], ["c"], 3)
    assert grown is not None and grown.replicas == ["a", "b", "c"] and grown.removed is None


# -- check-quorum ---------------------------------------------------------------------------


def test_a_leader_that_heard_from_a_majority_within_the_lease_keeps_leading():
    heard = {"storage-2": 97.5, "storage-3": 90.0}  # storage-2 answered 2.5 s ago
    assert not quorum_lost(heard, REPLICAS, "storage-1", now=100.0, lease_s=3.0)


def test_a_leader_that_heard_from_no_majority_within_the_lease_steps_down():
    heard = {"storage-2": 96.9, "storage-3": 90.0}  # 3.1 s and 10 s ago: only itself counts
    assert quorum_lost(heard, REPLICAS, "storage-1", now=100.0, lease_s=3.0)
    assert quorum_lost({}, REPLICAS, "storage-1", now=100.0, lease_s=3.0)  # never heard of


def test_check_quorum_counts_only_the_replica_set():
    """A learner's answers (it is fed, not a member) do not keep a leader in place."""
    heard = {"learner-9": 99.9, "storage-2": 80.0}
    assert quorum_lost(heard, REPLICAS, "storage-1", now=100.0, lease_s=3.0)
    assert not quorum_lost({}, ["storage-1"], "storage-1", now=100.0, lease_s=3.0)  # a single replica


def test_five_replicas_need_two_followers_heard():
    five = REPLICAS + ["storage-4", "storage-5"]
    assert quorum_lost({"storage-2": 99.0}, five, "storage-1", now=100.0, lease_s=3.0)
    assert not quorum_lost({"storage-2": 99.0, "storage-5": 98.0}, five, "storage-1", now=100.0, lease_s=3.0)


# -- the follower part with fakes ---------------------------------------------------------------


class FakeFollowerLog:
    """The engine as the follower uses it, with the entries' epochs only."""

    def __init__(self, epochs: list[int]):
        self.epochs = EpochLog(epochs)
        self.commit = 0
        self.writes: list[int] = []
        self.seen_epoch = 0
        self.table = False  # a topic's shard, not the replicated table's

    first = property(lambda self: self.epochs.first)
    end = property(lambda self: self.epochs.end)
    last_epoch = property(lambda self: self.epochs.epoch_at(SHARD, self.end - 1) or 0)

    def shard(self, name):  # the ShardLog, as far as the follower reads it
        return self

    def epoch_at(self, shard, seq):
        return self.epochs.epoch_at(shard, seq)

    def reset(self, shard, first):
        self.epochs = EpochLog([], first)

    def save_epoch(self, shard, epoch):
        self.seen_epoch = max(self.seen_epoch, epoch)

    async def write_replicated(self, shard, start, entries):
        self.writes.append(start)
        self.epochs.epochs[start - self.first:] = [storage_pb2.StoredMessage.FromString(raw).epoch
                                                   for raw in entries.raw]

    def advance_commit(self, shard, commit):
        self.commit = max(self.commit, min(commit, self.end))

    def import_states(self, shard, update):
        pass

    def trim(self, shard, first):
        return 0


class FakeLeading:
    def __init__(self, led=None):
        self.led = dict(led or {})
        self.stepped_down: list[str] = []

    async def step_down(self, shard, reason, resign=False):
        self.led.pop(shard, None)
        self.stepped_down.append(shard)


class FakeCandidate:
    def __init__(self):
        self.withdrawn: list[str] = []

    async def withdraw(self, shard, leader_epoch=None):
        self.withdrawn.append(shard)
        return True


def batch(epoch: int, start: int, prev_epoch: int, first: int = 0, commit: int = 0) -> storage_pb2.ReplicateRequest:
    return storage_pb2.ReplicateRequest(leader="storage-1", shards=[storage_pb2.ShardEntries(
        topic="orders", partition=0, epoch=epoch, start=start, prev_epoch=prev_epoch, first=first, commit=commit)])


def follower(engine, leading=None, known=None):
    part = Follower(engine, leading or FakeLeading(), FakeCandidate(), dict(known or {}), {})
    part.open()
    return part


async def test_the_follower_refuses_an_older_epoch_and_reports_the_newest():
    engine = FakeFollowerLog([1, 1])
    response = await follower(engine, known={SHARD: 5}).replicate(batch(epoch=4, start=2, prev_epoch=1))
    [result] = response.shards
    assert not result.ok and result.newer_epoch == 5 and result.end == 2 and engine.writes == []


async def test_the_follower_steps_down_for_a_newer_epoch_and_takes_its_batch():
    engine, leading = FakeFollowerLog([1, 1]), FakeLeading({SHARD: Leadership(SHARD, 3, REPLICAS, marker=1)})
    part = follower(engine, leading, known={SHARD: 3})
    [result] = (await part.replicate(batch(epoch=4, start=2, prev_epoch=1, commit=2))).shards
    assert leading.stepped_down == [SHARD] and result.ok and result.end == 2 and engine.commit == 2
    assert part._known_epoch[SHARD] == 4


async def test_the_follower_answers_a_divergent_tail_with_the_start_of_its_epoch():
    engine = FakeFollowerLog([1, 1, 2, 2])
    [result] = (await follower(engine).replicate(batch(epoch=5, start=4, prev_epoch=3))).shards
    assert not result.ok and result.end == 2 and result.newer_epoch == 0


async def test_the_follower_overwrites_from_where_the_batch_starts():
    """After a divergence answer the leader sends from there: the stale tail goes."""
    engine = FakeFollowerLog([1, 1, 2, 2])
    request = batch(epoch=5, start=2, prev_epoch=1, commit=3)
    shard_entries = request.shards[0]
    shard_entries.entries.append(storage_pb2.StoredMessage(epoch=5).SerializeToString())
    shard_entries.message_ids.append("id")
    shard_entries.dedup_keys.append("")
    shard_entries.dedup_until_ms.append(0)
    shard_entries.last_entry_epoch = 5
    [result] = (await follower(engine).replicate(request)).shards
    assert result.ok and engine.writes == [2] and engine.epochs.epochs == [1, 1, 5]
    assert result.end == 3 and engine.commit == 3
