"""The pipeline's subscription workers over a fake dispatcher: outcomes become
acks and (deferred, delayed, terminal) nacks, held messages' leases are
extended, a drain finishes what is under way within its grace and hands back
the rest; workers follow ownership and a provider's concurrency."""

import asyncio

from fakes import eventually
from gen.notifymesh.v1 import pubsub_pb2
from sender.dispatch import Stream
from sender import pipeline
from sender.pipeline import ACK, Outcome, PipelineWorkers, SubscriptionWorker, WorkerSpec

SUB = "notifymesh.channel.email.send"


class FakeSub:
    def __init__(self, ack_deadline_ms: int = 30_000):
        self.ack_deadline_ms = ack_deadline_ms
        self.acks: list[str] = []
        self.nacks: list[tuple[pubsub_pb2.NackRequest, bool]] = []
        self.extended: list[list[str]] = []
        self.handed_back: list[str] = []
        self.stream: Stream | None = None
        self.detached = False

    def deliver(self, *ack_ids: str) -> None:
        """What the dispatcher does: the messages count against the stream's window."""
        self.stream.outstanding.update(ack_ids)
        self.stream.queue.put_nowait([pubsub_pb2.ReceivedMessage(ack_id=a, delivery_attempt=1).SerializeToString()
                                      for a in ack_ids])

    async def acknowledge(self, ack_ids):
        self.acks += ack_ids
        self.stream.outstanding.difference_update(ack_ids)

    async def nack(self, request, deferred=False):
        self.nacks.append((request, deferred))
        self.stream.outstanding.difference_update(request.ack_ids)

    async def modify_ack_deadline(self, ack_ids, ack_deadline_ms):
        self.extended.append(sorted(ack_ids))

    def detach(self, stream):
        self.detached = True

    async def remove(self, stream):
        self.handed_back += sorted(stream.outstanding)
        stream.outstanding.clear()


class FakeDispatcher:
    def __init__(self, owned=True):
        self.sub = FakeSub()
        self.owned = owned
        self.attached: list[tuple[str, int]] = []

    async def attach(self, name, stream):
        self.attached.append((name, stream.max_outstanding))
        self.sub.stream = stream
        return self.sub

    def owns(self, name):
        return self.owned


class ScriptedHandler:
    """Answers each message with outcomes[ack_id]; ack ids in gates wait for their event."""

    def __init__(self, outcomes=None):
        self.outcomes = outcomes or {}
        self.gates: dict[str, asyncio.Event] = {}
        self.started: list[str] = []

    async def handle(self, received):
        self.started.append(received.ack_id)
        if received.ack_id in self.gates:
            await self.gates[received.ack_id].wait()
        outcome = self.outcomes.get(received.ack_id, ACK)
        if isinstance(outcome, Exception):
            raise outcome
        return outcome


class ScriptedBatchHandler:
    """A BatchHandler: each message answered by outcomes[ack_id] (default ACK); the
    batches it was given recorded; a batch holding an ack id in fail raises."""

    def __init__(self, outcomes=None, fail=()):
        self.outcomes, self.fail = outcomes or {}, set(fail)
        self.weights: dict[str, int] = {}  # by ack id (default 1)
        self.rooms: list[bool] = []  # room()'s full, each call
        self.batches: list[list[str]] = []
        self.full = asyncio.Event()  # set: room() waits until it is cleared
        self.emptied = asyncio.Event()

    async def room(self, full):
        self.rooms.append(full)
        while self.full.is_set():
            await self.emptied.wait()
            self.emptied.clear()

    def weight(self, received):
        return self.weights.get(received.ack_id, 1)

    async def handle_batch(self, batch):
        ids = [received.ack_id for received in batch]
        self.batches.append(ids)
        if self.fail & set(ids):
            raise RuntimeError("table unreachable")
        return [self.outcomes.get(ack_id, ACK) for ack_id in ids]


