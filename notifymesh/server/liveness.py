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
from typing import Awaitable, Callable, NamedTuple, Protocol

import aetcd

from notifymesh.contracts import MemberRecord
from notifymesh.log import fields

log = logging.getLogger(__name__)

# A connect on a live link is answered (accepted or refused) within a round trip; one
# that takes longer than this is not taken for a refusal.
PROBE_TIMEOUT_S = 0.5
# The second, fresh connect that confirms a refusal comes this long after the first.
CONFIRM_AFTER_S = 0.05
# A member found alive is not probed again by this process for this long.
RECHECK_S = 0.5
# A check that could not tell (a connect timed out, etcd did not answer) is made
# again after RECHECK_S, up to this many times in a row: about 10 s, a third of the
# longest lease a test runs with, after which the lease's own expiry is near. On a
# loaded machine one etcd call can fail; a dead member's takeover then waited out
# its lease (seen once in CI: > 15 s against 0.1 s usually).
MAX_UNSURE_CHECKS = 20


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


class Verdict(enum.Enum):
    ENDED = "ended"            # dead: its lease was revoked
    ALIVE = "alive"            # its address accepted a connect
    KEPT = "kept"              # nothing to end (not registered, or ended already)
    UNSURE = "unsure"          # no answer, or etcd failed: worth asking again


class RegisteredMember(NamedTuple):
    node: str
    record: MemberRecord


class MemberLeases(Protocol):
    """The member registrations in etcd."""

    def member_at(self, kind: str, addr: str) -> RegisteredMember | None:
        """The member of kind registered at addr, as mirrored (None: none)."""

    async def revoke(self, lease: int) -> bool:
        """Ends the lease; False when etcd no longer has it (ended already)."""


class EtcdMemberLeases:
    """MemberLeases on a Cluster (its members mirror and etcd client)."""

    def __init__(self, cluster):
        self._cluster = cluster

    def member_at(self, kind: str, addr: str) -> RegisteredMember | None:
        prefix = kind + "/"
        return next((RegisteredMember(name[len(prefix):], record)
                     for name, record in list(self._cluster.members.items.items())
                     if name.startswith(prefix) and record.addr == addr), None)

    async def revoke(self, lease: int) -> bool:
        try:
            await self._cluster.etcd.revoke_lease(lease)
        except aetcd.exceptions.ClientError as e:
            if "lease not found" not in str(e):
                raise
            return False  # another peer, or the expiry, came first
        return True


class DeadMembers:
    """Checks suspected members, at most one check per member at a time and none
    within RECHECK_S of the last, so a stream that keeps breaking costs little. A
    suspicion is never dropped: one that comes while a check runs, or within
    RECHECK_S of the last, gets a check once the window has passed (a live member's
    own stream ends, which also raise suspicion, must not hide its death just after)."""

    def __init__(self, leases: MemberLeases, probe_: Callable[[str], Awaitable[Reach]] = probe,
                 confirm_after_s: float = CONFIRM_AFTER_S, recheck_s: float = RECHECK_S):
        self._leases, self._probe = leases, probe_
        self._confirm_after_s, self._recheck_s = confirm_after_s, recheck_s
        # (kind, addr) -> its check while one runs or waits; when the last one ended;
        # those suspected again while one ran. All hold members suspected within
        # recheck_s at most: a few per peer.
        self._checks: dict[tuple[str, str], asyncio.Task] = {}
        self._checked: dict[tuple[str, str], float] = {}
        self._again: set[tuple[str, str]] = set()
        self._unsure: dict[tuple[str, str], int] = {}  # checks in a row that could not tell
        self._confirming: set[tuple[str, str]] = set()  # found alive once: checked once more
        self._closed = False

    def suspect(self, kind: str, addr: str) -> None:
        """The member of kind at addr went quiet or its stream broke: check it in the
        background (see check)."""
        now = time.monotonic()
        for past in [m for m, at in self._checked.items() if now - at >= self._recheck_s]:
            del self._checked[past]
        member = (kind, addr)
        if self._closed:
            return
        if member in self._checks:
            self._again.add(member)
            return
        last = self._checked.get(member)
        wait_s = 0.0 if last is None else max(0.0, last + self._recheck_s - now)
        self._checks[member] = asyncio.create_task(self._check_once(member, wait_s))

    async def _check_once(self, member: tuple[str, str], wait_s: float) -> None:
        verdict = Verdict.UNSURE
        try:
            if wait_s:
                await asyncio.sleep(wait_s)
            self._again.discard(member)  # this check covers what was suspected so far
            verdict = await self.check(*member)
        except Exception as e:  # etcd unreachable: asked again below, else the lease expires by itself
            log.warning("checking a member failed", extra=fields(kind=member[0], addr=member[1], error=repr(e)))
        finally:
            self._checks.pop(member, None)
            self._checked[member] = time.monotonic()
            unsure = self._unsure.pop(member, 0) + 1 if verdict is Verdict.UNSURE else 0
            if unsure and unsure < MAX_UNSURE_CHECKS:
                self._unsure[member] = unsure
                self._again.add(member)
            # A killed process's kernel closes its connections before its listening
            # socket: the first connect after its streams break can still be accepted
            # (seen under load, 4 in 10 runs of test_failover's push-only takeover).
            # One more check, recheck_s later, sees the listener gone.
            if verdict is Verdict.ALIVE and member not in self._confirming:
                self._confirming.add(member)
                self._again.add(member)
            else:
                self._confirming.discard(member)
            if member in self._again:
                self._again.discard(member)
                self.suspect(*member)

    async def check(self, kind: str, addr: str) -> Verdict:
        """Revokes the lease of the member of kind registered at addr if two connects to
        addr, the second a fresh one, are refused (ENDED). A connect that times out
        leaves it UNSURE; one accepted, ALIVE. The record is the
        mirrored one, so a live member costs a connect and no etcd read: a record the
        mirror still holds of a member gone has a lease etcd no longer knows (the
        revoke then ends nothing, and this answers False), and a process started at addr since listens before it
        registers (so its connects are accepted) and under a lease of its own."""
        member = self._leases.member_at(kind, addr)
        if member is None or not member.record.lease:
            return Verdict.KEPT
        node, record = member
        for attempt in range(2):
            if attempt:
                await asyncio.sleep(self._confirm_after_s)
            reach = await self._probe(addr)
            if reach is not Reach.REFUSED:
                return Verdict.UNSURE if reach is Reach.NO_ANSWER else Verdict.ALIVE
        if not await self._leases.revoke(record.lease):
            return Verdict.KEPT
        log.warning("member refuses connections: its lease is ended", extra=fields(kind=kind, member=node, addr=addr))
        return Verdict.ENDED

    async def close(self) -> None:
        self._closed = True
        for task in list(self._checks.values()):
            task.cancel()
        await asyncio.gather(*self._checks.values(), return_exceptions=True)
