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
goes at once, as always (as 50,000 streams closed, the frozen set fell from 3.8
to 1.8 million objects before a check saw it); one that dies in a reference cycle waits until
the frozen set outgrew both THAW_GROWTH times what the last walk left and
FROZEN_FLOOR; then it is thawed, everything walked once (the pause this avoids
otherwise) and what lives frozen again. So the frozen set, its cyclic garbage
included, is at most the larger of those two. Little dies in cycles: a walk at
that point collected 10,288 objects. That walk (a first version walked once half
of the most frozen was gone) took 5.1 s with 2.6 million objects still alive and
let the lease lapse: a walk costs what lives, not what went, so none is made for
what went.
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
# Measured: the frontend tracked about 150,000 objects before its streams and 4.4
# million with 50,000 open (85 a stream), so this is about 57,000 streams' worth.
FROZEN_FLOOR = 5_000_000
# Counting the frozen walks their list: 11 ms per million objects (measured), 48 ms
# at 50,000 streams; checked once a second that was 7 % of the frontend's samples
# while a message went to 10,000 streams (py-spy). Once a minute: the bound may be
# passed by a minute's growth.
THAW_CHECK_S = 60.0


class FrozenSurvivors:
    """Freezes what the process holds at start and the survivors of each collection
    of generation 1 or 2 (from gc's callback, as the collection ends); checks the
    bound above each THAW_CHECK_S and, past it, thaws and walks everything once."""

    def __init__(self):
        self.walked = 0  # frozen after the last walk of everything (start, thaw)
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        self._walk_all()
        gc.callbacks.append(self._collected)
        self._task = asyncio.create_task(self._run())

    def _walk_all(self) -> None:
        gc.unfreeze()
        gc.collect()
        gc.freeze()
        self.walked = gc.get_freeze_count()

    def _collected(self, phase: str, info: dict) -> None:
        if phase == "stop" and info["generation"] > 0:
            gc.freeze()  # moves lists: no allocation, no lock

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(THAW_CHECK_S)
            self.check()

    def check(self) -> None:
        """Past the bound: thawed, walked once (collecting the cyclic garbage of the
        frozen), and what lives frozen again."""
        now = gc.get_freeze_count()
        if now > max(THAW_GROWTH * self.walked, FROZEN_FLOOR):
            walked, started = self.walked, time.perf_counter()
            self._walk_all()
            log.info("frozen objects walked again", extra=fields(frozen=now, last_walk=walked, now=self.walked,
                                                                 took_s=round(time.perf_counter() - started, 2)))

    async def stop(self) -> None:
        if self._collected in gc.callbacks:
            gc.callbacks.remove(self._collected)
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        gc.unfreeze()
