"""Replication safety on a real RocksDB, without gRPC or etcd: what a follower
remembers across a restart, what a truncation removes, how big a leader's
request grows, and when a leader cut off from its followers steps down."""

import pytest

from gen.notifymesh.internal.v1 import storage_pb2
from gen.notifymesh.v1 import pubsub_pb2
from notifymesh import errors
from storage.engine import StorageEngine
from storage.follower import Follower
from storage.log import Entries
from storage.replication import Replication

SHARD = "orders/0"


class NoLeading:
    led: dict = {}

    async def step_down(self, shard, reason, resign=False):
        pass


class NoCandidacy:
    async def withdraw(self, shard, leader_epoch=None):
        return True


def marker(epoch: int) -> storage_pb2.StoredMessage:
    return storage_pb2.StoredMessage(epoch=epoch)


def message(epoch: int, data: bytes, message_id: str, key: str = "") -> storage_pb2.StoredMessage:
    return storage_pb2.StoredMessage(message=pubsub_pb2.PubsubMessage(data=data, message_id=message_id),
                                     epoch=epoch, dedup_key=key, dedup_until_ms=2**62 if key else 0)


def request(epoch: int, start: int, prev_epoch: int, stored=(), commit: int = 0) -> storage_pb2.ReplicateRequest:
    entries = Entries.of(list(stored))
    return storage_pb2.ReplicateRequest(leader="storage-1", shards=[storage_pb2.ShardEntries(
        topic="orders", partition=0, epoch=epoch, start=start, prev_epoch=prev_epoch, entries=entries.raw,
        message_ids=entries.ids, dedup_keys=entries.dedup_keys, dedup_until_ms=entries.dedup_until_ms,
        last_entry_epoch=entries.last_epoch, commit=commit)])


def open_engine(tmp_path) -> StorageEngine:
    engine = StorageEngine(tmp_path / "follower", "storage-2")
    engine.start()
    return engine


def follower_of(engine: StorageEngine) -> Follower:
    """A follower as a fresh process has it: nothing in memory but what the engine recovered."""
    part = Follower(engine, NoLeading(), NoCandidacy(), {}, {})
    part.open()
    return part


# -- finding 1: a restarted follower remembers the epochs it has seen ------------------------


async def test_a_restarted_follower_refuses_an_epoch_older_than_its_last_entry(tmp_path):
    engine = open_engine(tmp_path)
    [taken] = (await follower_of(engine).replicate(request(7, 0, 0, [marker(7)]))).shards
    assert taken.ok
    await engine.close()
    engine = open_engine(tmp_path)
    try:
        [result] = (await follower_of(engine).replicate(
            request(5, 0, 0, [message(5, b"stale", "old-1")]))).shards
        assert not result.ok and result.newer_epoch == 7
        assert engine.epoch_at(SHARD, 0) == 7
    finally:
        await engine.close()


async def test_a_restarted_follower_refuses_an_epoch_older_than_one_it_took_without_entries(tmp_path):
    """A leader of epoch 7 reached this node with a batch carrying no entry of its own
    (only its commit): the epoch is remembered all the same, on disk before the answer."""
    engine = open_engine(tmp_path)
    part = follower_of(engine)
    assert (await part.replicate(request(3, 0, 0, [marker(3), message(3, b"a", "id-a")]))).shards[0].ok
    assert (await part.replicate(request(7, 2, 3, commit=2))).shards[0].ok
    await engine.close()
    engine = open_engine(tmp_path)
    try:
        [result] = (await follower_of(engine).replicate(
            request(5, 2, 3, [message(5, b"deposed", "id-x")]))).shards
        assert not result.ok and result.newer_epoch == 7 and engine.shard(SHARD).end == 2
    finally:
        await engine.close()


async def test_the_replicate_handler_does_not_serve_before_replication_started(tmp_path):
    engine = StorageEngine(tmp_path / "node", "storage-2")  # recovered, group commit not started
    try:
        replication = Replication(engine, None, None, "storage-2", None)
        with pytest.raises(errors.Unavailable):
            await replication.replicate(request(7, 0, 0))
    finally:
        await engine.close()


