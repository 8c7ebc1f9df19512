"""Tells a downstream system that a recipient was erased (right to be forgotten):
the providers notifymesh sent to keep their own copies of addresses, which only
they can delete. When `erasure_hook_url` is set, a DeleteRecipient POSTs
{"recipient": id, "addresses": [email, phone]} there after the erasure, as a
data controller informs its processors. `notifymesh up` points it at the local
providers, whose outbox then forgets the addresses too.

The hook is called before DeleteRecipient answers, a few times at most: an erasure
is rare, and a caller then knows the hook was told (or, from the log, that it
could not be)."""

import asyncio
import logging
from typing import Callable

import aiohttp

from notifymesh.log import fields
from notifymesh.server import egress

log = logging.getLogger(__name__)

ATTEMPTS = 3
TIMEOUT_S = 5.0
BACKOFF_S = 0.5  # before the second attempt, doubled before the third


class ErasureHook:
    def __init__(self, url_of: Callable[[], str], allowed: egress.Allowed = lambda: ()):
        """url_of(): the live erasure_hook_url setting ("" is off); allowed(): the
        non-public networks it may be in (egress.py)."""
        self._url_of, self._allowed = url_of, allowed
        self._http: aiohttp.ClientSession | None = None

    async def erased(self, recipient: str, addresses: list[str]) -> bool:
        """True when the hook took the erasure (or none is set, or nothing to erase)."""
        url = self._url_of()
        if not url or not addresses:
            return True
        if self._http is None:
            self._http = aiohttp.ClientSession(connector=egress.GuardedConnector(self._allowed),
                                               timeout=aiohttp.ClientTimeout(total=TIMEOUT_S))
        error = ""
        for attempt in range(ATTEMPTS):
            if attempt:
                await asyncio.sleep(BACKOFF_S * 2 ** (attempt - 1))
            try:
                async with self._http.post(url, json={"recipient": recipient, "addresses": addresses},
                                           allow_redirects=False) as response:
                    if 200 <= response.status < 300:
                        return True
                    error = f"HTTP {response.status}"
            except (aiohttp.ClientError, TimeoutError, egress.ForbiddenAddress) as e:
                error = f"{type(e).__name__}: {e}"
        log.warning("erasure hook not told", extra=fields(recipient=recipient, error=error[:200]))
        return False

    async def close(self) -> None:
        if self._http is not None:
            await self._http.close()
