"""What the push providers (fcm, apns) share: their signed JWTs, a bearer token
cached until shortly before it expires, and the back-off a provider's throttling
answer puts on every send to it. Clocks are injected (wall-clock seconds) so the
refresh and back-off rules are tested without waiting."""

import asyncio
import time
from typing import Awaitable, Callable, NamedTuple

import jwt

from sender.providers.base import TransientSendError

Clock = Callable[[], float]

THROTTLE_FIRST_S, THROTTLE_MAX_S = 1.0, 60.0  # back-off after a throttling answer without Retry-After


class Bearer(NamedTuple):
    token: str
    expires_at: float  # clock seconds


def signed_jwt(claims: dict, key: str, algorithm: str, key_id: str = "") -> str:
    """A JWT signed with the PEM private key (RS256 for FCM's service account,
    ES256 for APNs' .p8 key)."""
    return jwt.encode(claims, key, algorithm=algorithm, headers={"kid": key_id} if key_id else None)


class CachedBearer:
    """A bearer token made by fetch() (which answers the token and its expiry), kept
    until refresh_margin_s before that expiry; callers at once share one fetch."""

    def __init__(self, fetch: Callable[[], Awaitable[Bearer]], clock: Clock = time.time,
                 refresh_margin_s: float = 300.0):
        self._fetch, self._clock, self._margin = fetch, clock, refresh_margin_s
        self._current: Bearer | None = None
        self._refreshing: asyncio.Future | None = None

    async def get(self) -> str:
        current = self._current
        if current is not None and self._clock() < current.expires_at - self._margin:
            return current.token
        if self._refreshing is None:
            self._refreshing = asyncio.ensure_future(self._fetch())
            self._refreshing.add_done_callback(self._fetched)
        return (await asyncio.shield(self._refreshing)).token

    def _fetched(self, future: asyncio.Future) -> None:
        self._refreshing = None
        if not future.cancelled() and future.exception() is None:
            self._current = future.result()

    def invalidate(self, token: str) -> None:
        """The provider refused token (expired, revoked): the next get() makes another."""
        if self._current is not None and self._current.token == token:
            self._current = None


class Throttle:
    """A provider's throttling answers hold back every send to it: until its
    Retry-After, else for a back-off doubling from THROTTLE_FIRST_S to
    THROTTLE_MAX_S while throttling answers follow one another."""

    def __init__(self, provider: str, clock: Clock = time.time):
        self._provider, self._clock = provider, clock
        self._until = 0.0
        self._backoff = 0.0

    def check(self) -> None:
        """Raises TransientSendError while the provider is backed off from."""
        left = self._until - self._clock()
        if left > 0:
            raise TransientSendError(f"{self._provider} throttles our sends; backing off {left:.1f}s more", left)

    def throttled(self, retry_after_s: float | None, reason: str) -> TransientSendError:
        """Notes a throttling answer; the error to raise for it."""
        self._backoff = min(THROTTLE_MAX_S, self._backoff * 2) if self._backoff else THROTTLE_FIRST_S
        delay = retry_after_s if retry_after_s is not None else self._backoff
        self._until = max(self._until, self._clock() + delay)
        return TransientSendError(f"{reason}; backing off {delay:g}s", delay)

    def ok(self) -> None:
        self._backoff = 0.0