# -- finding 2: a truncated tail takes its idempotency and index keys with it ------------------

DEDUP_MS = 60_000


def publish(data: bytes, key: str = "", attributes=None) -> list[pubsub_pb2.PubsubMessage]:
    return [pubsub_pb2.PubsubMessage(data=data, idempotency_key=key, attributes=attributes or {})]


@pytest.mark.parametrize("by_payload", [False, True], ids=["idempotency key", "payload hash"])
async def test_a_truncated_entry_is_not_answered_as_a_repeat(tmp_path, by_payload):
    """A deposed leader's entry reached this node and was never committed; the new
    leader's marker replaces it. As the next leader, this node stores the same
    message again rather than answer with the id of an entry that is gone."""
    from storage.dedup import dedup_key_of
    engine = open_engine(tmp_path)
    try:
        repeat = publish(b"charge 8", "" if by_payload else "order-8", {"amount": "8"})
        dedup_key = dedup_key_of(repeat[0], by_payload)
        stale = message(1, b"charge 8", "stale-8", dedup_key)
        await engine.write_replicated(SHARD, 0, Entries.of([marker(1), message(1, b"a", "id-a"), stale]))
        await engine.write_replicated(SHARD, 2, Entries.of([marker(2)]))  # the new leader's marker at 2
        layout = engine.shard(SHARD).layout
        assert engine.db.get(layout.index("stale-8")) is None
        assert engine.db.get(layout.idempotency(dedup_key)) is None
        assert engine.db.get(layout.index("id-a")) is not None  # what stays keeps its keys
        ids, entries = engine.prepare(SHARD, repeat, 3, DEDUP_MS, retry=False, by_payload=by_payload)
        assert ids != ["stale-8"] and len(entries.raw) == 1
    finally:
        await engine.close()


async def test_a_truncated_entry_still_being_synced_is_not_answered_as_a_repeat(tmp_path):
    """The replaced entry's write has not synced yet: its dedup key is staged in memory."""
    engine = open_engine(tmp_path)
    try:
        await engine.write_replicated(SHARD, 0, Entries.of([marker(1)]))
        stale = engine.write_entries(SHARD, 1, Entries.of([message(1, b"charge 9", "stale-9", "k:order-9")]))
        replaced = engine.write_replicated(SHARD, 1, Entries.of([marker(2)]))
        ids, entries = engine.prepare(SHARD, publish(b"charge 9", "order-9"), 3, DEDUP_MS, retry=False)
        assert ids != ["stale-9"] and len(entries.raw) == 1
        await stale
        await replaced
        assert engine.db.get(engine.shard(SHARD).layout.idempotency("k:order-9")) is None
    finally:
        await engine.close()


async def test_a_reset_drops_the_idempotency_keys_of_the_entries_it_drops(tmp_path):
    engine = open_engine(tmp_path)
    try:
        await engine.write_replicated(SHARD, 0, Entries.of([marker(1), message(1, b"x", "old-x", "k:order-x")]))
        engine.reset(SHARD, 10)
        ids, entries = engine.prepare(SHARD, publish(b"x", "order-x"), 2, DEDUP_MS, retry=False)
        assert ids != ["old-x"] and len(entries.raw) == 1
    finally:
        await engine.close()


async def test_a_leader_write_over_its_own_tail_forgets_the_replaced_keys(tmp_path):
    engine = open_engine(tmp_path)
    try:
        await engine.write_entries(SHARD, 0, Entries.of([marker(1), message(1, b"y", "old-y", "k:order-y")]))
        await engine.write_entries(SHARD, 1, Entries.of([marker(2)]))
        layout = engine.shard(SHARD).layout
        assert engine.db.get(layout.index("old-y")) is None and engine.db.get(layout.idempotency("k:order-y")) is None
        ids, entries = engine.prepare(SHARD, publish(b"y", "order-y"), 2, DEDUP_MS, retry=False)
        assert ids != ["old-y"] and len(entries.raw) == 1
    finally:
        await engine.close()