async def test_a_batch_handler_gets_a_frame_in_bounded_batches_whose_acks_go_in_one_call(monkeypatch):
    monkeypatch.setattr(pipeline, "BATCH", 3)
    dispatcher = FakeDispatcher()
    handler = ScriptedBatchHandler({"b": Outcome(ack=False, delay_ms=5000, deferred=True, reason="rate limited")})
    acks_calls = []
    acknowledge = dispatcher.sub.acknowledge

    async def counted(ack_ids):
        acks_calls.append(list(ack_ids))
        await acknowledge(ack_ids)
    dispatcher.sub.acknowledge = counted
    worker = SubscriptionWorker(SUB, dispatcher, handler, window=16)
    await eventually(lambda: dispatcher.sub.stream is not None)
    dispatcher.sub.deliver("a", "b", "c", "d", "e")  # one frame
    await eventually(lambda: len(dispatcher.sub.acks) + len(dispatcher.sub.nacks) == 5)
    assert handler.batches == [["a", "b", "c"], ["d", "e"]]
    assert sorted(acks_calls) == [["a", "c"], ["d", "e"]]
    assert [(request.ack_ids[0], deferred) for request, deferred in dispatcher.sub.nacks] == [("b", True)]
    await worker.stop()


async def test_a_batch_weighs_its_messages_recipients_and_holds_at_least_one_message(monkeypatch):
    monkeypatch.setattr(pipeline, "BATCH", 50)
    dispatcher = FakeDispatcher()
    handler = ScriptedBatchHandler()
    handler.weights = {"a": 25, "b": 20, "c": 25, "d": 80, "e": 1}  # d: heavier than a batch
    worker = SubscriptionWorker(SUB, dispatcher, handler, window=16)
    await eventually(lambda: dispatcher.sub.stream is not None)
    dispatcher.sub.deliver("a", "b", "c", "d", "e")  # one frame
    await eventually(lambda: len(dispatcher.sub.acks) == 5)
    assert handler.batches == [["a", "b", "c"], ["d"], ["e"]]
    assert handler.rooms == [True, True, False]  # a whole batch waited for the first two
    await worker.stop()


async def test_messages_arriving_while_the_handler_has_no_room_go_in_one_batch_once_it_has(monkeypatch):
    monkeypatch.setattr(pipeline, "BATCH", 4)
    dispatcher = FakeDispatcher()
    handler = ScriptedBatchHandler()
    handler.full.set()
    worker = SubscriptionWorker(SUB, dispatcher, handler, window=16)
    await eventually(lambda: dispatcher.sub.stream is not None)
    for ack_id in "abcdef":  # a frame each, as a slow provider's stream refills its window
        dispatcher.sub.deliver(ack_id)
    await asyncio.sleep(0.05)
    assert handler.batches == [] and dispatcher.sub.stream.outstanding == set("abcdef")
    await worker.stop(grace_s=0)  # what waited for a batch is handed back
    assert dispatcher.sub.handed_back == list("abcdef")

    dispatcher = FakeDispatcher()
    worker = SubscriptionWorker(SUB, dispatcher, handler, window=16)
    await eventually(lambda: dispatcher.sub.stream is not None)
    for ack_id in "abcdef":
        dispatcher.sub.deliver(ack_id)
    await asyncio.sleep(0.05)
    handler.full.clear()
    handler.emptied.set()
    await eventually(lambda: len(dispatcher.sub.acks) == 6)
    assert handler.batches == [list("abcd"), list("ef")]
    await worker.stop()


class OneBatchAtATime(ScriptedBatchHandler):
    """Room for one batch under way: as a channel worker counts a batch's recipients
    before its first await, room() waits while one is."""

    def __init__(self):
        super().__init__()
        self.under_way, self.most_under_way, self.release = 0, 0, asyncio.Event()

    async def room(self, full):
        while self.under_way:
            await self.emptied.wait()
            self.emptied.clear()

    async def handle_batch(self, batch):
        self.under_way += 1
        self.most_under_way = max(self.most_under_way, self.under_way)
        try:
            await self.release.wait()
            return await super().handle_batch(batch)
        finally:
            self.under_way -= 1
            self.emptied.set()


