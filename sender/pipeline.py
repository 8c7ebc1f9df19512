"""The notification pipeline's workers inside a sender: one per internal
subscription (the fan-out's, and each channel's normal and high priority one)
that this sender owns on the ring, following etcd as senders come and go.

A worker is one more consumer of its subscription's dispatcher (like a push
worker, sender/push.py): a stream whose window bounds the messages it holds.
Each message is handled by a task of its own (a Handler), or by a task per
batch of messages weighing at most BATCH (a BatchHandler: the channel workers,
whose message weighs its task's recipients): the
messages received wait until the handler has room, then go together. Each
message is answered an Outcome: ack, or nack (with a delay, deferred, or
terminal); a batch's acks go in one call. While messages are held, their
leases are extended every third of the ack deadline, in one call, so a big
audience's fan-out or a slow provider does not see its message delivered again
elsewhere. A worker that stops (drain, ownership moved, its stream ended) takes
nothing new, lets what is under way finish within a grace period (still
extending their leases: no other sender gets those messages meanwhile), and
hands the rest back. Cancelling the work under way at once made a sender whose
etcd lease lapsed for a moment under load (bench/notify.py beside other test
suites: every ~10 s) start every fan-out page again, and never finish one.
"""

import asyncio
import logging
from collections import deque
from typing import Callable, NamedTuple, Protocol, runtime_checkable

from gen.notifymesh.v1 import pubsub_pb2
from notifymesh.log import fields
from notifymesh.server import tracing, validation
from notifymesh.server.cluster import ChangedNames, Cluster
from sender.dispatch import Dispatcher, Stream, SubscriptionDispatcher

log = logging.getLogger(__name__)

FOLLOW_EVERY_S = 1.0  # also reconciled this often: a provider's concurrency changed, a worker ended
# A BatchHandler's batch weighs at most this much: a channel worker's, this many
# recipients (its tasks carry up to 25 each). The memory of a batch, and of the
# messages waiting for one, is within the stream's window. A batch is answered
# once its slowest message is, so a channel's window (2,048 tasks) holds several
# batches and a provider stays busy while one batch waits for its last send. A
# batch's reads fit one read_many (channel_worker.READS_PER_CALL). Not tuned
# against other sizes.
BATCH = 500


class Outcome(NamedTuple):
    """What becomes of a handled message."""
    ack: bool
    delay_ms: int | None = None  # a nack's: None for the retry policy's backoff
    deferred: bool = False  # a nack that counts no attempt (a rate-limit delay, no provider yet)
    terminal: bool = False  # a nack straight to the dead-letter topic
    reason: str = ""


ACK = Outcome(ack=True)


class Handler(Protocol):
    async def handle(self, received: pubsub_pb2.ReceivedMessage) -> Outcome: ...


@runtime_checkable
class BatchHandler(Protocol):
    async def room(self, full: bool) -> None:
        """Returns when the handler should take its next batch; full: a whole batch
        waits for it."""

    def weight(self, received: pubsub_pb2.ReceivedMessage) -> int:
        """What a message counts for in a batch (at least 1)."""

    async def handle_batch(self, batch: list[pubsub_pb2.ReceivedMessage]) -> list[Outcome]:
        """An outcome per message, in order; traces each message's handling itself
        (tracing.begin_handle_span). Raising fails the whole batch (each nacked)."""


def failed(e: Exception) -> Outcome:
    """A message whose handling raised (a bug, an unreachable table): retried by the subscription's policy."""
    return Outcome(ack=False, reason=f"{type(e).__name__}: {e}"[:validation.MAX_REASON_BYTES])