# -- finding 5: a Replicate request is bounded by bytes ------------------------------------------


def leader_of(engine: StorageEngine, max_request_bytes: int):
    from storage.leader import Leader
    return Leader(engine, None, None, "storage-1", None, {}, max_request_bytes=max_request_bytes)


async def test_a_request_to_a_follower_far_behind_stays_under_the_byte_bound(tmp_path):
    """Many shards, large messages, from the tail kept in memory and read back from
    RocksDB: every request stays under the bound, and each one carries something."""
    from storage.leader import Leadership, Progress
    engine = open_engine(tmp_path)
    try:
        leader, bound = leader_of(engine, max_request_bytes=200_000), 200_000
        for partition in range(4):
            shard = f"orders/{partition}"
            big = Entries.of([message(1, bytes([partition]) * 30_000, f"m{partition}-{i}") for i in range(20)])
            write = engine.write_entries if partition % 2 else engine.write_replicated  # tail, or RocksDB
            await write(shard, 0, big)
            leader.led[shard] = Leadership(shard, 1, ["storage-1", "storage-2"], marker=0,
                                           progress={"storage-2": Progress(next=0)})
        sent = {f"orders/{p}": 0 for p in range(4)}
        for _ in range(100):
            request = leader.request_for("storage-2").request
            if not any(batch.entries for batch in request.shards):
                break
            assert request.ByteSize() <= bound
            for batch in request.shards:  # as if the follower took them
                shard = f"orders/{batch.partition}"
                sent[shard] += len(batch.entries)
                leader.led[shard].progress["storage-2"].next = batch.start + len(batch.entries)
                leader.led[shard].progress["storage-2"].match = batch.start + len(batch.entries)
        assert sent == {f"orders/{p}": 20 for p in range(4)}
    finally:
        await engine.close()


async def test_an_entry_larger_than_the_bound_still_goes_alone(tmp_path):
    from storage.leader import Leadership, Progress
    engine = open_engine(tmp_path)
    try:
        leader = leader_of(engine, max_request_bytes=10_000)
        await engine.write_replicated(SHARD, 0, Entries.of([message(1, b"x" * 50_000, f"big-{i}") for i in range(3)]))
        leader.led[SHARD] = Leadership(SHARD, 1, ["storage-1", "storage-2"], marker=0,
                                       progress={"storage-2": Progress(next=0)})
        [batch] = leader.request_for("storage-2").request.shards
        assert len(batch.entries) == 1
    finally:
        await engine.close()


# -- finding 4: check-quorum ------------------------------------------------------------------------


class Keys:
    """The election's part in giving up leadership, recorded."""

    def __init__(self):
        self.deleted: list[tuple[str, int]] = []
        self.held_off: list[str] = []

    def hold_off(self, shard, seconds):
        self.held_off.append(shard)

    async def withdraw(self, shard):
        pass

    async def delete_leader_key(self, shard, epoch):
        self.deleted.append((shard, epoch))


def cut_off_leader(engine: StorageEngine, heard_ago: dict[str, float]):
    """A leader of SHARD (epoch 9, replicas storage-1..3) whose followers last
    answered that many seconds ago."""
    import time

    from storage.leader import Leader, Leadership, Progress
    keys_ = Keys()
    leader = Leader(engine, None, keys_, "storage-1", None, {}, lease_s=3.0)
    now = time.monotonic()
    leader.led[SHARD] = Leadership(SHARD, 9, ["storage-1", "storage-2", "storage-3"], marker=0, progress={
        node: Progress(next=0, heard=now - ago) for node, ago in heard_ago.items()})
    return leader, keys_


async def test_a_leader_cut_off_from_its_followers_resigns(tmp_path):
    engine = open_engine(tmp_path)
    try:
        leader, keys_ = cut_off_leader(engine, {"storage-2": 3.5, "storage-3": 30.0})
        await leader.check_quorum()
        assert SHARD not in leader.led and keys_.deleted == [(SHARD, 9)] and keys_.held_off == [SHARD]
    finally:
        await engine.close()


