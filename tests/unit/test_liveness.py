"""Ending a dead member's lease at once: only when its address refuses two connects
(a dead process), never on a timeout (a cut link) or an accepted connect (a paused
process); and the storage follower's view of which leaders went silent."""

import asyncio
import socket

from fakes import eventually

from gen.notifymesh.internal.v1 import storage_pb2
from notifymesh.contracts import MemberRecord
from notifymesh.server.liveness import MAX_UNSURE_CHECKS, DeadMembers, Reach, RegisteredMember, Verdict, probe
from storage.follower import Follower

ADDR = "10.0.0.7:7001"


class Leases:
    """MemberLeases over a dict of kind/node -> MemberRecord; records the revokes."""

    def __init__(self, records: dict[str, MemberRecord]):
        self.records = records
        self.revoked: list[int] = []
        self.reads = 0

    def member_at(self, kind: str, addr: str) -> RegisteredMember | None:
        self.reads += 1
        return next((RegisteredMember(name.split("/", 1)[1], record) for name, record in self.records.items()
                     if name.startswith(kind + "/") and record.addr == addr), None)

    async def revoke(self, lease: int) -> bool:
        self.revoked.append(lease)
        return True


class Probes:
    """Answers the connects in turn with the given outcomes (the last one repeats)."""

    def __init__(self, *outcomes: Reach):
        self.outcomes, self.tried = list(outcomes), []

    async def __call__(self, addr: str) -> Reach:
        self.tried.append(addr)
        return self.outcomes.pop(0) if len(self.outcomes) > 1 else self.outcomes[0]


def dead_members(*outcomes: Reach, record: MemberRecord = MemberRecord(ADDR, lease=41)):
    leases, probes = Leases({"storage/storage-1": record}), Probes(*outcomes)
    return DeadMembers(leases, probes, confirm_after_s=0), leases, probes


async def test_a_member_whose_address_refuses_twice_has_its_lease_ended():
    members, leases, probes = dead_members(Reach.REFUSED)
    assert await members.check("storage", ADDR) is Verdict.ENDED
    assert leases.revoked == [41] and probes.tried == [ADDR, ADDR]


async def test_a_timeout_or_an_accepted_connect_ends_no_lease():
    for outcomes, verdict in [((Reach.NO_ANSWER,), Verdict.UNSURE), ((Reach.ACCEPTED,), Verdict.ALIVE),
                              ((Reach.REFUSED, Reach.NO_ANSWER), Verdict.UNSURE),
                              ((Reach.REFUSED, Reach.ACCEPTED), Verdict.ALIVE)]:
        members, leases, _ = dead_members(*outcomes)
        assert await members.check("storage", ADDR) is verdict, outcomes
        assert leases.revoked == [], outcomes


async def test_no_lease_is_ended_for_an_address_no_member_has_or_a_record_without_its_lease():
    members, leases, probes = dead_members(Reach.REFUSED)
    assert await members.check("storage", "10.0.0.8:7001") is Verdict.KEPT  # nobody registered there
    assert await members.check("sender", ADDR) is Verdict.KEPT  # a storage node's address, not a sender's
    members, leases, probes = dead_members(Reach.REFUSED, record=MemberRecord(ADDR))  # lease not recorded
    assert await members.check("storage", ADDR) is Verdict.KEPT
    assert leases.revoked == [] and probes.tried == []


async def test_a_suspect_is_checked_once_however_often_its_stream_breaks():
    members, leases, probes = dead_members(Reach.ACCEPTED)  # alive: keeps its lease
    for _ in range(5):
        members.suspect("storage", ADDR)
    await eventually(lambda: leases.reads == 1)
    await asyncio.sleep(0.05)
    members.suspect("storage", ADDR)  # within recheck_s of the last check
    await asyncio.sleep(0.05)
    assert leases.reads == 1 and probes.tried == [ADDR] and leases.revoked == []
    await members.close()


async def test_a_suspicion_within_the_recheck_window_is_checked_once_the_window_passed():
    """A live member's stream ends (checked: alive), then it dies: its death is not
    hidden by the check just before."""
    leases, probes = Leases({"storage/storage-1": MemberRecord(ADDR, lease=41)}), Probes(Reach.ACCEPTED)
    members = DeadMembers(leases, probes, confirm_after_s=0, recheck_s=0.2)
    members.suspect("storage", ADDR)
    await eventually(lambda: leases.reads == 1)
    probes.outcomes = [Reach.REFUSED]  # it died just after
    members.suspect("storage", ADDR)  # within the window
    await asyncio.sleep(0.05)
    assert leases.revoked == []  # not before the window passed
    await eventually(lambda: leases.revoked == [41])
    await members.close()


