"""The one retry backoff: exponential, capped, with jitter, used by the client
(reconnecting streams), the Publisher (retrying batches), the frontend (relaying
a sender's stream) and every service-to-service call (notifymesh.server.rpc)."""

import asyncio
import random
import time
from dataclasses import dataclass
from typing import Awaitable, Callable, TypeVar

T = TypeVar("T")


@dataclass(frozen=True)
class BackoffPolicy:
    first_s: float
    max_s: float
    multiplier: float = 2.0
    # Each wait is drawn from [(1 - jitter) * step, step], so many clients that
    # failed together (a frontend restarting) do not come back in step.
    jitter: float = 0.5


def retry_wait_ms(min_ms: int, max_ms: int, multiplier: float, attempt: int) -> int:
    """A subscription's wait after its failed delivery attempt number attempt
    (1-based): its retry policy's, without jitter (storage's nack backoff, and a
    channel task's part split off for a retry)."""
    return int(min(max_ms, min_ms * multiplier ** (attempt - 1)))


class Backoff:
    """The waits of one series of tries: each next_s() is longer, up to max_s;
    reset() after a success starts again from first_s."""

    def __init__(self, policy: BackoffPolicy):
        self.policy = policy
        self._step = policy.first_s

    def reset(self) -> None:
        self._step = self.policy.first_s

    def next_s(self) -> float:
        wait = self._step * random.uniform(1 - self.policy.jitter, 1)
        self._step = min(self._step * self.policy.multiplier, self.policy.max_s)
        return wait

    async def sleep(self, cut_short: asyncio.Event | None = None) -> None:
        """The next wait, or less once cut_short is set (what the wait was for may be
        ready: e.g. a new member to try)."""
        if cut_short is None:
            await asyncio.sleep(self.next_s())
            return
        try:
            await asyncio.wait_for(cut_short.wait(), self.next_s())
        except TimeoutError:
            pass


async def retry(attempt: Callable[[], Awaitable[T]], retryable: Callable[[Exception], bool],
                policy: BackoffPolicy, retry_for_s: float,
                cut_short: Callable[[], asyncio.Event] | None = None) -> T:
    """attempt() until it succeeds, fails with an error retryable() refuses, or
    retry_for_s has passed since the first try (the last try is at that bound);
    the last error is raised. cut_short(), taken before each try, gives an event
    that ends the wait after a failed one early (what it failed for may have
    changed: e.g. a new leader)."""
    give_up = time.monotonic() + retry_for_s
    backoff = Backoff(policy)
    while True:
        changed = cut_short() if cut_short is not None else None
        try:
            return await attempt()
        except Exception as e:
            left = give_up - time.monotonic()
            if left <= 0 or not retryable(e):
                raise
        wait = min(backoff.next_s(), left)
        if changed is None:
            await asyncio.sleep(wait)
            continue
        try:
            await asyncio.wait_for(changed.wait(), wait)
        except TimeoutError:
            pass
