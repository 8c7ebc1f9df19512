"""What survived a full garbage collection is frozen (gc.freeze): later collections
do not walk it again.

A full (generation-2) collection walks every object the collector tracks and holds
the GIL throughout. With 50,000 streams open, the frontend's took 3.27 s and its
member lease (1 s keep-alives from a thread, 3 s TTL) lapsed right after it
(docs/benchmarks.md, 2026-12-01, issue 19). What survives a full collection is
mostly long-lived: streams, connections, mirrors of etcd. Frozen, it is left out of
every later collection, which then walks only what was made since the last full one.

Bound on what is never collected: a frozen object freed by its reference count
goes at once, as always; one that dies in a reference cycle waits until the
frozen set is thawed (gc.unfreeze: the next full collection walks everything once
and freezes its survivors again). It is thawed once half of what was frozen is
gone (streams ended: the full walk is then over a heap about half the size) or
once the frozen set grew past THAW_GROWTH times what the last full walk left.
So the frozen set, its cyclic garbage included, is at most THAW_GROWTH times the
survivors of the last full walk, and each full walk is paid once per that growth.
The full collections at 50,000 streams found 3,400-4,600 objects of garbage each:
little of what they walked dies in cycles.
"""

import asyncio
import gc
import logging

from notifymesh.log import fields

log = logging.getLogger(__name__)

THAW_GROWTH = 4
THAW_CHECK_S = 1.0


class FrozenSurvivors:
    """Freezes the survivors of each full collection (from gc's callback, as the
    collection ends) and thaws them by the bounds above (checked each THAW_CHECK_S)."""

    def __init__(self):
        self.walked = 0  # frozen after the last full collection that walked everything
        self.frozen = 0  # frozen after the last freeze
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        gc.callbacks.append(self._collected)
        self._task = asyncio.create_task(self._run())

    def _collected(self, phase: str, info: dict) -> None:
        if phase != "stop" or info["generation"] != 2:
            return
        walked_everything = gc.get_freeze_count() == 0
        gc.freeze()  # moves lists: no allocation, no lock
        self.frozen = gc.get_freeze_count()
        if walked_everything:
            self.walked = self.frozen

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(THAW_CHECK_S)
            self.check()

    def check(self) -> None:
        """Thaws the frozen set once half of it is gone or it outgrew its bound."""
        now = gc.get_freeze_count()
        if now and (now < self.frozen / 2 or now > THAW_GROWTH * self.walked):
            gc.unfreeze()
            log.info("frozen objects thawed; the next full collection walks them",
                     extra=fields(frozen=now, at_freeze=self.frozen, last_full_walk=self.walked))
            self.frozen = 0

    async def stop(self) -> None:
        if self._collected in gc.callbacks:
            gc.callbacks.remove(self._collected)
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        gc.unfreeze()