async def test_a_leader_that_hears_from_one_follower_keeps_leading(tmp_path):
    engine = open_engine(tmp_path)
    try:
        leader, keys_ = cut_off_leader(engine, {"storage-2": 0.4, "storage-3": 30.0})
        await leader.check_quorum()
        assert SHARD in leader.led and keys_.deleted == []
    finally:
        await engine.close()


async def test_an_answer_counts_as_heard_and_an_idle_shard_is_sent_a_heartbeat(tmp_path):
    import time
    engine = open_engine(tmp_path)
    try:
        leader, _ = cut_off_leader(engine, {"storage-2": 30.0, "storage-3": 30.0})
        outgoing = leader.request_for("storage-2")  # nothing to send but a heartbeat, long overdue
        assert [b.partition for b in outgoing.request.shards] == [0]
        answer = storage_pb2.ReplicateResponse(shards=[storage_pb2.ShardResult(topic="orders", partition=0,
                                                                               ok=True, end=0)])
        await leader._handle_results("storage-2", answer, outgoing.sent)
        assert time.monotonic() - leader.led[SHARD].progress["storage-2"].heard < 1.0
        await leader.check_quorum()
        assert SHARD in leader.led
    finally:
        await engine.close()


async def test_a_leader_resigned_for_lost_quorum_does_not_stand_again_at_once():
    """Else its log, the longest (its own unreplicated tail), would win the election
    it caused, and it would lead cut off again."""
    from storage.election import Election

    class Store:
        announced: dict = {}

        async def announce(self, shard, node, candidacy, lease):
            self.announced[node] = candidacy

        async def announcements(self, shard):
            return dict(self.announced)

        async def claim(self, shard, record, lease, counted):
            return 50

    class Log:
        end, last_epoch, state_stamp = 10, 9, (0, 0)

    class Registration:
        addr, lease = "127.0.0.1:1", None

    election = Election(Store(), type("Logs", (), {"shard": lambda self, name: Log()})(), "storage-1")
    election.hold_off(SHARD, 6.0)
    assert await election.campaign(SHARD, ["storage-1"], Registration()) is None
    assert Store.announced == {}


# -- finding 3: the lease is checked again before acknowledging; claims check what they read ----------


class LiveReplicas:
    def live(self, kind):
        return {"storage-1": "a", "storage-2": "b", "storage-3": "c"}


class Lease:
    addr, lease = "127.0.0.1:1", None

    def __init__(self):
        import time
        self.valid_until = time.monotonic() + 60


async def test_a_publish_is_not_acknowledged_when_the_lease_lapsed_while_it_waited_for_its_quorum(tmp_path):
    import asyncio
    import time

    from storage.leader import Leader, Progress
    engine, lease = open_engine(tmp_path), Lease()
    try:
        leader = Leader(engine, LiveReplicas(), Keys(), "storage-1", lambda: lease, {})
        leader.wake = lambda lead: None  # no streams: the test plays the followers
        await leader.lead(SHARD, 9, ["storage-1", "storage-2", "storage-3"])
        lead = leader.led[SHARD]
        publishing = asyncio.create_task(leader.append(SHARD, publish(b"late"), False, DEDUP_MS, False))
        while engine.shard(SHARD).written < 2:  # marker and message synced here, waiting for a follower
            await asyncio.sleep(0.005)
        lease.valid_until = time.monotonic() - 1  # the lease lapsed meanwhile: another node may lead now
        lead.progress["storage-2"] = Progress(next=2, match=2)
        leader.advance_commit(lead)
        with pytest.raises(errors.Unavailable):
            await publishing
    finally:
        await engine.close()


