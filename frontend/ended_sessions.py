"""Dashboard sessions ended by a logout, shared by every frontend through etcd.

A session token is signed and good until it expires (frontend/dashboard.py
Sessions), so clearing the browser's cookie alone would leave a copied token
working for up to 8 hours. A logout records the session's nonce under
contracts.ENDED_SESSIONS, with a lease that ends when the session would have
expired anyway; every frontend mirrors the prefix and refuses those sessions.

Bound: at most MAX_PER_KEY ended sessions per API key at a time (each gone within
the session TTL), so at most MAX_PER_KEY x the API keys (metadata/keys.py
MAX_KEYS) entries in etcd and in each frontend's mirror.
"""

import math

import aetcd

from notifymesh import errors
from notifymesh.contracts import ENDED_SESSIONS
from notifymesh.server.cluster import PrefixMirror

# A person who logs out more often than this within one session TTL (8 h) on one
# key is told to revoke the key instead: the logout still clears their cookie.
MAX_PER_KEY = 100


class EndedSessions:
    def __init__(self, etcd: aetcd.Client):
        self._etcd = etcd
        self._mirror = PrefixMirror(etcd, ENDED_SESSIONS, bytes.decode, group_by=lambda key_id: key_id)

    def __contains__(self, nonce: str) -> bool:
        return nonce in self._mirror.items

    async def end(self, nonce: str, key_id: str, remaining_s: float) -> None:
        """Ends the session of nonce (of API key key_id) on every frontend; after
        remaining_s the record goes, as the session would have expired by then."""
        if len(self._mirror.groups.get(key_id, ())) >= MAX_PER_KEY:
            raise errors.ResourceExhausted(
                f"{MAX_PER_KEY} sessions of API key {key_id} were logged out in the last hours: "
                "this one ends in this browser only; revoke the key to end them all")
        try:
            lease = await self._etcd.lease(max(1, math.ceil(remaining_s)))
            await self._etcd.put(ENDED_SESSIONS + nonce.encode(), key_id.encode(), lease=lease)
        except Exception as e:  # etcd unreachable: the session is not ended everywhere
            raise errors.Unavailable(f"could not end the session on every frontend ({e!r}); try again") from None
        self._mirror.wrote(nonce, key_id)  # refused here at once, not when the watch brings it

    async def start(self) -> None:
        await self._mirror.start()

    async def stop(self) -> None:
        await self._mirror.stop()
