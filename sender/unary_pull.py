"""A unary pull (Subscriber.Pull): up to max_messages of one subscription, leased
from the leaders of its topic's partitions and returned, without a stream.

The partitions are asked in turn, each at once (wait 0) for what the pull still
has room for, so it never leases more than max_messages (a lease handed back
would cost its message a delivery attempt). When none has a message and the
caller waits, every partition is long-polled with max_messages 0, which leases
nothing, and the first that has one is asked again. A topic of one partition
needs no such watch: its lease itself waits. The messages pass through as
storage serialized them; the sender keeps nothing of them (their acks go to
storage like any others).
"""

import asyncio
import logging
from typing import Callable

from gen.notifymesh.internal.v1 import storage_pb2
from notifymesh import errors
from notifymesh.log import fields
from notifymesh.server import rpc
from notifymesh.server.status import status_of

log = logging.getLogger(__name__)

# Longest wait of one storage call: a longer wait is a series of them, each well
# within the storage client's exchange timeout (PULL_TIMEOUT_S).
STORAGE_WAIT_MS = 10_000


class UnaryPull:
    """One Pull call's work on the shards of one topic."""

    def __init__(self, storage, topic: str, partitions: int, first: int = 0,
                 owned: Callable[[int], bool] = lambda partition: True):
        """storage: a sender.dispatch.DispatchStorage; first: the partition asked first
        (callers rotate it, so no partition is always drained before the others);
        owned(partition): whether this sender serves that partition of the subscription
        (the others are left to their owners)."""
        self._storage, self.topic = storage, topic
        self._order = [p for p in ((first + i) % partitions for i in range(partitions)) if owned(p)]
        self._streams: dict[int, rpc.LockstepStream] = {}  # at most one per partition, closed by run()

    async def run(self, name: str, max_messages: int, ack_deadline_ms: int, wait_ms: int) -> list[bytes]:
        """The serialized ReceivedMessages leased: as soon as any are, else once
        wait_ms has passed (then maybe none). NOT_FOUND when the subscription is gone;
        the error of the partitions when every one of them failed."""
        loop = asyncio.get_running_loop()
        give_up = loop.time() + wait_ms / 1000
        received: list[bytes] = []
        if not self._order:  # the pairs moved to other senders meanwhile
            raise errors.Unavailable(f"this sender serves no partition of subscription {name!r} now")
        try:
            while True:
                failures = []
                for partition in self._order:
                    room = max_messages - len(received)
                    if room <= 0:
                        break
                    # One partition: its lease is the long poll.
                    wait = self._wait_ms(give_up - loop.time()) if len(self._order) == 1 else 0
                    try:
                        received += await self._pull(partition, name, room, ack_deadline_ms, wait)
                    except errors.NotFound:
                        raise
                    except Exception as e:  # this partition's leader is away: the others may serve
                        failures.append(e)
                if received or loop.time() >= give_up:
                    if not received and len(failures) == len(self._order):
                        raise failures[0]
                    return received
                if len(failures) == len(self._order):
                    raise failures[0]
                if len(self._order) > 1:
                    await self._first_ready(name, ack_deadline_ms, give_up - loop.time())
        finally:
            for stream in self._streams.values():
                stream.close()

    @staticmethod
    def _wait_ms(remaining_s: float) -> int:
        return max(0, min(STORAGE_WAIT_MS, int(remaining_s * 1000)))

    async def _pull(self, partition: int, name: str, max_messages: int, ack_deadline_ms: int,
                    wait_ms: int) -> list[bytes]:
        stream = self._streams.get(partition)
        if stream is None:
            stream = self._streams[partition] = self._storage.pull_stream()
        # No sender_addr: a watch cut short here must not look to storage like a dead sender.
        request = storage_pb2.PullRequest(topic=self.topic, partition=partition, wait_ms=wait_ms)
        request.subscriptions.add(name=name, max_messages=max_messages, ack_deadline_ms=ack_deadline_ms)
        response = await self._storage.pull(stream, request)
        received: list[bytes] = []
        for pulled in response.subscriptions:
            if pulled.not_found:
                raise errors.NotFound(f"subscription {name!r} not found")
            received += pulled.received_messages
        return received

    async def _first_ready(self, name: str, ack_deadline_ms: int, remaining_s: float) -> None:
        """Returns once some partition has a deliverable message, or remaining_s passed."""
        watches = [asyncio.ensure_future(self._watch(p, name, ack_deadline_ms, remaining_s)) for p in self._order]
        try:
            done, _ = await asyncio.wait(watches, timeout=max(0.0, remaining_s),
                                         return_when=asyncio.FIRST_COMPLETED)
            for watch in done:
                watch.result()  # NOT_FOUND ends the pull
        finally:
            for watch in watches:
                watch.cancel()
            await asyncio.gather(*watches, return_exceptions=True)

    async def _watch(self, partition: int, name: str, ack_deadline_ms: int, remaining_s: float) -> None:
        try:
            await self._pull(partition, name, 0, ack_deadline_ms, self._wait_ms(remaining_s))
        except (errors.NotFound, asyncio.CancelledError):
            raise
        except Exception as e:  # waits out the rest instead: the other partitions may have messages
            log.info("pull watch failed", extra=fields(topic=self.topic, partition=partition,
                                                       error=status_of(e) or repr(e)))
            await asyncio.sleep(remaining_s)
