"""The (subscription, partition) pair as the unit of ownership: the ring's
assignment, a sender serving only the partitions it owns (streams, internal
consumers, unary pulls), and the frontend merging the streams of several owners,
splitting pulls over them and routing acks to each pair's owner; with fakes."""

import asyncio

import grpc
import pytest
from fakes import FakeCluster, FakeGatewayStorage, FakeMetadata, FakeSenders, eventually, received, settle, subscribed
from test_dispatcher import SUB, ack_id, make_dispatcher

from frontend import fanin
from frontend.gateway import Gateway
from gen.notifymesh.v1 import pubsub_pb2
from notifymesh import errors
from notifymesh.contracts import AckId, MemberRecord
from notifymesh.server import cluster as cluster_module
from notifymesh.server.cluster import Cluster, Member
from notifymesh.server.config import Config
from notifymesh.server.ring import Ring
from sender.dispatch import Stream

# -- the ring ---------------------------------------------------------------------------------


def test_partition_0_is_the_subscriptions_owner_and_the_pairs_spread_evenly():
    ring = Ring(["sender-1", "sender-2", "sender-3"])
    for i in range(50):
        name = f"sub-{i}"
        owners = [ring.owner(name, p) for p in range(6)]
        assert owners[0] == ring.owner(name)  # a one-partition topic: its owner as before
        assert sorted(owners) == sorted(["sender-1", "sender-2", "sender-3"] * 2)
    assert {Ring(["sender-1"]).owner("x", p) for p in range(4)} == {"sender-1"}
    assert Ring().owner("x", 3) is None


def senders_cluster(*nodes: str) -> Cluster:
    cluster = Cluster(etcd=None, max_message_bytes=1 << 20)
    cluster.members.items = {f"sender/{node}": MemberRecord(f"127.0.0.1:{port}") for port, node in enumerate(nodes, 1)}
    cluster._rebuild_rings()
    return cluster


def counted_ring_lookups(monkeypatch) -> list:
    looked_up = []
    owner = Ring.owner

    def counted(ring, key, partition=0):
        looked_up.append((key, partition))
        return owner(ring, key, partition)
    monkeypatch.setattr(Ring, "owner", counted)
    return looked_up


def test_a_pairs_owner_is_looked_up_on_the_ring_once_until_the_ring_changes(monkeypatch):
    looked_up = counted_ring_lookups(monkeypatch)
    cluster = senders_cluster("sender-1", "sender-2")
    pairs = [(f"sub-{i}", p) for i in range(20) for p in range(2)]
    first = [cluster.owner("sender", *pair) for pair in pairs]
    assert [cluster.owner("sender", *pair) for pair in pairs] == first
    assert len(looked_up) == len(pairs), "each pair's owner from the ring once"

    cluster.members.items["sender/sender-3"] = MemberRecord("127.0.0.1:3")
    cluster._rebuild_rings()  # what a member's arrival does
    looked_up.clear()
    after = [cluster.owner("sender", *pair) for pair in pairs]
    assert len(looked_up) == len(pairs), "each pair's owner from the new ring"
    ring = Ring(["sender-1", "sender-2", "sender-3"])
    assert [member.node for member in after] == [ring.owner(*pair) for pair in pairs]
    assert any(member.node == "sender-3" for member in after), "pairs moved to the new member"


def test_a_members_new_address_under_its_old_name_is_seen_at_once():
    cluster = senders_cluster("sender-1")
    assert cluster.owner("sender", "sub", 0) == Member("sender-1", "127.0.0.1:1")
    cluster.members.items["sender/sender-1"] = MemberRecord("127.0.0.1:9")  # restarted on another port
    cluster._rebuild_rings()  # the same ring
    assert cluster.owner("sender", "sub", 0) == Member("sender-1", "127.0.0.1:9")


def test_the_owners_memo_starts_over_past_its_bound(monkeypatch):
    monkeypatch.setattr(cluster_module, "MAX_CACHED_OWNERS", 10)
    looked_up = counted_ring_lookups(monkeypatch)
    cluster = senders_cluster("sender-1", "sender-2")
    for i in range(25):
        cluster.owner("sender", f"sub-{i}")
        assert len(cluster._owners) <= 10
    cluster.owner("sender", "sub-24")
    assert len(looked_up) == 25, "the latest pairs are remembered"


# -- the sender --------------------------------------------------------------------------------


def pulled_partitions(storage) -> set[int]:
    return {p.partition for p in storage.pulls}


