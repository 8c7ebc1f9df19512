"""In-memory fakes of the collaborators the unit tests drive classes with: each
records what it was asked and does what the test tells it (answer, fail, block)."""

import asyncio
import itertools
import time
from typing import Any, Callable, NamedTuple

from gen.notifymesh.internal.v1 import storage_pb2
from gen.notifymesh.v1 import pubsub_pb2
from notifymesh import errors


async def eventually(condition: Callable[[], bool], timeout_s: float = 1.0) -> None:
    """Waits (a loop turn at a time, up to timeout_s) until condition() holds."""
    loop = asyncio.get_running_loop()
    give_up = loop.time() + timeout_s
    while not condition():
        if loop.time() > give_up:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.001)


async def settle(turns: int = 10) -> None:
    """Lets every ready task run a few turns (no wall-clock wait)."""
    for _ in range(turns):
        await asyncio.sleep(0)


# -- the client, as the Publisher and the Subscriber use it ---------------------------


class PublishCall(NamedTuple):
    topic: str
    data: list[bytes]
    keys: list[str]  # the key each message's resend is recognised by: its idempotency key, else its retry key


class FakePublishClient:
    """publish(topic, messages): records the call; then fails with the next scripted
    error (outcomes), waits while gate is set to an unset Event, or answers with one
    id per message."""

    def __init__(self):
        self.calls: list[PublishCall] = []
        self.outcomes: list[Exception | None] = []  # per call, in order; then success
        self.always: Exception | None = None  # every call fails with this
        self.gate: asyncio.Event | None = None  # calls wait for it while set here
        self.call_times: list[float] = []
        self._ids = itertools.count()

    async def publish(self, topic: str, messages) -> list[str]:
        self.calls.append(PublishCall(topic, [m.data for m in messages],
                                      [m.idempotency_key or m.retry_key for m in messages]))
        self.call_times.append(time.monotonic())
        outcome = self.outcomes.pop(0) if self.outcomes else self.always
        if self.gate is not None:
            await self.gate.wait()
        if outcome is not None:
            raise outcome
        return [f"id-{next(self._ids)}" for _ in messages]


class AckCall(NamedTuple):
    subscription: str
    ack_ids: list[str]


class NackCall(NamedTuple):
    subscription: str
    ack_ids: list[str]
    delay_s: float | None


_STREAM_END = object()


class FakeSubscribeClient:
    """subscribe_frames yields the frames the test pushes (push_frame), raises a
    pushed error, and returns at end(); frames_read counts what the subscriber took."""

    def __init__(self):
        self.frames: asyncio.Queue = asyncio.Queue()
        self.frames_read = 0
        self.subscribe_args: list[tuple[str, int, bool]] = []
        self.acks: list[AckCall] = []
        self.nacks: list[NackCall] = []

    def push_frame(self, *received: pubsub_pb2.ReceivedMessage) -> None:
        self.frames.put_nowait(list(received))

    def push_error(self, error: Exception) -> None:
        self.frames.put_nowait(error)

    def end(self) -> None:
        self.frames.put_nowait(_STREAM_END)

    async def subscribe_frames(self, subscription: str, max_outstanding: int = 0, reconnect: bool = True):
        self.subscribe_args.append((subscription, max_outstanding, reconnect))
        while True:
            item = await self.frames.get()
            self.frames_read += 1
            if item is _STREAM_END:
                return
            if isinstance(item, Exception):
                raise item
            yield item

    async def acknowledge(self, subscription: str, ack_ids: list[str]) -> None:
        self.acks.append(AckCall(subscription, list(ack_ids)))

    async def nack(self, subscription: str, ack_ids: list[str], delay_s: float | None = None) -> None:
        self.nacks.append(NackCall(subscription, list(ack_ids), delay_s))


def received(ack_id: str, data: bytes = b"payload", message_id: str = "") -> pubsub_pb2.ReceivedMessage:
    return pubsub_pb2.ReceivedMessage(
        ack_id=ack_id, message=pubsub_pb2.PubsubMessage(data=data, message_id=message_id or f"m-{ack_id}"),
        delivery_attempt=1)


# -- the cluster view ----------------------------------------------------------------------


class FakeMirror:
    """The part of a PrefixMirror that is read: items."""

    def __init__(self, items: dict[str, Any] | None = None):
        self.items: dict[str, Any] = dict(items or {})
        self.groups: dict[str, dict[str, Any]] = {}  # subscriptions by topic


class FakeRing:
    def __init__(self, owner: Callable[[str], str | None]):
        self._owner = owner

    def owner(self, key: str, partition: int = 0) -> str | None:
        return self._owner(key, partition)