class SubscriptionWorker:
    def __init__(self, name: str, dispatcher: Dispatcher, handler: Handler | BatchHandler, window: int,
                 grace_s: float = 0.0):
        """grace_s: how long the messages under way may take to finish once the worker stops."""
        self.name, self.window = name, window
        self._dispatcher, self._handler = dispatcher, handler
        self._handlers: set[asyncio.Task] = set()
        # Waiting for a batch (within the window), each with its weight; and their weight in all.
        self._received: deque[tuple[pubsub_pb2.ReceivedMessage, int]] = deque()
        self._received_weight = 0
        self._arrived = asyncio.Event()
        self._grace_s = grace_s
        self._loop = asyncio.get_running_loop()
        self.task = self._loop.create_task(self._run())

    async def stop(self, grace_s: float | None = None) -> None:
        """Takes nothing new; waits up to grace_s (default: the worker's) for the
        messages being handled."""
        if grace_s is not None:
            self._grace_s = grace_s
        self.task.cancel()
        await asyncio.gather(self.task, return_exceptions=True)

    async def _run(self) -> None:
        stream = Stream(self.window)
        sub = await self._dispatcher.attach(self.name, stream)
        keeper = asyncio.create_task(self._keep_leased(sub, stream))
        log.info("pipeline worker started", extra=fields(subscription=self.name, window=self.window))
        batcher = None
        if isinstance(self._handler, BatchHandler):
            batcher = asyncio.create_task(self._take_batches(sub))
            batcher.add_done_callback(self._batcher_ended)
        try:
            async for frame in stream.frames():
                received = [pubsub_pb2.ReceivedMessage.FromString(raw) for raw in frame.received_messages]
                if batcher is not None:
                    for message in received:
                        weight = self._handler.weight(message)
                        self._received.append((message, weight))
                        self._received_weight += weight
                    self._arrived.set()
                else:
                    for message in received:
                        self._start(self._handle(sub, message))
        finally:
            sub.detach(stream)  # nothing new comes
            if batcher is not None:  # what waits for a batch is handed back below
                batcher.cancel()
                await asyncio.gather(batcher, return_exceptions=True)
            if self._handlers and self._grace_s:
                await asyncio.wait(list(self._handlers), timeout=self._grace_s)
            keeper.cancel()
            for task in list(self._handlers):
                task.cancel()
            await asyncio.gather(*self._handlers, keeper, return_exceptions=True)
            await sub.remove(stream)  # what is not acknowledged goes back for redelivery now

    def _start(self, handling) -> None:
        # asyncio.create_task looks the loop up: a getpid system call in Python 3.11 (batching.py).
        task = self._loop.create_task(handling)
        self._handlers.add(task)
        task.add_done_callback(self._handlers.discard)

    def _batcher_ended(self, batcher: asyncio.Task) -> None:
        # Only a bug ends it: the worker stops (handing back what it holds) rather
        # than extend their leases for ever; PipelineWorkers starts another.
        if not batcher.cancelled() and batcher.exception() is not None:
            log.error("pipeline batches stopped", exc_info=batcher.exception(),
                      extra=fields(subscription=self.name))
            self.task.cancel()

    async def _take_batches(self, sub: SubscriptionDispatcher) -> None:
        while True:
            await self._arrived.wait()
            await self._handler.room(self._received_weight >= BATCH)
            batch, weight = [], 0
            while self._received and weight < BATCH:  # at least one message, however heavy
                message, message_weight = self._received.popleft()
                batch.append(message)
                weight += message_weight
            self._received_weight -= weight
            if not self._received:
                self._arrived.clear()
            self._start(self._handle_batch(sub, batch))
            # The batch's task counts itself in room() before the next batch is taken: without
            # this, a backlog already held (a window of tasks of 25 recipients: 51,200) was
            # taken and rendered at once, whatever the provider's room.
            await asyncio.sleep(0)

    async def _keep_leased(self, sub: SubscriptionDispatcher, stream: Stream) -> None:
        while True:
            await asyncio.sleep(max(0.1, sub.ack_deadline_ms / 3000))
            held = list(stream.outstanding)
            if held:
                try:
                    await sub.modify_ack_deadline(held, sub.ack_deadline_ms)
                except Exception as e:  # storage unreachable: the next round tries again
                    log.warning("lease extension failed", extra=fields(subscription=self.name, error=repr(e)))

    async def _handle(self, sub: SubscriptionDispatcher, received: pubsub_pb2.ReceivedMessage) -> None:
        try:
            with tracing.handle_span(self.name, received):
                outcome = await self._handler.handle(received)
        except asyncio.CancelledError:
            raise
        except Exception as e:
            log.warning("pipeline message failed", exc_info=True,
                        extra=fields(subscription=self.name, message=received.message.message_id))
            outcome = failed(e)
        await self._answer(sub, [received], [outcome])

    async def _handle_batch(self, sub: SubscriptionDispatcher, batch: list[pubsub_pb2.ReceivedMessage]) -> None:
        try:
            outcomes = await self._handler.handle_batch(batch)
        except asyncio.CancelledError:
            raise
        except Exception as e:
            log.warning("pipeline batch failed", exc_info=True,
                        extra=fields(subscription=self.name, messages=len(batch)))
            outcomes = [failed(e)] * len(batch)
        await self._answer(sub, batch, outcomes)

    async def _answer(self, sub: SubscriptionDispatcher, received: list[pubsub_pb2.ReceivedMessage],
                      outcomes: list[Outcome]) -> None:
        """The acks in one call, each nack apart (its delay, reason and kind its own)."""
        try:
            acked = [message.ack_id for message, outcome in zip(received, outcomes) if outcome.ack]
            if acked:
                await sub.acknowledge(acked)
            for message, outcome in zip(received, outcomes):
                if outcome.ack:
                    continue
                request = pubsub_pb2.NackRequest(subscription=self.name, ack_ids=[message.ack_id],
                                                 terminal=outcome.terminal, reason=outcome.reason)
                if outcome.delay_ms is not None:
                    request.delay.FromMilliseconds(outcome.delay_ms)
                await sub.nack(request, deferred=outcome.deferred)
        except Exception as e:  # storage unreachable: the lease brings the message back
            log.warning("pipeline outcome not recorded", extra=fields(subscription=self.name, error=repr(e)))