async def test_a_stream_is_served_only_from_the_partitions_this_sender_owns():
    dispatcher, storage, cluster = make_dispatcher(partitions=4)
    cluster.owners[f"{SUB}/1"] = cluster.owners[f"{SUB}/3"] = "sender-2"
    assert dispatcher.owns(SUB) and dispatcher.owns(SUB, 0) and not dispatcher.owns(SUB, 1)
    frames = subscribed(dispatcher, SUB, 10)
    frame = asyncio.ensure_future(anext(frames))
    await eventually(lambda: pulled_partitions(storage) == {0, 2})
    await settle()
    assert pulled_partitions(storage) == {0, 2}
    storage.respond_ready(2, SUB)
    await eventually(lambda: len(storage.waiting(2)) == 2)
    storage.respond(2, SUB, [received(ack_id(2, 1))])
    got = await asyncio.wait_for(frame, 1)
    assert [pubsub_pb2.ReceivedMessage.FromString(m).ack_id for m in got.received_messages] == [ack_id(2, 1)]
    frame.cancel()
    await frames.aclose()
    await dispatcher.close()


async def test_a_pair_moving_away_stops_its_pulls_and_one_moving_here_starts_them():
    dispatcher, storage, cluster = make_dispatcher(partitions=2)
    cluster.owners[f"{SUB}/1"] = "sender-2"
    frames = subscribed(dispatcher, SUB, 10)
    frame = asyncio.ensure_future(anext(frames))
    await eventually(lambda: storage.waiting(0))
    assert pulled_partitions(storage) == {0}

    del cluster.owners[f"{SUB}/1"]
    dispatcher.release_unowned()  # what a ring change does
    await eventually(lambda: storage.waiting(1))

    cluster.owners[f"{SUB}/0"] = "sender-2"
    dispatcher.release_unowned()
    storage.respond(0, SUB, [])  # the watch under way ends; the pair is not served again
    await settle()
    before = len(storage.waiting(0))
    storage.respond(0, SUB, [])
    await settle()
    assert len(storage.waiting(0)) == before and not frame.done()  # the stream goes on with partition 1

    cluster.owners[f"{SUB}/1"] = "sender-2"
    dispatcher.release_unowned()  # no pair left here: the stream ends, its frontend reconnects it
    with pytest.raises(errors.Unavailable, match="moved"):
        await asyncio.wait_for(frame, 1)
    await frames.aclose()
    await dispatcher.close()


async def test_a_consumer_inside_the_sender_gets_only_the_owned_partitions():
    dispatcher, storage, cluster = make_dispatcher(partitions=3)
    cluster.owners[f"{SUB}/0"] = cluster.owners[f"{SUB}/2"] = "sender-2"
    sub = await dispatcher.attach(SUB, Stream(5))
    await eventually(lambda: storage.waiting(1))
    await settle()
    assert pulled_partitions(storage) == {1}
    await sub.close()
    await dispatcher.close()


async def test_a_unary_pull_leases_only_from_the_owned_partitions():
    dispatcher, storage, cluster = make_dispatcher(partitions=3)
    cluster.owners[f"{SUB}/0"] = "sender-2"
    pull = asyncio.ensure_future(dispatcher.pull(SUB, 4, 0))
    storage.respond(1, SUB, [])  # asked in turn, each at once
    storage.respond(2, SUB, [received(ack_id(2, 5))])
    assert len(await asyncio.wait_for(pull, 1)) == 1
    assert pulled_partitions(storage) == {1, 2}
    await dispatcher.close()


# -- the frontend ------------------------------------------------------------------------------


def make_gateway(owned: dict[str, str]):
    cluster = FakeCluster(topics={"orders": 4}, subscriptions={"sub-a": "orders"})
    senders = FakeSenders(owned)
    return Gateway(cluster, Config(), storage=FakeGatewayStorage(), senders=senders, metadata=FakeMetadata()), senders


async def test_acks_modacks_and_nacks_go_to_the_owner_of_each_pair():
    gateway, senders = make_gateway({"sub-a": "s1", "sub-a/1": "s2", "sub-a/3": "s2"})
    ids = [f"{p}:{seq}:sub-a" for p, seq in [(0, 1), (1, 2), (2, 3), (3, 4)]]
    await gateway.acknowledge("sub-a", ids)
    assert sorted(senders.acks) == [("s1", [ids[0], ids[2]]), ("s2", [ids[1], ids[3]])]
    senders.acks.clear()
    await gateway.acknowledge("", ids[:2])
    assert sorted(senders.acks) == [("s1", [ids[0]]), ("s2", [ids[1]])]