class FakeCluster:
    """Topics and subscriptions (protos by name) and a sender ring whose owner of
    every subscription is sender_owner (a node id), or per subscription in owners, or
    per (subscription, partition) pair in owners under "subscription/partition"."""

    def __init__(self, topics: dict[str, int] | None = None, subscriptions: dict[str, str] | None = None,
                 sender_owner: str = "sender-1", ack_deadline_s: int = 10):
        """topics: name -> partition count; subscriptions: name -> topic."""
        self.topics = FakeMirror({name: pubsub_pb2.Topic(name=name, partition_count=count)
                                  for name, count in (topics or {}).items()})
        self.subscriptions = FakeMirror()
        for name, topic in (subscriptions or {}).items():
            self.add_subscription(name, topic, ack_deadline_s)
        self.owners: dict[str, str] = {}
        self.sender_owner = sender_owner
        self.rings = {"sender": FakeRing(lambda key, partition: self.owners.get(
            f"{key}/{partition}", self.owners.get(key, self.sender_owner)))}
        self.ring_changed = asyncio.Event()
        self.epochs: dict[str, int] = {}  # shard -> its leader's epoch
        self._leader_changed = asyncio.Event()

    def next_ring_change(self, kind: str) -> asyncio.Event:
        return self.ring_changed

    def epoch(self, shard: str) -> int:
        return self.epochs.get(shard, 1)

    def next_leader_change(self) -> asyncio.Event:
        return self._leader_changed

    def new_leader(self, shard: str) -> None:
        self.epochs[shard] = self.epoch(shard) + 1
        changed, self._leader_changed = self._leader_changed, asyncio.Event()
        changed.set()

    def add_subscription(self, name: str, topic: str, ack_deadline_s: int = 10) -> None:
        subscription = pubsub_pb2.Subscription(name=name, topic=topic)
        subscription.ack_deadline.FromSeconds(ack_deadline_s)
        self.subscriptions.items[name] = subscription
        self.subscriptions.groups.setdefault(topic, {})[name] = subscription

    async def topic(self, name: str) -> pubsub_pb2.Topic:
        if name not in self.topics.items:
            raise errors.NotFound(f"topic {name!r} not found")
        return self.topics.items[name]

    async def subscription(self, name: str) -> pubsub_pb2.Subscription:
        if name not in self.subscriptions.items:
            raise errors.NotFound(f"subscription {name!r} not found")
        return self.subscriptions.items[name]


class FakeRegistration:
    def __init__(self, valid_for_s: float = 3600, addr: str = "127.0.0.1:1"):
        self.valid_until = time.monotonic() + valid_for_s
        self.addr = addr


# -- the internal clients --------------------------------------------------------------------


class FakePullStream:
    def __init__(self):
        self.closed = False

    def close(self) -> None:
        self.closed = True


class StorageNack(NamedTuple):
    topic: str
    partition: int
    subscription: str
    ack_ids: list[str]
    delay_ms: int | None
    deferred: bool = False


class FakeDispatchStorage:
    """The storage client as the sender's dispatcher uses it. pull() records the
    request and waits for the test's respond(partition, ...); the ack calls record."""

    def __init__(self):
        self.pulls: list[storage_pb2.PullRequest] = []
        self.pull_arrived = asyncio.Event()
        self._responses: dict[int, asyncio.Queue] = {}
        self.acks: list[tuple[str, int, str, list[str]]] = []
        self.deadlines: list[tuple[str, int, str, list[str], int]] = []
        self.nacks: list[StorageNack] = []

    def pull_stream(self) -> FakePullStream:
        return FakePullStream()

    def _queue(self, partition: int) -> asyncio.Queue:
        return self._responses.setdefault(partition, asyncio.Queue())

    async def pull(self, stream, request: storage_pb2.PullRequest) -> storage_pb2.PullResponse:
        copy = storage_pb2.PullRequest()
        copy.CopyFrom(request)
        self.pulls.append(copy)
        self.pull_arrived.set()
        response = await self._queue(request.partition).get()
        asked = {s.name: s.max_messages for s in request.subscriptions}
        for pulled in response.subscriptions:  # what storage does: it leases no more than asked
            assert len(pulled.received_messages) <= asked.get(pulled.name, 0), (
                f"answered {len(pulled.received_messages)} messages of {pulled.name} to a pull asking {asked}")
        return response

    def respond(self, partition: int, subscription: str, messages: list[pubsub_pb2.ReceivedMessage],
                ready: bool = False) -> None:
        """Answers the partition's (next) pull with messages for subscription; ready:
        it has more there."""
        response = storage_pb2.PullResponse()
        response.subscriptions.add(name=subscription, received_messages=[m.SerializeToString() for m in messages],
                                   ack_ids=[m.ack_id for m in messages], ready=ready)
        self._queue(partition).put_nowait(response)

    def answer(self, partition: int, response: storage_pb2.PullResponse) -> None:
        """Answers the partition's (next) pull with response as it is."""
        self._queue(partition).put_nowait(response)

    def respond_ready(self, partition: int, subscription: str) -> None:
        """Answers the partition's (next) pull, a wait (max_messages 0), with: it has messages."""
        self.respond(partition, subscription, [], ready=True)

    def waiting(self, partition: int) -> list[storage_pb2.PullRequest]:
        """The pulls of partition recorded so far."""
        return [p for p in self.pulls if p.partition == partition]

    async def acknowledge(self, topic, partition, subscription, ack_ids) -> None:
        self.acks.append((topic, partition, subscription, list(ack_ids)))

    async def modify_ack_deadline(self, topic, partition, subscription, ack_ids, ack_deadline_ms) -> None:
        self.deadlines.append((topic, partition, subscription, list(ack_ids), ack_deadline_ms))

    async def nack(self, topic, partition, request: pubsub_pb2.NackRequest, ack_ids, deferred=False) -> None:
        self.nacks.append(StorageNack(topic, partition, request.subscription, list(ack_ids),
                                      request.delay.ToMilliseconds() if request.HasField("delay") else None,
                                      deferred))


