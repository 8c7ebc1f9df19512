"""A member's lease against a real etcd: kept alive through a stalled event loop
(the keep-alives go out from a thread), and let go once the loop has stalled
past the limit (a hung process must not hold its subscriptions and shards)."""

import asyncio
import time

from helpers import unique

from notifymesh.server.cluster import Registration, connect_etcd, etcd_channel

TTL_S = 2  # etcd's shortest lease is about 1.5 s with its default election timeout


async def _registration(mesh, max_stall_s: float) -> tuple:
    etcd = connect_etcd(mesh.etcd_endpoint, mesh.client_tls())
    registration = Registration(etcd, "sender", unique("keeper"), "127.0.0.1:1", TTL_S,
                                keeper_channel=lambda: etcd_channel(mesh.etcd_endpoint, mesh.client_tls()),
                                max_stall_s=max_stall_s)
    await registration.start()
    return etcd, registration


async def _renewed_after(registration: Registration, seconds: float) -> float:
    """Waits (with the loop running) until a keep-alive was answered after now + seconds."""
    after = time.monotonic() + seconds
    for _ in range(100):
        if registration.valid_until > after + TTL_S:
            return registration.valid_until
        await asyncio.sleep(0.1)
    raise AssertionError(f"no keep-alive answered in 10 s (valid until {registration.valid_until}, now {time.monotonic()})")


async def test_a_stalled_event_loop_keeps_its_member_lease(mesh):
    etcd, registration = await _registration(mesh, max_stall_s=30)
    try:
        lease_id = registration.lease.id
        time.sleep(2.5 * TTL_S)  # the loop stalls: nothing else runs on it meanwhile
        assert registration.valid_until > time.monotonic(), "no keep-alive went out while the loop stalled"
        assert await etcd.get(registration.key) is not None
        assert registration.lease.id == lease_id  # never lapsed, never registered again
    finally:
        await registration.stop()
        await etcd.close()
    assert await _gone(mesh, registration.key)  # stop() revokes at once


async def test_a_loop_stalled_past_the_limit_lets_the_lease_lapse(mesh):
    etcd, registration = await _registration(mesh, max_stall_s=1)
    try:
        await _renewed_after(registration, 0)
        lease_id = registration.lease.id
        time.sleep(1 + 2.5 * TTL_S)  # past the limit, and past the TTL after it
        assert registration.valid_until < time.monotonic()
        # Once the loop runs again it learns the lease is gone and registers anew.
        await _renewed_after(registration, 0)
        assert registration.lease.id != lease_id
        assert await etcd.get(registration.key) is not None
    finally:
        await registration.stop()
        await etcd.close()


async def _gone(mesh, key: bytes) -> bool:
    etcd = connect_etcd(mesh.etcd_endpoint, mesh.client_tls())
    try:
        return await etcd.get(key) is None
    finally:
        await etcd.close()
