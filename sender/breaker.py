"""A circuit breaker per provider, in each sender: while a provider fails, sends go
to the channel's next provider by priority (sender/notifications.py ChannelProviders)
instead of each task failing against it until its retries run out.

- closed: every send goes to the provider. It opens after `failures` transient
  failures in a row, or when at least ERROR_RATE of the sends answered in the last
  WINDOW_S failed transiently (with at least MIN_SENDS of them).
- open: no send goes to it; after `cooldown_s` it half-opens.
- half-open: one trial send goes to it (the others pass it over meanwhile); its
  success closes the breaker (with a fresh window), its failure opens it again for
  another cool-down (and the send goes on to the next provider).

Only transient failures count (timeouts, refused or dropped connections, 5xx,
429): a permanent one (a bad number, a 4xx) is the message's fault, and the
provider answered, so it counts as a success.

The thresholds (failures and cool-down are cluster settings:
provider_breaker_failures, provider_breaker_cooldown_s):
- 5 failures in a row: a dead provider fails every send under way (up to its
  max_concurrency, 32 by default) within one timeout, so it opens within the
  first round of sends; one or two failures in a row (a dropped connection, a
  single 503) happen with healthy providers and should not move traffic.
- 50% over 30 s with at least 20 sends: a provider failing half its sends has
  successes in between that reset the count in a row, and half of them failing
  costs every second task a retry; 20 sends keep a quiet channel's two failures
  in three from opening it.
- 30 s cool-down: one trial a cool-down per sender is a negligible load on a
  provider that is still down, and traffic returns within half a minute of its
  recovery.
"""

import time
from collections import deque
from typing import Callable, NamedTuple

WINDOW_S = 30.0
BUCKETS = 10  # the window's counts are kept in BUCKETS slices of WINDOW_S / BUCKETS
ERROR_RATE = 0.5
MIN_SENDS = 20
DEFAULT_FAILURES = 5
DEFAULT_COOLDOWN_S = 30.0

CLOSED, OPEN, HALF_OPEN = "closed", "open", "half_open"


class Permit(NamedTuple):
    """A send the breaker let through; trial: the half-open one whose result decides."""
    trial: bool


class BreakerStatus(NamedTuple):
    state: str
    sends: int  # answered in the window
    failures: int  # of them, failed transiently
    error_rate: float
    consecutive_failures: int
    retry_in_s: float  # open: until it half-opens; else 0
    last_error: str


class Breaker:
    def __init__(self, failures: Callable[[], int] = lambda: DEFAULT_FAILURES,
                 cooldown_s: Callable[[], float] = lambda: DEFAULT_COOLDOWN_S,
                 clock: Callable[[], float] = time.monotonic):
        """failures(), cooldown_s(): read at each use (live settings)."""
        self._failures, self._cooldown_s, self._clock = failures, cooldown_s, clock
        self.state = CLOSED
        self._opened_at = 0.0
        self._trial_out = False
        self._in_a_row = 0
        self._last_error = ""
        self._buckets: deque[list[int]] = deque(maxlen=BUCKETS)  # [bucket number, sends, failures]

    def _bucket(self) -> list[int]:
        number = int(self._clock() // (WINDOW_S / BUCKETS))
        if not self._buckets or self._buckets[-1][0] != number:
            self._buckets.append([number, 0, 0])
        return self._buckets[-1]

    def _window(self) -> tuple[int, int]:
        oldest = int(self._clock() // (WINDOW_S / BUCKETS)) - BUCKETS + 1
        live = [b for b in self._buckets if b[0] >= oldest]
        return sum(b[1] for b in live), sum(b[2] for b in live)

    def _cooled(self) -> bool:
        return self._clock() - self._opened_at >= self._cooldown_s()

    def permit(self) -> Permit | None:
        """A send may go to the provider (None: pass it over)."""
        if self.state == OPEN and self._cooled():
            self.state, self._trial_out = HALF_OPEN, False
        if self.state == CLOSED:
            return Permit(False)
        if self.state == HALF_OPEN and not self._trial_out:
            self._trial_out = True
            return Permit(True)
        return None

    def succeeded(self, permit: Permit) -> None:
        bucket = self._bucket()
        bucket[1] += 1
        self._in_a_row = 0
        if permit.trial and self.state == HALF_OPEN:
            self.state = CLOSED
            self._buckets.clear()  # the failures before it opened would open it again at once

    def failed(self, permit: Permit, reason: str) -> None:
        bucket = self._bucket()
        bucket[1] += 1
        bucket[2] += 1
        self._in_a_row += 1
        self._last_error = reason
        if self.state == HALF_OPEN and permit.trial:
            self._open()
        elif self.state == CLOSED:
            sends, failures = self._window()
            if self._in_a_row >= self._failures() or (sends >= MIN_SENDS and failures >= ERROR_RATE * sends):
                self._open()

    def abandoned(self, permit: Permit) -> None:
        """The send ended without an answer (cancelled): a trial may go again."""
        if permit.trial and self.state == HALF_OPEN:
            self._trial_out = False

    def _open(self) -> None:
        self.state, self._opened_at, self._trial_out = OPEN, self._clock(), False

    def retry_in_s(self) -> float:
        """Open: seconds until it half-opens; else 0."""
        if self.state != OPEN:
            return 0.0
        return max(0.0, self._opened_at + self._cooldown_s() - self._clock())

    def status(self) -> BreakerStatus:
        if self.state == OPEN and self._cooled():
            self.state, self._trial_out = HALF_OPEN, False
        sends, failures = self._window()
        return BreakerStatus(self.state, sends, failures, failures / sends if sends else 0.0, self._in_a_row,
                             self.retry_in_s(), self._last_error)
