"""Coalescing of concurrent calls into one: group commit without a timer.

While a call for a key is in flight, the requests that arrive for the same key
wait, and all of them go out together in the next call as soon as it returns.
An idle key sends at once, so batching adds no latency when there is no load;
under load one call carries many requests, which is where Python's per-call
gRPC cost goes away. Calls off every latency path can be given a linger: an
idle key's first call then waits that long for the requests that follow it.
"""

import asyncio
from collections import defaultdict, deque
from dataclasses import dataclass
from typing import Awaitable, Callable, Generic, Hashable, Sequence, TypeVar

from notifymesh import errors

Item = TypeVar("Item")
Result = TypeVar("Result")


@dataclass
class _Request(Generic[Item]):
    items: Sequence[Item]
    size: int
    done: asyncio.Future


class Coalescer(Generic[Item, Result]):
    def __init__(self, send: Callable[[Hashable, list[Item]], Awaitable[Sequence[Result] | None]],
                 max_items: int = 1000, max_bytes: int = 8 * 1024 * 1024,
                 size_of: Callable[[Item], int] = lambda item: 0, linger_s: float = 0.0):
        """send(key, items) makes the call; it returns one result per item, or None.
        A merged call takes whole requests up to max_items and max_bytes (at least one).
        linger_s: how long an idle key's first call waits for more requests (0: none)."""
        self._send, self._max_items, self._max_bytes, self._size_of = send, max_items, max_bytes, size_of
        self._linger_s = linger_s
        self._waiting: dict[Hashable, deque[_Request]] = defaultdict(deque)
        self._busy: set[Hashable] = set()
        # The drains under way: the event loop keeps only weak references to tasks, so
        # a drain awaiting a call could be garbage collected with its callers waiting.
        self._drains: set[asyncio.Task] = set()
        self._loop: asyncio.AbstractEventLoop | None = None  # the loop of the last submit (_running_loop)

    def _running_loop(self) -> asyncio.AbstractEventLoop:
        """The running loop. Python 3.11's asyncio.get_running_loop() makes a getpid
        system call each time: 3.9 % of a busy sender's samples were that call in
        submit (py-spy --native, docs/benchmarks.md, 2026-12-01). The loop kept is the
        running one while it runs, as a Coalescer serves one loop at a time; once it
        has stopped (a test's next loop), the running one is looked up again."""
        loop = self._loop
        if loop is None or not loop.is_running():
            loop = self._loop = asyncio.get_running_loop()
        return loop

    async def submit(self, key: Hashable, items: Sequence[Item]) -> list[Result] | None:
        """Results for items, in order (None when send returns None); send's error
        fails every request of the merged call."""
        loop = self._running_loop()
        request = _Request(items, sum(map(self._size_of, items)), loop.create_future())
        self._waiting[key].append(request)
        if key not in self._busy:
            self._busy.add(key)
            drain = loop.create_task(self._drain(key))
            self._drains.add(drain)
            drain.add_done_callback(self._drains.discard)
        return await request.done

    async def _drain(self, key: Hashable) -> None:
        waiting = self._waiting[key]
        try:
            if self._linger_s:
                try:
                    await asyncio.sleep(self._linger_s)
                except asyncio.CancelledError:  # no request may hang
                    for request in waiting:
                        request.done.cancel()
                    waiting.clear()
                    raise
            while waiting:
                batch = [waiting.popleft()]
                count, size = len(batch[0].items), batch[0].size
                while waiting and count + len(waiting[0].items) <= self._max_items \
                        and size + waiting[0].size <= self._max_bytes:
                    request = waiting.popleft()
                    batch.append(request)
                    count, size = count + len(request.items), size + request.size
                await self._call(key, batch)
        finally:
            self._busy.discard(key)
            if not waiting:
                self._waiting.pop(key, None)

    async def _call(self, key: Hashable, batch: list[_Request]) -> None:
        items = [item for request in batch for item in request.items]
        try:
            results = await self._send(key, items)
        except BaseException as e:  # includes cancellation: no request may hang
            cancelled = isinstance(e, asyncio.CancelledError)
            # A CancelledError while this drain is not being cancelled came from inside the
            # call (a gRPC call another caller's failure cancelled): the batch failed, and
            # the drain goes on, else the requests waiting behind it would wait for ever.
            stopping = cancelled and asyncio.current_task().cancelling() > 0
            failure = errors.Unavailable(f"the call was cancelled: {e}".rstrip(": ")) \
                if cancelled and not stopping else e
            for request in batch:
                if not request.done.done():
                    request.done.set_exception(failure)
            if stopping:
                raise
            return
        start = 0
        for request in batch:
            if not request.done.done():
                request.done.set_result(None if results is None else list(results[start:start + len(request.items)]))
            start += len(request.items)