class FakeGatewayStorage:
    """The storage client as the frontend uses it: append answers with the ids the
    messages carry (storage keeps the ids it is given); a shard can be held
    (hold(shard) returns the Event that lets it go); call answers from replies."""

    def __init__(self):
        self.appends: list[tuple[tuple[str, int], list[pubsub_pb2.PubsubMessage]]] = []
        self.holds: dict[tuple[str, int], asyncio.Event] = {}
        self.calls: list[tuple[str, str, int, Any]] = []
        self.replies: dict[tuple[str, str, int], Any] = {}  # (method, topic, partition) -> reply or exception

    def hold(self, shard: tuple[str, int]) -> asyncio.Event:
        return self.holds.setdefault(shard, asyncio.Event())

    async def append(self, shard: tuple[str, int], messages) -> list[str]:
        self.appends.append((shard, list(messages)))
        if shard in self.holds:
            await self.holds[shard].wait()
        return [m.message_id for m in messages]

    async def call(self, method: str, topic: str, partition: int, request):
        self.calls.append((method, topic, partition, request))
        reply = self.replies.get((method, topic, partition))
        if isinstance(reply, BaseException):
            raise reply
        return reply


class FakeSenders:
    """The sender client as the frontend uses it; owners: subscription -> sender address."""

    def __init__(self, owners: dict[str, str]):
        self.owned = owners
        self.acks: list[tuple[str, list[str]]] = []
        self.deadlines: list[pubsub_pb2.ModifyAckDeadlineRequest] = []
        self.nacks: list[pubsub_pb2.NackRequest] = []
        self.streams: dict[str, int] = {}  # subscription -> Subscribe streams the senders count
        self.pulls: list[pubsub_pb2.PullRequest] = []

    def owner_addr(self, subscription: str, partition: int = 0) -> str:
        """owners: "subscription/partition" or, for every partition, "subscription"."""
        addr = self.owned.get(f"{subscription}/{partition}", self.owned.get(subscription))
        if addr is None:
            raise errors.Unavailable("no live sender node")
        return addr

    def owners(self, subscription: str, partitions: int) -> dict[str, list[int]]:
        owned: dict[str, list[int]] = {}
        for partition in range(partitions):
            owned.setdefault(self.owner_addr(subscription, partition), []).append(partition)
        return owned

    def by_owner(self, pairs) -> dict[str, list[str]]:
        grouped: dict[str, list[str]] = {}
        for (subscription, partition), ids in pairs.items():
            grouped.setdefault(self.owner_addr(subscription, partition), []).extend(ids)
        return grouped

    def subscribe(self, addr: str, request):
        raise NotImplementedError

    async def acknowledge(self, addr: str, ack_ids: list[str]) -> None:
        self.acks.append((addr, list(ack_ids)))

    async def modify_ack_deadline(self, request, pairs) -> None:
        self.deadlines.append(request)

    async def nack(self, request, pairs) -> None:
        self.nacks.append(request)

    async def count_streams(self, subscriptions: list[str]) -> dict[str, int]:
        return {name: self.streams[name] for name in subscriptions if name in self.streams}

    async def pull(self, request, addr: str = "") -> pubsub_pb2.PullResponse:
        self.pulls.append(request)
        return pubsub_pb2.PullResponse()


class FakeMetadata:
    def __init__(self):
        self.calls: list[tuple[str, Any]] = []

    async def call(self, method: str, request):
        self.calls.append((method, request))
        return None


async def subscribed(dispatcher, name: str, max_outstanding: int, trace_context: bool = False):
    """A subscriber's stream on the Dispatcher, as Sender.Relay serves one (sender/relay.py
    without the call): connected, its frames, disconnected when closed."""
    from sender.dispatch import Stream
    stream = Stream(max_outstanding, trace_context=trace_context)
    subscription = await dispatcher.connect(name, stream)
    try:
        async for frame in stream.frames():
            yield frame
    finally:
        await dispatcher.disconnect(name, subscription, stream)