async def test_a_backlog_already_held_is_taken_a_batch_at_a_time_as_the_handler_has_room(monkeypatch):
    monkeypatch.setattr(pipeline, "BATCH", 2)
    dispatcher = FakeDispatcher()
    handler = OneBatchAtATime()
    worker = SubscriptionWorker(SUB, dispatcher, handler, window=16)
    await eventually(lambda: dispatcher.sub.stream is not None)
    dispatcher.sub.deliver(*"abcdef")  # one frame: three batches' worth held at once
    await asyncio.sleep(0.05)
    assert handler.under_way == 1
    handler.release.set()
    await eventually(lambda: len(dispatcher.sub.acks) == 6)
    assert handler.most_under_way == 1 and handler.batches == [list("ab"), list("cd"), list("ef")]
    await worker.stop()


async def test_a_worker_whose_handler_fails_to_say_it_has_room_stops_and_hands_its_messages_back():
    dispatcher = FakeDispatcher()
    handler = ScriptedBatchHandler()

    async def broken_room():
        raise RuntimeError("a bug")
    handler.room = broken_room
    worker = SubscriptionWorker(SUB, dispatcher, handler, window=16)
    await eventually(lambda: dispatcher.sub.stream is not None)
    dispatcher.sub.deliver("a", "b")
    await asyncio.wait([worker.task], timeout=2)
    assert worker.task.done() and dispatcher.sub.handed_back == ["a", "b"]  # not held with leases for ever


async def test_a_failed_batch_nacks_each_of_its_messages():
    dispatcher = FakeDispatcher()
    handler = ScriptedBatchHandler(fail={"x"})
    worker = SubscriptionWorker(SUB, dispatcher, handler, window=16)
    await eventually(lambda: dispatcher.sub.stream is not None)
    dispatcher.sub.deliver("x", "y")
    await eventually(lambda: len(dispatcher.sub.nacks) == 2)
    assert dispatcher.sub.acks == []
    assert all("table unreachable" in request.reason for request, _ in dispatcher.sub.nacks)
    await worker.stop()


async def test_outcomes_become_acks_and_nacks():
    dispatcher = FakeDispatcher()
    handler = ScriptedHandler({"b": Outcome(ack=False, delay_ms=5000, deferred=True, reason="rate limited"),
                               "c": Outcome(ack=False, terminal=True, reason="dead"),
                               "d": RuntimeError("table unreachable")})
    worker = SubscriptionWorker(SUB, dispatcher, handler, window=8)
    await eventually(lambda: dispatcher.sub.stream is not None)
    dispatcher.sub.deliver("a", "b", "c", "d")
    await eventually(lambda: len(dispatcher.sub.acks) + len(dispatcher.sub.nacks) == 4)
    assert dispatcher.sub.acks == ["a"]
    nacks = {request.ack_ids[0]: (request, deferred) for request, deferred in dispatcher.sub.nacks}
    assert nacks["b"][1] is True and nacks["b"][0].delay.ToMilliseconds() == 5000
    assert nacks["c"][0].terminal and not nacks["c"][1]
    assert "table unreachable" in nacks["d"][0].reason and not nacks["d"][0].HasField("delay")
    assert dispatcher.attached == [(SUB, 8)]
    await worker.stop()


async def test_held_messages_have_their_leases_extended():
    dispatcher = FakeDispatcher()
    dispatcher.sub.ack_deadline_ms = 300  # extended every 100 ms
    handler = ScriptedHandler()
    handler.gates["slow"] = asyncio.Event()
    worker = SubscriptionWorker(SUB, dispatcher, handler, window=8)
    await eventually(lambda: dispatcher.sub.stream is not None)
    dispatcher.sub.deliver("slow")
    await eventually(lambda: len(dispatcher.sub.extended) >= 2, timeout_s=2)
    assert dispatcher.sub.extended[0] == ["slow"]
    handler.gates["slow"].set()
    await eventually(lambda: dispatcher.sub.acks == ["slow"])
    await worker.stop()