class RevisionStore:
    """ElectionStore with etcd's revisions: a claim succeeds only if nothing it relied
    on changed since it was read."""

    def __init__(self):
        from notifymesh.contracts import Candidacy
        self.revision = 0
        self.announced: dict[str, tuple[Candidacy, int]] = {}
        self.before_claim = lambda: None

    def _next(self) -> int:
        self.revision += 1
        return self.revision

    async def announce(self, shard, node, candidacy, lease):
        self.announced[node] = (candidacy, self._next())
        return self.revision

    async def announcements(self, shard):
        from storage.election import Announcements
        return Announcements({n: c for n, (c, _) in self.announced.items()},
                             {n: r for n, (_, r) in self.announced.items()})

    leader_epoch: int | None = None  # the leader key's create revision (None: no key)

    async def withdraw(self, shard, node, leader_epoch):
        if leader_epoch is not None and self.leader_epoch != leader_epoch:
            return False
        if self.announced.pop(node, None) is not None:
            self._next()
        return True

    async def claim(self, shard, record, lease, basis):
        self.before_claim()
        current = {n: r for n, (_, r) in self.announced.items()}
        if any(current.get(n) != r for n, r in basis.candidates.items()):
            return None
        return self._next()


async def test_a_claim_fails_when_an_announcement_it_counted_was_withdrawn_meanwhile():
    from notifymesh.contracts import Candidacy
    from storage.election import Election
    store = RevisionStore()
    await store.announce(SHARD, "storage-2", Candidacy(5, 3, (0, 0)), None)
    other = store.announced["storage-2"][1]
    # storage-2 takes a new leader's batch (and withdraws) between the read and the claim
    store.before_claim = lambda: store.announced.pop("storage-2") and store._next()
    election = Election(store, type("Logs", (), {"shard": lambda self, name: Lease()})(), "storage-1")
    Lease.end, Lease.last_epoch, Lease.state_stamp = 9, 3, (0, 0)
    assert await election.campaign(SHARD, ["storage-1", "storage-2", "storage-3"], Lease()) is None
    assert other  # it was counted: the quorum of two needed it
    store.before_claim = lambda: None
    await store.announce(SHARD, "storage-3", Candidacy(5, 3, (0, 0)), None)
    assert await election.campaign(SHARD, ["storage-1", "storage-2", "storage-3"], Lease()) is not None


async def test_a_withdrawal_during_an_announcement_is_not_lost():
    """The follower takes a batch (and withdraws) while this node's announcement is on
    its way to etcd: the announcement must not outlive the withdrawal."""
    import asyncio

    from storage.election import Election
    store = RevisionStore()
    announcing = asyncio.Event()
    plain_announce = store.announce

    async def slow_announce(shard, node, candidacy, lease):
        announcing.set()
        await asyncio.sleep(0.05)
        return await plain_announce(shard, node, candidacy, lease)
    store.announce = slow_announce
    Lease.end, Lease.last_epoch, Lease.state_stamp = 9, 3, (0, 0)
    election = Election(store, type("Logs", (), {"shard": lambda self, name: Lease()})(), "storage-1")
    campaign = asyncio.create_task(election.campaign(SHARD, ["storage-1", "storage-2", "storage-3"], Lease()))
    await announcing.wait()
    await election.withdraw(SHARD)
    await campaign
    assert "storage-1" not in store.announced


async def test_another_shards_campaign_goes_on_while_one_shards_announcement_waits():
    """A node campaigns for many shards at once (storage.replication): one slow etcd
    call must not hold up the elections of the others."""
    import asyncio

    from storage.election import Election
    store = RevisionStore()
    stuck, announcing = asyncio.Event(), asyncio.Event()
    plain_announce = store.announce

    async def announce(shard, node, candidacy, lease):
        if shard == SHARD:
            announcing.set()
            await stuck.wait()
        return await plain_announce(shard, node, candidacy, lease)
    store.announce = announce
    Lease.end, Lease.last_epoch, Lease.state_stamp = 9, 3, (0, 0)
    election = Election(store, type("Logs", (), {"shard": lambda self, name: Lease()})(), "storage-1")
    replicas = ["storage-1", "storage-2", "storage-3"]
    slow = asyncio.create_task(election.campaign(SHARD, replicas, Lease()))
    await announcing.wait()
    # Alone, storage-1 is no quorum: the campaign ends without a claim, but it ends.
    assert await asyncio.wait_for(election.campaign("orders/1", replicas, Lease()), 5) is None
    stuck.set()
    await slow


