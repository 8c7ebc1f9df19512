"""What survived a collection of the older generations is frozen (gc.freeze):
later collections do not walk it again.

A full (generation-2) collection walks every object the collector tracks and holds
the GIL throughout. With 50,000 streams open, the frontend's took 3.27-3.48 s and its
member lease (1 s keep-alives from a thread, 3 s TTL) lapsed right after it
(docs/benchmarks.md, 2026-12-01, issue 19). Freezing only what survived full
collections was not enough: the first one, while the streams attached, walked
them all. What survives a generation-1 collection has lived through ten of
generation 0 and is mostly long-lived (streams, connections, mirrors of etcd);
frozen at once (and the process's own objects at start), it never reaches a full
collection, which then walks little.

Bound on what is never collected: a frozen object freed by its reference count
goes at once, as always; one that dies in a reference cycle waits until the
frozen set is thawed and everything walked once (the pause this avoids otherwise).
That happens once half of the most frozen is gone (streams ended: the walk is then
over a heap about half the size), or once the frozen set outgrew both THAW_GROWTH
times what the last walk left and FROZEN_FLOOR. So the frozen set, its cyclic
garbage included, is at most the larger of those two. The full collections at
50,000 streams found 3,400-4,600 objects of garbage each: little of what they
walked died in cycles.
"""

import asyncio
import gc
import logging
import time

from notifymesh.log import fields

log = logging.getLogger(__name__)

# The processes that hold a stream per subscriber, whose objects are mostly that
# long-lived state; storage and metadata keep Python's collections as they are.
KINDS = ("frontend", "sender")
THAW_GROWTH = 4
# About 50,000 streams' worth at the frontend (measured: about 150,000 objects
# tracked before the streams); some hundreds of MB of objects at most.
FROZEN_FLOOR = 5_000_000
THAW_CHECK_S = 1.0


class FrozenSurvivors:
    """Freezes what the process holds at start and the survivors of each collection
    of generation 1 or 2 (from gc's callback, as the collection ends); checks the
    bounds above each THAW_CHECK_S and, past one, thaws and walks everything once."""

    def __init__(self):
        self.walked = 0  # frozen after the last walk of everything (start, thaw)
        self.peak = 0  # the most frozen since
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        self._walk_all()
        gc.callbacks.append(self._collected)
        self._task = asyncio.create_task(self._run())

    def _walk_all(self) -> None:
        gc.unfreeze()
        gc.collect()
        gc.freeze()
        self.walked = self.peak = gc.get_freeze_count()

    def _collected(self, phase: str, info: dict) -> None:
        if phase == "stop" and info["generation"] > 0:
            gc.freeze()  # moves lists: no allocation, no lock
            self.peak = max(self.peak, gc.get_freeze_count())

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(THAW_CHECK_S)
            self.check()

    def check(self) -> None:
        """Past a bound: thawed, walked once (collecting the cyclic garbage of the
        frozen), and what lives frozen again."""
        now = gc.get_freeze_count()
        if now < self.peak / 2 or now > max(THAW_GROWTH * self.walked, FROZEN_FLOOR):
            peak, walked = self.peak, self.walked
            started = time.perf_counter()
            self._walk_all()
            log.info("frozen objects walked again", extra=fields(frozen=now, peak=peak, last_walk=walked,
                                                                 now=self.walked,
                                                                 took_s=round(time.perf_counter() - started, 2)))

    async def stop(self) -> None:
        if self._collected in gc.callbacks:
            gc.callbacks.remove(self._collected)
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        gc.unfreeze()
