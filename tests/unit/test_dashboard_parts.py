"""The dashboard's parts with fakes (frontend/dashboard.py): the snapshot builder,
what each viewer sees, the shared snapshot and the stream cap, sessions and CSRF,
the ring of recent errors."""

import asyncio
import logging

import pytest

from frontend import dashboard
from frontend.dashboard import PublishRates, RecentErrors, Sessions, SnapshotBuilder, SnapshotHub, TooManyStreams
from gen.notifymesh.v1 import cluster_pb2, pubsub_pb2
from notifymesh import errors
from notifymesh.clock import now_ms
from notifymesh.server.principal import KeyRecord, Principal


def _shard(topic, partition, commit, replicas=("s1", "s2", "s3"), leader="s1", reported=True):
    shard = cluster_pb2.ShardStatus(topic=topic, partition=partition, replicas=replicas, leader=leader, epoch=7,
                                    commit=commit)
    if reported:
        shard.replica_status.extend([cluster_pb2.ReplicaStatus(node_id=leader, role="leader", end=commit, lag=0),
                                     cluster_pb2.ReplicaStatus(node_id="s2", role="follower", end=commit - 3, lag=3)])
    return shard


def _sub_stats(name, topic, backlog, dead=0, oldest_ms=None):
    total = pubsub_pb2.DeliveryStats(backlog=backlog, in_flight=1, delivery_rate=2.5, dead_letters=dead)
    if oldest_ms is not None:
        total.oldest_unacked_age.FromMilliseconds(oldest_ms)
    return pubsub_pb2.SubscriptionStats(subscription=name, topic=topic, total=total, streams=2)


class FakeSource:
    def __init__(self):
        self.commits = {("orders", 0): 100, ("orders", 1): 50}
        self.storage_members = ["s1", "s2"]  # s3 holds no lease
        self.stats = {"orders": [_sub_stats("orders-audit", "orders", 12, dead=2, oldest_ms=4500)],
                      "notifymesh.audit": []}
        self.failing: set[str] = set()
        self.gone: set[str] = set()
        self.dead_listed: list[str] = []

    def topic_names(self):
        return list(self.stats) + sorted(self.failing | self.gone)

    async def cluster_status(self):
        status = cluster_pb2.ClusterStatus(
            members=[cluster_pb2.ClusterMember(kind="storage", node_id=n, addr=f"{n}:1") for n in self.storage_members]
            + [cluster_pb2.ClusterMember(kind="frontend", node_id="f1", addr="f1:1")])
        status.shards.extend(_shard(t, p, c) for (t, p), c in self.commits.items())
        status.shards.append(_shard("orders", 2, 0, leader="", reported=False))
        return status

    async def describe_topic(self, name):
        if name in self.failing:
            raise errors.Unavailable("no leader for it yet")
        if name in self.gone:
            raise errors.NotFound(f"topic {name!r} not found")
        subs = self.stats[name]
        total = pubsub_pb2.DeliveryStats(backlog=sum(s.total.backlog for s in subs))
        return pubsub_pb2.TopicStats(topic=name, total=total, subscriptions=subs,
                                     partitions=[pubsub_pb2.PartitionStats(partition=p) for p in range(3)])

    async def list_dead_letters(self, request):
        self.dead_listed.append(request.subscription)
        dead = pubsub_pb2.DeadLetter(message=pubsub_pb2.PubsubMessage(message_id="m1", data=b"x" * 500),
                                     delivery_attempts=5, last_error="bad payload")
        dead.dead_letter_time.FromMilliseconds(1_000)
        return pubsub_pb2.ListDeadLettersResponse(dead_letters=[dead])


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


