"""A member lease kept alive from a thread of its own.

A busy process's event loop can stall for seconds: a sender handing one message
to 45,000 streams, or taking in 1,000 new streams a second. A keep-alive waiting
its turn on that loop let the 3 s member lease lapse, and the sender, alive and
working, took itself for the owner of nothing and ended every stream it served
(docs/benchmarks.md, 2026-12-01, the fan-out runs). So the keep-alives go out from
a thread, over a blocking gRPC channel of their own: the loop's stalls do not
delay them (the thread needs the GIL only for a moment, and the services set a
0.5 ms switch interval).

A loop stalled for good must still let go of the lease, or a hung process would
hold its subscriptions and shards forever: the thread renews only while the loop
has ticked (tick()) within max_stall_s. A dead process's lease still ends at once
(notifymesh.server.liveness); a hung one's within max_stall_s plus the TTL.
"""

import logging
import threading
import time
from typing import Callable

import grpc
from aetcd.rpc import rpc_pb2 as etcd_pb2
from aetcd.rpc import rpc_pb2_grpc as etcd_grpc

from notifymesh.log import fields
from notifymesh.server import telemetry

log = logging.getLogger(__name__)

KEEP_ALIVE_TIMEOUT_S = 5  # as every other etcd request (cluster.connect_etcd)

RENEWALS = telemetry.meter().create_counter(
    "notifymesh.etcd.lease_renewals", unit="{renewal}",
    description="keep-alives of this process's member lease, by outcome (ok, failed, expired, stalled)")


class LeaseKeeper:
    """Renews one lease every TTL/3 from its thread. valid_until (monotonic) is
    written by the thread alone: until then the lease is certainly alive (the last
    keep-alive was sent before it, and etcd renewed the TTL from its arrival)."""

    def __init__(self, open_channel: Callable[[], grpc.Channel], ttl_s: float, max_stall_s: float,
                 on_expired: Callable[[], None]):
        """open_channel(): a blocking channel to etcd (opened again after a failure);
        on_expired(): called from the thread once the lease is gone (the owner
        registers again and hands over the new one with keep())."""
        self._open, self._ttl, self._max_stall_s = open_channel, ttl_s, max_stall_s
        self._on_expired = on_expired
        self._lease_id: int | None = None
        self.valid_until = 0.0
        self._loop_seen = time.monotonic()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="lease-keeper", daemon=True)

    def keep(self, lease_id: int, valid_until: float) -> None:
        """Renew this lease from now on (granted before valid_until - TTL)."""
        self.valid_until, self._lease_id = valid_until, lease_id
        if not self._thread.is_alive():
            self._thread.start()

    def tick(self) -> None:
        """The event loop is running: called from it more often than max_stall_s."""
        self._loop_seen = time.monotonic()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(KEEP_ALIVE_TIMEOUT_S + 1)

    def _run(self) -> None:
        channel: grpc.Channel | None = None
        next_at = time.monotonic()
        stalled = False
        try:
            while True:
                # Every TTL/3 from the last one sent, not from its reply: a reply can be slow.
                next_at = max(next_at + self._ttl / 3, time.monotonic())
                if self._stop.wait(next_at - time.monotonic()):
                    return
                lease_id = self._lease_id
                if lease_id is None:  # expired; the owner is registering again
                    continue
                if time.monotonic() - self._loop_seen > self._max_stall_s:
                    if not stalled:
                        log.warning("event loop stalled; letting the member lease lapse",
                                    extra=fields(stalled_s=round(time.monotonic() - self._loop_seen, 1)))
                    stalled = True
                    RENEWALS.add(1, {"outcome": "stalled"})
                    continue
                stalled = False
                try:
                    channel = channel or self._open()
                    sent = time.monotonic()
                    replies = etcd_grpc.LeaseStub(channel).LeaseKeepAlive(
                        iter([etcd_pb2.LeaseKeepAliveRequest(ID=lease_id)]), timeout=KEEP_ALIVE_TIMEOUT_S)
                    reply = next(replies, None)
                    replies.cancel()
                    if reply is not None and reply.TTL > 0:
                        if self._lease_id == lease_id:
                            self.valid_until = sent + reply.TTL
                        RENEWALS.add(1, {"outcome": "ok"})
                        continue
                except Exception as e:  # etcd unreachable or electing a leader; the thread must go on
                    reason = f"{e.code().name}: {e.details()}" if isinstance(e, grpc.RpcError) else repr(e)
                    log.warning("lease keep-alive failed", extra=fields(error=reason))
                    RENEWALS.add(1, {"outcome": "failed"})
                    if channel is not None:
                        channel.close()
                    channel = None
                    if time.monotonic() < self.valid_until:
                        continue
                if self._lease_id == lease_id:
                    RENEWALS.add(1, {"outcome": "expired"})
                    log.warning("member lease expired; registering again")
                    self._lease_id = None
                    self._on_expired()
        finally:
            if channel is not None:
                channel.close()
