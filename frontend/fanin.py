"""A subscription whose (subscription, partition) pairs several senders own: one
client's Subscribe stream and unary Pull served by all of them.

Streaming: one upstream Subscribe to each sender that owns some pair, their frames
merged into the client's stream as they come (bytes, never decoded). Each
upstream's max_outstanding is the client's share for the partitions that sender
owns, rounded up (so the total exceeds the client's figure by less than one per
sender; 0 leaves each sender its default). The set of owners is reconciled at each
change of the sender ring (and every RECONCILE_S, for a topic given more
partitions): an upstream to a sender that owns no pair any more ends, and one to a
new owner opens, without ending the client's stream; a sender that keeps some pairs
keeps its upstream (its share stays what it was when it opened). What is queued
here is bounded by the upstreams' flow control: a sender sends no more than its
share unacknowledged.

Unary Pull: every owner is asked at once, without waiting, for its share of
max_messages (the shares add up to it); when none had a message and the pull
waits, all wait at once and the first answer with messages ends the others. One
ended in the instant its sender was leasing loses that lease until the ack
deadline, when storage delivers those messages again (one attempt counted).
"""

import asyncio
import logging
from typing import AsyncIterator, Awaitable, Callable

import grpc

from gen.notifymesh.v1 import pubsub_pb2
from notifymesh import errors

log = logging.getLogger(__name__)

RECONCILE_S = 5.0
_RECONCILE = "reconcile"  # queued: see who owns the pairs now

Owners = Callable[[], dict[str, list[int]]]  # sender address -> the partitions it owns
# (request, pick) -> frames of the sender pick() names, reconnecting, until pick() says None
Relay = Callable[[pubsub_pb2.SubscribeRequest, Callable[[], str | None]], AsyncIterator[bytes]]


class FanIn:
    """One client stream of a subscription, over every sender owning its pairs."""

    def __init__(self, request: pubsub_pb2.SubscribeRequest, partitions: int, owners: Owners, relay: Relay,
                 next_change: Callable[[], asyncio.Event]):
        self._request, self._partitions = request, partitions
        self._owners, self._relay, self._next_change = owners, relay, next_change
        self._queue: asyncio.Queue = asyncio.Queue()
        self._pumps: dict[str, asyncio.Task] = {}  # one per owning sender

    def _current(self) -> dict[str, list[int]]:
        try:
            return self._owners()
        except errors.Unavailable:  # no live sender: the ring's next change brings one
            return {}

    async def frames(self) -> AsyncIterator[bytes]:
        watcher = asyncio.create_task(self._watch())
        try:
            self._reconcile()
            while True:
                item = await self._queue.get()
                if item is _RECONCILE:
                    self._reconcile()
                elif isinstance(item, BaseException):
                    raise item
                else:
                    yield item
        finally:
            tasks = [watcher, *self._pumps.values()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    def _reconcile(self) -> None:
        owners = self._current()
        for addr in [a for a, task in self._pumps.items() if task.done() or a not in owners]:
            self._pumps.pop(addr).cancel()
        for addr, partitions in owners.items():
            if addr not in self._pumps:
                self._pumps[addr] = asyncio.create_task(self._pump(addr, len(partitions)))

    async def _watch(self) -> None:
        while True:
            try:
                await asyncio.wait_for(self._next_change().wait(), RECONCILE_S)
            except TimeoutError:
                pass
            self._queue.put_nowait(_RECONCILE)

    async def _pump(self, addr: str, pairs: int) -> None:
        request = pubsub_pb2.SubscribeRequest()
        request.CopyFrom(self._request)
        if request.max_outstanding_messages:
            request.max_outstanding_messages = -(-request.max_outstanding_messages * pairs // self._partitions)
        try:
            async for frame in self._relay(request, lambda: addr if addr in self._current() else None):
                self._queue.put_nowait(frame)
        except asyncio.CancelledError:
            raise
        except Exception as e:  # the client's stream ends with it
            self._queue.put_nowait(e)
            return
        self._queue.put_nowait(_RECONCILE)  # its pairs moved: to whom?


def shares(total: int, owners: dict[str, list[int]], partitions: int, turn: int) -> dict[str, int]:
    """total split over the owners by how many partitions each owns, adding up to
    total; the remainder goes one each from a rotating owner; owners of no share are left out."""
    addrs = list(owners)
    split = {addr: total * len(owners[addr]) // partitions for addr in addrs}
    for i in range(total - sum(split.values())):
        split[addrs[(turn + i) % len(addrs)]] += 1
    return {addr: n for addr, n in split.items() if n > 0}


async def pull(request: pubsub_pb2.PullRequest, owners: dict[str, list[int]], partitions: int, turn: int,
               pull_one: Callable[[pubsub_pb2.PullRequest, str], Awaitable[pubsub_pb2.PullResponse]],
               ) -> pubsub_pb2.PullResponse:
    """A unary pull over the owners (see the module's doc)."""
    split = shares(request.max_messages, owners, partitions, turn)

    def part(addr: str, wait: bool) -> Awaitable[pubsub_pb2.PullResponse]:
        asked = pubsub_pb2.PullRequest()
        asked.CopyFrom(request)
        asked.max_messages = split[addr]
        if not wait:
            asked.ClearField("wait")
        return pull_one(asked, addr)

    answered: list[pubsub_pb2.PullResponse] = []
    failures: list[BaseException] = []

    def note(result) -> None:
        if isinstance(result, grpc.aio.AioRpcError) and result.code() == grpc.StatusCode.NOT_FOUND:
            raise result
        (failures if isinstance(result, BaseException) else answered).append(result)

    for result in await asyncio.gather(*(part(addr, False) for addr in split), return_exceptions=True):
        note(result)
    if not any(r.received_messages for r in answered) and request.wait.ToMilliseconds() > 0:
        answered, failures = [], []
        waits = {asyncio.ensure_future(part(addr, True)) for addr in split}
        try:
            while waits and not any(r.received_messages for r in answered):
                done, waits = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    note(task.exception() or task.result())
        finally:
            for task in waits:
                task.cancel()
            await asyncio.gather(*waits, return_exceptions=True)
    if failures and not answered:
        raise failures[0]
    merged = pubsub_pb2.PullResponse()
    for response in answered:
        merged.received_messages.extend(response.received_messages)
    return merged