async def test_the_snapshot_shows_members_partitions_topics_subscriptions_and_dead_letters():
    source, clock = FakeSource(), Clock()
    builder = SnapshotBuilder(source, RecentErrors(), clock)
    first = await builder.build()
    assert [(m.node_id, m.health) for m in first.members] == [("s1", "up"), ("s2", "up"), ("f1", "up"),
                                                              ("s3", "down")]
    orders = [p for p in first.partitions if p.topic == "orders"]
    assert [(p.partition, p.leader, p.lag, p.reported) for p in orders] == [(0, "s1", 3, True), (1, "s1", 3, True),
                                                                           (2, "", 0, False)]
    assert [t.name for t in first.topics] == ["orders", "notifymesh.audit"], "the users' topics first"
    assert first.topics[0].publish_rate == 0.0 and first.topics[0].partitions == 3
    (sub,) = first.subscriptions
    assert (sub.name, sub.backlog, sub.oldest_unacked_s, sub.delivery_rate, sub.dead_letters, sub.streams) == \
        ("orders-audit", 12, 4.5, 2.5, 2, 2)
    (dead,) = first.dead_letters
    assert (dead.subscription, dead.message_id, dead.attempts, dead.last_error) == \
        ("orders-audit", "m1", 5, "bad payload")
    assert len(dead.preview) == dashboard.PREVIEW_CHARS + 1
    assert source.dead_listed == ["orders-audit"], "only subscriptions with dead letters are listed"

    # Two seconds and 60 committed messages later: 30 messages/s (an unreported shard counts nothing).
    clock.now += 2
    source.commits = {("orders", 0): 140, ("orders", 1): 70}
    second = await builder.build()
    assert second.topics[0].publish_rate == 30.0


async def test_a_topic_that_fails_is_a_problem_and_one_deleted_meanwhile_is_left_out():
    source = FakeSource()
    source.failing, source.gone = {"broken"}, {"deleted"}
    snapshot = await SnapshotBuilder(source, RecentErrors()).build()
    assert [t.name for t in snapshot.topics] == ["orders", "notifymesh.audit"]
    assert snapshot.problems == ["topic broken: UNAVAILABLE: no leader for it yet"]


async def test_topics_beyond_the_bound_are_counted_not_described(monkeypatch):
    monkeypatch.setattr(dashboard, "MAX_TOPICS", 1)
    snapshot = await SnapshotBuilder(FakeSource(), RecentErrors()).build()
    assert [t.name for t in snapshot.topics] == ["orders"] and snapshot.topics_not_shown == 1


def test_publish_rates_survive_a_lower_commit_after_failover():
    rates = PublishRates(samples=3)
    assert rates.add(0.0, {("t", 0): 10}) == {}
    assert rates.add(1.0, {("t", 0): 20, ("u", 0): 5}) == {"t": 10.0}
    assert rates.add(2.0, {("t", 0): 5, ("u", 0): 9}) == {"t": 0.0}  # u unknown in the oldest sample
    assert rates.add(3.0, {("t", 0): 15, ("u", 0): 9}) == {"t": pytest.approx(5 / 3)}  # since 0.0
    assert rates.add(4.0, {("t", 0): 26, ("u", 0): 14}) == {"t": 2.0, "u": 3.0}  # since 1.0: samples are bounded
    # After a while unwatched, the rate is of the last seconds, not of that while.
    assert rates.add(100.0, {("t", 0): 1000}) == {}
    assert rates.add(101.0, {("t", 0): 1050}) == {"t": 50.0}


async def test_each_viewer_sees_what_their_role_may_read():
    snapshot = await SnapshotBuilder(FakeSource(), RecentErrors()).build()
    admin = Principal("key:a", "a", "admin")
    viewer = Principal("key:v", "v", "viewer", topics=("*",), subscriptions=("*",), categories=("*",))
    narrow = Principal("key:n", "n", "viewer", topics=("billing.*",), subscriptions=("billing.*",))
    subscriber = Principal("key:s", "s", "subscriber", subscriptions=("orders-*",), topics=("orders",))
    assert [t["name"] for t in snapshot.seen_by(admin)["topics"]] == ["orders", "notifymesh.audit"]
    assert [t["name"] for t in snapshot.seen_by(viewer)["topics"]] == ["orders"], "the mesh's own: named only"
    assert snapshot.seen_by(narrow)["topics"] == [] and snapshot.seen_by(narrow)["subscriptions"] == []
    # A dead letter's contents: ListDeadLetters' rule, subscribe on the subscription.
    assert len(snapshot.seen_by(admin)["dead_letters"]) == 1
    assert snapshot.seen_by(viewer)["dead_letters"] == []
    assert len(snapshot.seen_by(subscriber)["dead_letters"]) == 1