async def test_a_check_that_could_not_tell_is_made_again_until_it_can():
    """A connect that timed out, or an etcd call that failed, under load: the dead
    member's lease is still ended at once, not waited out."""
    leases, probes = Leases({"storage/storage-1": MemberRecord(ADDR, lease=41)}), Probes(Reach.NO_ANSWER)
    members = DeadMembers(leases, probes, confirm_after_s=0, recheck_s=0.05)
    members.suspect("storage", ADDR)
    await eventually(lambda: len(probes.tried) >= 3)
    probes.outcomes = [Reach.REFUSED]
    await eventually(lambda: leases.revoked == [41])
    await members.close()

    failing = Leases({"storage/storage-1": MemberRecord(ADDR, lease=41)})
    calls = []

    async def revoke_failing_once(lease: int) -> bool:
        calls.append(lease)
        if len(calls) == 1:
            raise ConnectionError("etcd did not answer")
        failing.revoked.append(lease)
        return True

    failing.revoke = revoke_failing_once
    members = DeadMembers(failing, Probes(Reach.REFUSED), confirm_after_s=0, recheck_s=0.05)
    members.suspect("storage", ADDR)
    await eventually(lambda: failing.revoked == [41])
    await members.close()


async def test_a_member_still_accepting_as_its_streams_break_is_checked_once_more():
    """A killed process's connections close before its listener: one suspicion, a
    first connect accepted, the one after refused, and the lease is ended."""
    leases, probes = Leases({"storage/storage-1": MemberRecord(ADDR, lease=41)}), Probes(Reach.ACCEPTED)
    members = DeadMembers(leases, probes, confirm_after_s=0, recheck_s=0.05)
    members.suspect("storage", ADDR)
    await eventually(lambda: leases.reads == 1)
    probes.outcomes = [Reach.REFUSED]
    await eventually(lambda: leases.revoked == [41])
    await members.close()

    alive = Leases({"storage/storage-1": MemberRecord(ADDR, lease=41)})
    members = DeadMembers(alive, Probes(Reach.ACCEPTED), confirm_after_s=0, recheck_s=0.01)
    members.suspect("storage", ADDR)
    await eventually(lambda: alive.reads == 2)
    await asyncio.sleep(0.1)
    assert alive.reads == 2 and alive.revoked == []  # alive twice: left alone until suspected again
    await members.close()


async def test_a_member_that_never_answers_is_checked_a_bounded_number_of_times():
    leases, probes = Leases({"storage/storage-1": MemberRecord(ADDR, lease=41)}), Probes(Reach.NO_ANSWER)
    members = DeadMembers(leases, probes, confirm_after_s=0, recheck_s=0.001)
    members.suspect("storage", ADDR)
    await eventually(lambda: leases.reads == MAX_UNSURE_CHECKS)
    await asyncio.sleep(0.1)
    assert leases.reads == MAX_UNSURE_CHECKS and leases.revoked == []
    await members.close()


async def test_a_probe_tells_a_closed_port_from_a_listening_one():
    listening = socket.create_server(("127.0.0.1", 0))  # never accepts: like a paused process
    closed = socket.create_server(("127.0.0.1", 0))
    closed_port = closed.getsockname()[1]
    closed.close()
    try:
        assert await probe(f"127.0.0.1:{listening.getsockname()[1]}") is Reach.ACCEPTED
        assert await probe(f"127.0.0.1:{closed_port}") is Reach.REFUSED
    finally:
        listening.close()


async def test_a_follower_finds_silent_the_leaders_that_sent_it_nothing_lately():
    follower = Follower(None, None, None, {}, {})
    follower.open()
    leaders = {"storage-1": "a:1", "storage-3": "c:3"}
    assert follower.silent_leaders(leaders, 0.05) == []  # from when first asked about
    await asyncio.sleep(0.06)
    await follower.replicate(storage_pb2.ReplicateRequest(leader="storage-1"))  # an empty batch: a heartbeat
    assert follower.silent_leaders(leaders, 0.05) == ["c:3"]
    await asyncio.sleep(0.06)
    assert sorted(follower.silent_leaders(leaders, 0.05)) == ["a:1", "c:3"]
    # a node no longer leading here is forgotten: leading again, it is counted afresh
    assert follower.silent_leaders({"storage-1": "a:1"}, 0.05) == ["a:1"]
    assert follower.silent_leaders(leaders, 0.05) == ["a:1"]