async def test_a_reset_while_recent_ids_are_being_read_leaves_none_of_the_dropped_ids(tmp_path):
    """The ids a retried append checks are read slice by slice; a reset meanwhile
    drops every entry, and with them every id read so far."""
    import asyncio

    from storage.dedup import RECENT_IDS_SLICE
    engine = open_engine(tmp_path)
    try:
        count = 3 * RECENT_IDS_SLICE
        await engine.write_replicated(SHARD, 0, Entries.of([message(1, b"m", f"old-{i}") for i in range(count)]))
        loading = asyncio.create_task(engine.load_recent_ids(SHARD))
        for _ in range(3):  # the first slice is read (the load runs as a task of its own)
            await asyncio.sleep(0)
        engine.reset(SHARD, count + 10)
        await loading
        ids, entries = engine.prepare(SHARD, [pubsub_pb2.PubsubMessage(data=b"m", message_id="old-0")], 2,
                                      DEDUP_MS, retry=True)
        assert len(entries.raw) == 1  # stored again: the old entry is gone
    finally:
        await engine.close()


class RefusedCandidacy:
    """A candidacy whose withdrawal etcd refuses: the leader key is not the batch's
    leader's (it lapsed, or a newer leader claimed, perhaps counting this announcement)."""

    def __init__(self):
        self.asked: list[tuple[str, int | None]] = []

    async def withdraw(self, shard, leader_epoch=None):
        self.asked.append((shard, leader_epoch))
        return False


async def test_a_follower_whose_withdrawal_is_refused_does_not_take_the_batch(tmp_path):
    engine = open_engine(tmp_path)
    try:
        candidacy = RefusedCandidacy()
        part = Follower(engine, NoLeading(), candidacy, {}, {})
        part.open()
        [result] = (await part.replicate(request(7, 0, 0, [marker(7), message(7, b"a", "id-a")]))).shards
        assert candidacy.asked == [(SHARD, 7)]
        assert not result.ok and engine.shard(SHARD).end == 0
    finally:
        await engine.close()


async def test_an_election_withdraws_only_while_the_leader_key_is_the_batchs_leaders():
    from notifymesh.contracts import Candidacy
    from storage.election import Election
    store = RevisionStore()
    Lease.end, Lease.last_epoch, Lease.state_stamp = 9, 3, (0, 0)
    election = Election(store, type("Logs", (), {"shard": lambda self, name: Lease()})(), "storage-1")
    await store.announce(SHARD, "storage-2", Candidacy(5, 3, (0, 0)), None)
    await election.campaign(SHARD, ["storage-1", "storage-2", "storage-3"], Lease())
    store.leader_epoch = 12  # claimed meanwhile by another node
    assert await election.withdraw(SHARD, leader_epoch=7) is False
    assert "storage-1" in store.announced  # still announced: a later withdrawal may go through
    store.leader_epoch = 7
    assert await election.withdraw(SHARD, leader_epoch=7) is True
    assert "storage-1" not in store.announced


async def test_a_follower_write_replaced_before_it_synced_leaves_no_keys(tmp_path):
    """Two leaders' batches (a deposed one's, then the new one's over it) within one
    group commit: the replaced entries were never readable, only staged."""
    engine = open_engine(tmp_path)
    try:
        first = engine.write_replicated(SHARD, 0, Entries.of([marker(1), message(1, b"z", "stale-z", "k:order-z")]))
        second = engine.write_replicated(SHARD, 1, Entries.of([marker(2)]))
        await first
        await second
        layout = engine.shard(SHARD).layout
        assert engine.db.get(layout.idempotency("k:order-z")) is None
        assert engine.db.get(layout.index("stale-z")) is None
        ids, entries = engine.prepare(SHARD, publish(b"z", "order-z"), 2, DEDUP_MS, retry=False)
        assert ids != ["stale-z"] and len(entries.raw) == 1
    finally:
        await engine.close()