async def test_the_gateway_parses_each_acked_id_once_and_still_refuses_another_subscriptions(monkeypatch):
    gateway, senders = make_gateway({"sub-a": "s1", "sub-a/1": "s2"})
    parsed = []
    parse = AckId.parse.__func__
    monkeypatch.setattr(AckId, "parse", classmethod(lambda cls, value: parsed.append(value) or parse(cls, value)))
    ids = [f"{p}:{seq}:sub-a" for p, seq in [(0, 1), (1, 2), (0, 3)]]
    await gateway.acknowledge("sub-a", ids)
    assert sorted(parsed) == sorted(ids)
    assert sorted(senders.acks) == [("s1", [ids[0], ids[2]]), ("s2", [ids[1]])]
    with pytest.raises(errors.InvalidArgument, match="0:4:sub-b.* is not of subscription 'sub-a'"):
        await gateway.acknowledge("sub-a", [ids[0], "0:4:sub-b", "0:5:sub-b"])
    with pytest.raises(errors.InvalidArgument, match="malformed ack id"):
        await gateway.acknowledge("sub-a", [ids[0], "0:zz:sub-a"])


class FakeUpstreams:
    """The gateway's relay: per sender address a queue of frames the test feeds; an
    exception fed ends the relay with it; the relay ends when pick() says None."""

    def __init__(self):
        self.queues: dict[str, asyncio.Queue] = {}
        self.requests: dict[str, pubsub_pb2.SubscribeRequest] = {}
        self.open: set[str] = set()

    async def relay(self, request, pick):
        addr = pick()
        queue = self.queues.setdefault(addr, asyncio.Queue())
        self.requests[addr], _ = request, self.open.add(addr)
        try:
            while pick() == addr:
                item = await queue.get()
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            self.open.discard(addr)

    def feed(self, addr: str, item) -> None:
        self.queues.setdefault(addr, asyncio.Queue()).put_nowait(item)


async def test_one_client_stream_merges_the_owners_streams_across_a_move():
    owners = {"s1": [0, 2], "s2": [1, 3]}
    upstreams, changed = FakeUpstreams(), asyncio.Event()
    merged = fanin.FanIn(pubsub_pb2.SubscribeRequest(subscription="sub-a", max_outstanding_messages=10), 4,
                         lambda: owners, upstreams.relay, lambda: changed)
    frames = merged.frames()
    upstreams.feed("s1", b"one")
    upstreams.feed("s2", b"two")
    got = {await asyncio.wait_for(anext(frames), 1), await asyncio.wait_for(anext(frames), 1)}
    assert got == {b"one", b"two"}
    assert {a: r.max_outstanding_messages for a, r in upstreams.requests.items()} == {"s1": 5, "s2": 5}

    owners = {"s1": [0, 2], "s3": [1, 3]}  # s2 died: its pairs moved to s3
    changed.set()
    changed = asyncio.Event()
    upstreams.feed("s3", b"three")
    assert await asyncio.wait_for(anext(frames), 1) == b"three"
    await eventually(lambda: upstreams.open == {"s1", "s3"})

    upstreams.feed("s1", errors.NotFound("subscription 'sub-a' not found"))
    with pytest.raises(errors.NotFound):
        await asyncio.wait_for(anext(frames), 1)
    await eventually(lambda: not upstreams.open)


def test_pull_shares_add_up_to_what_was_asked():
    owners = {"s1": [0, 2], "s2": [1], "s3": [3]}
    assert fanin.shares(8, owners, 4, 0) == {"s1": 4, "s2": 2, "s3": 2}
    assert sum(fanin.shares(7, owners, 4, 1).values()) == 7
    assert fanin.shares(1, owners, 4, 2) == {"s3": 1}


async def test_a_unary_pull_asks_every_owner_and_the_first_with_messages_ends_the_wait():
    owners = {"s1": [0, 1], "s2": [2, 3]}
    asked: list[tuple[str, int, int]] = []
    arrive = asyncio.Event()

    async def pull_one(request, addr):
        asked.append((addr, request.max_messages, request.wait.ToMilliseconds()))
        if request.wait.ToMilliseconds() and addr == "s2":
            await arrive.wait()
            return pubsub_pb2.PullResponse(received_messages=[received(ack_id(2, 1))])
        if request.wait.ToMilliseconds():
            await asyncio.sleep(60)  # s1 has none: ended once s2 answers
        return pubsub_pb2.PullResponse()

    request = pubsub_pb2.PullRequest(subscription=SUB, max_messages=10)
    request.wait.FromSeconds(30)
    pull = asyncio.ensure_future(fanin.pull(request, owners, 4, 0, pull_one))
    await eventually(lambda: len(asked) == 4)
    assert sorted(asked) == [("s1", 5, 0), ("s1", 5, 30_000), ("s2", 5, 0), ("s2", 5, 30_000)]
    arrive.set()
    assert len((await asyncio.wait_for(pull, 1)).received_messages) == 1

    async def gone(request, addr):
        raise grpc.aio.AioRpcError(grpc.StatusCode.NOT_FOUND, grpc.aio.Metadata(), grpc.aio.Metadata(), "gone")
    with pytest.raises(grpc.aio.AioRpcError):
        await fanin.pull(request, owners, 4, 0, gone)
