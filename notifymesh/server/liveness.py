"""Telling a dead member from an unreachable one, and ending a dead one's lease at once.

A member's etcd key lives under its lease, so a process that dies leaves the rings,
and a storage node's leaderships lapse, only member_lease_ttl_s (3 s) after its last
keep-alive: every failover waited that out. But when a process dies its kernel
closes its sockets, so a connect to its address is refused at once, whereas a cut
or lossy link gives a timeout and a paused process's kernel still accepts. A peer
that sees a member go quiet or its stream break asks here; when the member's
address refuses two connects in a row, no process listens there, and its lease is
revoked: its expiry brought forward. etcd then deletes the member key and every
key under that lease (a storage node's leader keys and candidacies) exactly as the
expiry would, so every rule that holds after an expiry (storage's fencing above
all: see storage/replication.py) holds after this. A member that is not certainly
dead keeps its lease, and the failover waits for the expiry as before.

A firewall that rejects (a TCP reset or ICMP port unreachable) rather than drops
looks like a dead process here (this machine's sandbox refuses connects to
addresses routed nowhere): a live member's lease is then ended for nothing. That is
a needless failover, not a loss: the fencing does not rely on it, the member steps
down from what it led and registers again at its next keep-alive (TTL/3).
"""

import asyncio
import enum
import logging
import time
from typing import Awaitable, Callable, Protocol

import aetcd

from notifymesh.contracts import MemberRecord, member_key
from notifymesh.log import fields

log = logging.getLogger(__name__)

# A connect on a live link is answered (accepted or refused) within a round trip; one
# that takes longer than this is not taken for a refusal.
PROBE_TIMEOUT_S = 0.5
# The second, fresh connect that confirms a refusal comes this long after the first.
CONFIRM_AFTER_S = 0.05
# A member found alive is not probed again by this process for this long.
RECHECK_S = 0.5


class Reach(enum.Enum):
    REFUSED = "refused"        # no process listens at the address
    ACCEPTED = "accepted"      # something does (perhaps paused)
    NO_ANSWER = "no answer"    # a timeout or another error: the link may be cut


async def probe(addr: str, timeout_s: float = PROBE_TIMEOUT_S) -> Reach:
    """One TCP connect to addr ("host:port"), closed at once."""
    host, _, port = addr.rpartition(":")
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(host.strip("[]"), int(port)), timeout_s)
    except ConnectionRefusedError:
        return Reach.REFUSED
    except (OSError, TimeoutError, ValueError):  # a host name with several addresses refusing is one too
        return Reach.NO_ANSWER
    writer.close()
    return Reach.ACCEPTED


class MemberLeases(Protocol):
    """The member registrations in etcd."""

    def node_at(self, kind: str, addr: str) -> str | None:
        """The node of kind registered at addr, as mirrored (None: none)."""

    async def record(self, kind: str, node: str) -> MemberRecord | None:
        """The member's record read from etcd itself (None: the key is gone)."""

    async def revoke(self, lease: int) -> None: ...


class EtcdMemberLeases:
    """MemberLeases on a Cluster (its members mirror and etcd client)."""

    def __init__(self, cluster):
        self._cluster = cluster

    def node_at(self, kind: str, addr: str) -> str | None:
        prefix = kind + "/"
        return next((name[len(prefix):] for name, record in list(self._cluster.members.items.items())
                     if name.startswith(prefix) and record.addr == addr), None)

    async def record(self, kind: str, node: str) -> MemberRecord | None:
        kv = await self._cluster.etcd.get(member_key(kind, node))
        return None if kv is None else MemberRecord.parse(kv.value)

    async def revoke(self, lease: int) -> None:
        try:
            await self._cluster.etcd.revoke_lease(lease)
        except aetcd.exceptions.ClientError as e:
            if "lease not found" not in str(e):  # else another peer, or the expiry, came first
                raise


class DeadMembers:
    """Checks suspected members, at most one check per member at a time and none
    within RECHECK_S of the last, so a stream that keeps breaking costs little."""

    def __init__(self, leases: MemberLeases, probe_: Callable[[str], Awaitable[Reach]] = probe,
                 confirm_after_s: float = CONFIRM_AFTER_S, recheck_s: float = RECHECK_S):
        self._leases, self._probe = leases, probe_
        self._confirm_after_s, self._recheck_s = confirm_after_s, recheck_s
        # (kind, addr) -> its check while one runs; and when the last one ended. Both
        # hold members suspected within recheck_s at most: a few per peer.
        self._checks: dict[tuple[str, str], asyncio.Task] = {}
        self._checked: dict[tuple[str, str], float] = {}

    def suspect(self, kind: str, addr: str) -> None:
        """The member of kind at addr went quiet or its stream broke: check it in the
        background (see check)."""
        now = time.monotonic()
        for past in [m for m, at in self._checked.items() if now - at >= self._recheck_s]:
            del self._checked[past]
        member = (kind, addr)
        if member in self._checks or member in self._checked:
            return
        self._checks[member] = asyncio.create_task(self._check_once(member))

    async def _check_once(self, member: tuple[str, str]) -> None:
        try:
            await self.check(*member)
        except Exception as e:  # etcd unreachable: the lease expires by itself
            log.warning("checking a member failed", extra=fields(kind=member[0], addr=member[1], error=repr(e)))
        finally:
            self._checks.pop(member, None)
            self._checked[member] = time.monotonic()

    async def check(self, kind: str, addr: str) -> bool:
        """Revokes the lease of the member of kind registered at addr if two connects to
        addr, the second a fresh one, are refused. Whether it did. The record is read
        before the connects: a process started at addr since registers a lease of its
        own, which this never touches."""
        node = self._leases.node_at(kind, addr)
        if node is None:
            return False
        record = await self._leases.record(kind, node)
        if record is None or record.addr != addr or not record.lease:
            return False
        if await self._probe(addr) is not Reach.REFUSED:
            return False
        await asyncio.sleep(self._confirm_after_s)
        if await self._probe(addr) is not Reach.REFUSED:
            return False
        await self._leases.revoke(record.lease)
        log.warning("member refuses connections: its lease is ended", extra=fields(kind=kind, member=node, addr=addr))
        return True

    async def close(self) -> None:
        for task in list(self._checks.values()):
            task.cancel()
        await asyncio.gather(*self._checks.values(), return_exceptions=True)