async def test_one_snapshot_is_computed_for_all_viewers_at_a_time():
    clock, builds, release = Clock(), [], asyncio.Event()

    async def build():
        builds.append(clock.now)
        await release.wait()
        return object()

    hub = SnapshotHub(build, interval_s=1.0, clock=clock)
    viewers = [asyncio.create_task(hub.latest()) for _ in range(20)]
    await asyncio.sleep(0)
    viewers[0].cancel()  # a viewer that leaves does not end the others' computation
    release.set()
    results = await asyncio.gather(*viewers[1:])
    assert len(builds) == 1 and len({id(r) for r in results}) == 1
    clock.now += 0.5
    assert await hub.latest() is results[0] and len(builds) == 1, "reused within the interval"
    clock.now += 0.6
    assert await hub.latest() is not results[0] and len(builds) == 2


async def test_viewers_with_the_same_key_share_the_snapshot_s_json():
    hub = SnapshotHub(lambda: None)
    snapshot = await SnapshotBuilder(FakeSource(), RecentErrors()).build()
    admin, again = Principal("key:a", "a", "admin"), Principal("key:a", "a", "admin")
    viewer = Principal("key:v", "v", "viewer", topics=("*",), subscriptions=("*",))
    first = hub.view(snapshot, admin)
    assert hub.view(snapshot, again) is first and hub.view(snapshot, viewer) != first
    later = await SnapshotBuilder(FakeSource(), RecentErrors()).build()
    assert hub.view(later, admin) is not first, "a new snapshot, a new view"


def test_event_streams_are_capped():
    hub = SnapshotHub(lambda: None, max_streams=2)
    with hub.stream(), hub.stream():
        with pytest.raises(TooManyStreams):
            with hub.stream():
                pass
        assert hub.streams == 2
    assert hub.streams == 0
    with hub.stream():
        pass


class FakeCheck:
    """Authenticator.principal: the keys it knows by their text."""

    def __init__(self, principals):
        self.principals = principals

    async def principal(self, context):
        (_, bearer), = context.invocation_metadata()
        key = bearer.removeprefix("Bearer ")
        if key not in self.principals:
            raise errors.Unauthenticated("unknown API key")
        return self.principals[key]


def _record(key_id, role="admin", **kw):
    return KeyRecord(key_id=key_id, name=f"name-{key_id}", role=role, salt="", hash="", created_ms=1,
                     topics=("*",), subscriptions=("*",), categories=("*",), **kw)


class FakeEnded(dict):
    """frontend.ended_sessions.EndedSessions without etcd: nonce -> (key id, seconds left)."""

    async def end(self, nonce, key_id, remaining_s):
        self[nonce] = (key_id, remaining_s)


def _sessions(records, enabled=True, ttl_s=3600, ended=None):
    principals = {f"key-{r.key_id}": r.principal() for r in records.values()}
    return Sessions(b"k" * 32, records.get, FakeCheck(principals), lambda: enabled,
                    FakeEnded() if ended is None else ended, ttl_s)


async def test_a_session_names_the_key_and_ends_when_it_is_revoked_or_expires():
    records = {"aaa": _record("aaa")}
    sessions = _sessions(records)
    principal, token = await sessions.login("key-aaa")
    assert principal.id == "key:aaa" and "key-aaa" not in token
    assert sessions.principal(token).id == "key:aaa"
    records["aaa"] = _record("aaa", revoked_ms=5)
    with pytest.raises(errors.Unauthenticated, match="was revoked"):
        sessions.principal(token)
    records["aaa"] = _record("aaa", expires_ms=now_ms() - 1)
    with pytest.raises(errors.Unauthenticated, match="has expired"):
        sessions.principal(token)
    del records["aaa"]
    with pytest.raises(errors.Unauthenticated, match="no longer exists"):
        sessions.principal(token)