async def test_a_drain_finishes_what_is_under_way_and_hands_back_the_rest():
    dispatcher = FakeDispatcher()
    handler = ScriptedHandler()
    handler.gates["quick"], handler.gates["stuck"] = asyncio.Event(), asyncio.Event()
    worker = SubscriptionWorker(SUB, dispatcher, handler, window=8)
    await eventually(lambda: dispatcher.sub.stream is not None)
    dispatcher.sub.deliver("quick", "stuck")
    await eventually(lambda: len(handler.started) == 2)
    asyncio.get_running_loop().call_later(0.05, handler.gates["quick"].set)
    await worker.stop(grace_s=0.3)
    assert dispatcher.sub.acks == ["quick"]  # finished within the grace
    assert dispatcher.sub.handed_back == ["stuck"]  # given back for another sender


async def test_a_worker_whose_stream_ends_lets_its_messages_finish():
    """Ownership lost (the puller ends the stream, e.g. a lease that lapsed for a
    moment): the messages under way are still leased to this sender and finish."""
    dispatcher = FakeDispatcher()
    handler = ScriptedHandler()
    handler.gates["page"] = asyncio.Event()
    worker = SubscriptionWorker(SUB, dispatcher, handler, window=8, grace_s=5.0)
    await eventually(lambda: dispatcher.sub.stream is not None)
    dispatcher.sub.deliver("page")
    await eventually(lambda: handler.started == ["page"])
    dispatcher.sub.stream.queue.put_nowait(RuntimeError("this sender no longer serves it"))
    await eventually(lambda: dispatcher.sub.detached)
    handler.gates["page"].set()
    ended, _ = await asyncio.wait([worker.task], timeout=2)
    # Ended with the stream's error, taken here as PipelineWorkers takes it (worker.stop):
    # a task whose exception nobody retrieves logs it from its finalizer, which a
    # collection can run inside a later ast.parse (pytest importing hypothesis at the
    # session's end), and CPython 3.11.7 then fails with "AST constructor recursion
    # depth mismatch".
    assert ended == {worker.task} and isinstance(worker.task.exception(), RuntimeError)
    assert dispatcher.sub.acks == ["page"] and dispatcher.sub.handed_back == []


class FakeMirror:
    def __init__(self, names):
        self.items = {name: pubsub_pb2.Subscription(name=name) for name in names}

    def on_change(self, listener):
        pass


class FakeCluster:
    def __init__(self, names):
        self.subscriptions = FakeMirror(names)
        self.members = FakeMirror([])


async def test_workers_follow_ownership_and_the_window():
    dispatcher = FakeDispatcher()
    windows = {"w": 4}
    handler = ScriptedHandler()
    workers = PipelineWorkers(FakeCluster([SUB]), dispatcher, lambda: {SUB: WorkerSpec(handler, windows["w"]),
                                                                       "not-created-yet": WorkerSpec(handler, 1)},
                              drain_grace_s=0.1)
    await workers._reconcile()
    assert list(workers.workers) == [SUB]
    await eventually(lambda: dispatcher.attached == [(SUB, 4)])
    windows["w"] = 16  # the provider's max_concurrency changed
    await workers._reconcile()
    await eventually(lambda: dispatcher.attached == [(SUB, 4), (SUB, 16)])
    handler.gates["under-way"] = asyncio.Event()
    dispatcher.sub.deliver("under-way")
    await eventually(lambda: "under-way" in handler.started)
    dispatcher.owned = False
    await workers._reconcile()  # does not wait for the old worker's grace
    assert workers.workers == {}
    handler.gates["under-way"].set()
    await eventually(lambda: dispatcher.sub.acks == ["under-way"])  # finished, not cancelled
    await workers.stop()