class WorkerSpec(NamedTuple):
    handler: Handler | BatchHandler
    window: int


class PipelineWorkers:
    """Runs a SubscriptionWorker for every subscription that specs() names and this
    sender owns; a worker whose window changed (a provider's max_concurrency) is
    started again with the new one."""

    def __init__(self, cluster: Cluster, dispatcher: Dispatcher, specs: Callable[[], dict[str, WorkerSpec]],
                 drain_grace_s: float):
        self._cluster, self._dispatcher, self._specs, self._grace_s = cluster, dispatcher, specs, drain_grace_s
        self.workers: dict[str, SubscriptionWorker] = {}
        self._stopping: set[asyncio.Task] = set()  # workers finishing their grace (at most one per name per change)
        self._changed = ChangedNames()
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        self._cluster.subscriptions.on_change(self._changed.note)
        self._cluster.members.on_change(lambda _name: self._changed.note(None))  # ownership moved
        self._task = asyncio.create_task(self._follow())

    async def _follow(self) -> None:
        while True:
            try:
                await asyncio.wait_for(self._changed.event.wait(), FOLLOW_EVERY_S)
            except TimeoutError:
                pass
            self._changed.take()
            try:
                await self._reconcile()
            except Exception as e:  # a record gone meanwhile: the next round sees it
                log.warning("pipeline workers not reconciled", extra=fields(error=repr(e)))

    async def _reconcile(self) -> None:
        specs = self._specs()
        records = self._cluster.subscriptions.items
        for name in specs.keys() | self.workers.keys():
            spec = specs.get(name)
            wanted = spec is not None and name in records and self._dispatcher.owns(name)
            worker = self.workers.get(name)
            if worker is not None:
                if wanted and not worker.task.done() and worker.window == spec.window:
                    continue
                del self.workers[name]
                # Its messages under way finish in the background while a new worker (when
                # wanted) takes new ones: they are leased to this sender, so no one else has them.
                stopping = asyncio.create_task(worker.stop())
                self._stopping.add(stopping)
                stopping.add_done_callback(self._stopping.discard)
            if wanted:
                self.workers[name] = SubscriptionWorker(name, self._dispatcher, spec.handler, spec.window,
                                                        self._grace_s)

    async def stop(self) -> None:
        """Drains: every worker takes nothing new and finishes or hands back what it holds."""
        if self._task:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        workers, self.workers = list(self.workers.values()), {}
        await asyncio.gather(*(w.stop() for w in workers), *self._stopping)