async def test_a_logout_ends_the_session_for_its_remaining_life_and_no_other():
    records = {"aaa": _record("aaa")}
    ended = FakeEnded()
    sessions = _sessions(records, ttl_s=3600, ended=ended)
    _, token = await sessions.login("key-aaa")
    _, other = await sessions.login("key-aaa")
    await sessions.end(token)
    with pytest.raises(errors.Unauthenticated, match="logged out"):
        sessions.principal(token)
    assert sessions.principal(other).id == "key:aaa"  # the same key's other session goes on
    (key_id, remaining_s), = ended.values()
    assert key_id == "aaa" and 3590 < remaining_s <= 3600
    await sessions.end("not.a-token")  # nothing to end: no error, nothing recorded
    await sessions.end(None)
    assert len(ended) == 1


async def test_a_session_token_cannot_be_altered_made_elsewhere_or_outlive_its_ttl():
    records = {"aaa": _record("aaa"), "bbb": _record("bbb")}
    sessions = _sessions(records)
    _, token = await sessions.login("key-aaa")
    payload, mac = token.split(".")
    with pytest.raises(errors.Unauthenticated, match="signature does not match"):
        sessions.principal(payload[:-2] + "xx." + mac)
    other = Sessions(b"o" * 32, records.get, FakeCheck({}), lambda: True, FakeEnded())
    with pytest.raises(errors.Unauthenticated, match="signature does not match"):
        other.principal(token)
    with pytest.raises(errors.Unauthenticated, match="not logged in"):
        sessions.principal(None)
    expired = _sessions(records, ttl_s=-1)
    with pytest.raises(errors.Unauthenticated, match="expired"):
        expired.principal(token)


async def test_login_needs_a_known_key_of_a_role_that_reads_the_cluster():
    records = {"aaa": _record("aaa", role="viewer"), "ppp": _record("ppp", role="publisher")}
    sessions = _sessions(records)
    assert (await sessions.login("key-aaa"))[0].role == "viewer"
    with pytest.raises(errors.PermissionDenied, match="needs read on some cluster"):
        await sessions.login("key-ppp")
    with pytest.raises(errors.Unauthenticated, match="unknown API key"):
        await sessions.login("key-zzz")
    with pytest.raises(errors.Unauthenticated, match="give an API key"):
        await sessions.login("")


async def test_csrf_token_is_of_its_own_session_and_auth_off_lets_everyone_in():
    sessions = _sessions({"aaa": _record("aaa")})
    _, one = await sessions.login("key-aaa")
    _, two = await sessions.login("key-aaa")
    assert one != two
    sessions.check_csrf(one, sessions.csrf(one))
    for sent in ("", sessions.csrf(two)):
        with pytest.raises(errors.PermissionDenied, match="X-Notifymesh-CSRF"):
            sessions.check_csrf(one, sent)
    off = _sessions({}, enabled=False)
    assert off.principal(None).role == "admin"
    off.check_csrf(None, "")


def test_recent_errors_keep_the_newest_warnings_and_errors_only():
    ring = RecentErrors(size=3)
    logger = logging.getLogger("test_dashboard_ring")
    logger.addHandler(ring)
    logger.setLevel(logging.INFO)
    try:
        logger.info("not an error")
        for i in range(5):
            logger.warning("trouble %d", i, extra={"fields": {"subscription": "s", "attempt": i}})
        logger.error("worse")
    finally:
        logger.removeHandler(ring)
    entries = ring.entries()
    assert [e.message for e in entries] == ["worse", "trouble 4", "trouble 3"]
    assert entries[1].level == "warning" and entries[1].fields == {"subscription": "s", "attempt": "4"}
