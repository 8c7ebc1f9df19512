"""Per-caller abuse limits at the frontend: token buckets for publish (messages/s
and bytes/s) and admin calls/s, and a cap on concurrent streams.

Limits are cluster-wide per key (config auth_* defaults, per-key overrides in the
key's record: `auth key limits`); each frontend enforces its share, limit divided
by the live frontends. Clients spread calls over the frontends round robin, so
the cluster admits about the limit (tolerance: +/- one bucket's burst, a second's
worth, per frontend); a client that reaches only one of N frontends gets 1/N of it.
"""

import contextlib
import time
from collections import OrderedDict
from typing import Callable

from notifymesh import errors
from notifymesh.server.principal import Principal

MAX_CALLERS = 100_000  # buckets kept (least recently used dropped: a dropped one starts full again)
BURST_S = 1.0  # a bucket holds this many seconds of its rate
FRONTENDS_EVERY_S = 1.0


class Bucket:
    def __init__(self, now: float):
        self.tokens: float | None = None  # full at first use
        self.last = now

    def take(self, amount: float, rate: float, now: float) -> float:
        """0 after taking amount; else the seconds until it could be taken. A request
        larger than the burst passes on a full bucket, leaving it in debt."""
        burst = rate * BURST_S
        self.tokens = burst if self.tokens is None else min(burst, self.tokens + (now - self.last) * rate)
        self.last = now
        need = min(amount, burst)
        if self.tokens >= need:
            self.tokens -= amount
            return 0.0
        return (need - self.tokens) / rate


class Limits:
    def __init__(self, config, frontends: Callable[[], int], clock: Callable[[], float] = time.monotonic):
        """config: the live config (auth_* settings); frontends(): how many are live."""
        self._config, self._frontends, self._clock = config, frontends, clock
        self._buckets: OrderedDict[tuple[str, str], Bucket] = OrderedDict()
        self._streams: dict[str, int] = {}
        self._count, self._counted_at = 1, float("-inf")

    def _share(self, now: float) -> int:
        """How many frontends share the limits: counted at most once a FRONTENDS_EVERY_S."""
        if now - self._counted_at > FRONTENDS_EVERY_S:
            self._count, self._counted_at = max(1, self._frontends()), now
        return self._count

    def _limit(self, principal: Principal, name: str) -> float:
        """This frontend's share of the caller's limit `name` (a RateLimits field)."""
        limit = principal.limits.get(name) or getattr(self._config, f"auth_{name}")
        return limit / self._share(self._clock())

    def _take(self, principal: Principal, name: str, amount: float, unit: str) -> None:
        rate = self._limit(principal, name)
        key = (principal.id, name)
        now = self._clock()
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = Bucket(now)
            if len(self._buckets) > MAX_CALLERS:
                self._buckets.popitem(last=False)
        else:
            self._buckets.move_to_end(key)
        wait = bucket.take(amount, rate, now)
        if wait:
            raise errors.RateLimited(
                f"{principal.describe()} is over its limit of {rate * self._count:g} {unit} "
                f"({name}); retry in {wait:.2f}s", retry_after_s=wait)

    def publish(self, principal: Principal, messages: int, size: int) -> None:
        self._take(principal, "publish_messages_per_s", messages, "messages/s")
        self._take(principal, "publish_bytes_per_s", size, "bytes/s")

    def admin_call(self, principal: Principal) -> None:
        self._take(principal, "admin_calls_per_s", 1, "admin calls/s")

    @contextlib.contextmanager
    def stream(self, principal: Principal, method: str):
        """Holds one of the caller's concurrent streams while open."""
        most = max(1, int(self._limit(principal, "max_streams")))
        open_now = self._streams.get(principal.id, 0)
        if open_now >= most:
            raise errors.ResourceExhausted(f"{principal.describe()} has {open_now} streams open at this frontend, "
                                           f"its most (max_streams); close some first")
        self._streams[principal.id] = open_now + 1
        try:
            yield
        finally:
            left = self._streams[principal.id] - 1
            if left:
                self._streams[principal.id] = left
            else:
                del self._streams[principal.id]
