"""The partition test bench: a mesh whose every process runs on a host of its own
(tests/netns.py), a nemesis that injects random faults into it, and a checker
that publishes unique payloads without pause and consumes them, so that what a
fault did is measured, not guessed (tests/audit.py has the accounting):

- lost: acknowledged publishes never delivered (must be 0)
- duplicates: deliveries beyond the first of a message, by cause
- leaders per (partition, epoch) that acknowledged writes (must be one; tests/leadership.py)
- the longest stall (no publish acknowledged) and the longest unavailability of each partition
"""

import asyncio
import os
import random
import signal
import sys
import time
from dataclasses import dataclass, field

import leadership
from audit import EpochAudit, Ledger, attribute, audit_epochs
from helpers import key_ring, started
from netns import Lab

from deploy.local import LocalMesh

from notifymesh.client import Client
from notifymesh.errors import NotifymeshError
from notifymesh.subscriber import Subscriber

PUBLISH_TIMEOUT_S = 5  # a publish stuck behind a cut fails after this and is counted as not acknowledged
BATCH = 5
PAUSE_S = 0.02  # between publishes: about 200 messages/s in all, enough to see every stall
MAX_PUBLISHED = 100_000  # default bound of one checker run (a long run sets its own)
WITNESS = "-witness"  # suffix of the subscription nobody consumes: it keeps every entry for the epoch audit


def partitioned_mesh(tmp_path, lab: Lab, **kwargs) -> LocalMesh:
    """A mesh with each process on a host of its own (etcd too), on fixed ports:
    every host has all its ports to itself."""
    return started(LocalMesh(tmp_path / "mesh", network=lab, etcd_ports=[(2379, 2380)], frontend_port=50051,
                             **kwargs))


@dataclass
class Report:
    acknowledged: int
    failed_publishes: int
    delivered: int
    lost: int
    duplicates: int
    duplicates_by_cause: dict[str, int]  # see Ledger: redelivered, forgotten, stored_twice
    delivered_unacknowledged: int  # publishes that failed or timed out here but were stored: no loss
    longest_stall_s: float
    longest_stall_ended_s: float  # after the checker started
    longest_unavailability_s: dict[int, float]  # partition -> s
    epochs_led: int
    leaders_per_epoch: dict[int, int]  # leaders -> epochs with acknowledged writes: only 1 may appear
    epochs_not_one_leader: list[dict]
    epochs_not_one_leader_count: int
    acknowledged_without_entry: int
    acknowledged_in_two_epochs: int
    one_leader_per_epoch: bool
    errors: dict[str, int] = field(default_factory=dict)


class Checker:
    """Publishes unique payloads to topic and consumes subscription until stopped;
    then audits who led the topic's partitions in mesh."""

    def __init__(self, client: Client, topic: str, subscription: str, mesh: LocalMesh,
                 max_published: int = MAX_PUBLISHED):
        """max_published bounds the run (and what it remembers: an id and payload each)."""
        self._client, self._topic, self._subscription, self._mesh = client, topic, subscription, mesh
        self._max_published = max_published
        self._sent = 0
        self.partitions = 1
        self.ledger = Ledger(self.partitions, time.monotonic())
        self._stopping = asyncio.Event()
        self._publishers: list[asyncio.Task] = []
        self._consumer: asyncio.Task | None = None

    async def start(self) -> None:
        """Creates the witness subscription, then publishes (one loop per partition:
        see Ledger) and consumes."""
        record = await self._client.get_topic(self._topic)
        self.partitions = max(1, record.partition_count)
        await self._client.create_subscription(self._subscription + WITNESS, self._topic)
        self.ledger = Ledger(self.partitions, time.monotonic())
        self._publishers = [asyncio.create_task(self._publish(loop)) for loop in range(self.partitions)]
        self._consumer = asyncio.create_task(self._consume())

    @property
    def acknowledged(self) -> dict[str, bytes]:
        return self.ledger.acknowledged

    async def _publish(self, loop: int) -> None:
        while not self._stopping.is_set() and self._sent < self._max_published:
            batch = [b"m-%d-%d" % (loop, self._sent + i) for i in range(BATCH)]
            self._sent += BATCH
            try:
                ids = await asyncio.wait_for(self._client.publish(self._topic, batch), PUBLISH_TIMEOUT_S)
            except (NotifymeshError, TimeoutError) as e:
                self.ledger.fail(len(batch), e.code.name if isinstance(e, NotifymeshError) else "TIMEOUT")
            else:
                self.ledger.acknowledge(ids, batch, time.monotonic())
            await asyncio.sleep(PAUSE_S * self.partitions)

    async def _consume(self) -> None:
        async with Subscriber(self._client, self._subscription, max_outstanding_messages=1000) as subscriber:
            async for delivery in subscriber:
                self.ledger.deliver(delivery.message_id, delivery.data, delivery.delivery_attempt)
                delivery.ack()

    async def wait_published(self, more: int, timeout_s: float) -> bool:
        """Until more messages than now are acknowledged, or timeout_s."""
        target = len(self.acknowledged) + more
        deadline = time.monotonic() + timeout_s
        while len(self.acknowledged) < target and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        return len(self.acknowledged) >= target

    async def stop(self, drain_s: float = 60) -> Report:
        """Stops publishing, waits up to drain_s for every acknowledged message to be
        delivered, audits the leaders, then reports."""
        self._stopping.set()
        await asyncio.gather(*self._publishers)
        ledger = self.ledger
        ledger.publishing_ended(time.monotonic())
        deadline = time.monotonic() + drain_s
        while ledger.lost() and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
        self._consumer.cancel()
        await asyncio.gather(self._consumer, return_exceptions=True)
        epochs = await self.audit_leaders()
        delivered = ledger.delivered
        return Report(acknowledged=len(ledger.acknowledged), failed_publishes=ledger.failed,
                      delivered=len(delivered), lost=len(ledger.lost()),
                      duplicates=sum(d.times - 1 for d in delivered.values()),
                      duplicates_by_cause=ledger.duplicates_by_cause(),
                      delivered_unacknowledged=len(delivered.keys() - ledger.acknowledged.keys()),
                      longest_stall_s=round(ledger.longest_stall_s, 2),
                      longest_stall_ended_s=round(ledger.longest_stall_ended - ledger.started, 2),
                      longest_unavailability_s={p: round(s, 2) for p, s in sorted(ledger.unavailable_s.items())},
                      **vars(epochs), one_leader_per_epoch=epochs.one_leader_per_epoch,
                      errors=dict(ledger.errors))

    async def audit_leaders(self) -> EpochAudit:
        """Who led each (partition, epoch) of the topic, by the storage nodes' logs,
        etcd and the epochs of the acknowledged messages' entries."""
        nodes = [process for name, process in self._mesh.processes.items() if name.startswith("storage-")]
        claims = await asyncio.to_thread(leadership.claims_in_logs, [p.log_path for p in nodes], self._topic)
        ring = await key_ring(self._mesh)
        stored = await asyncio.to_thread(leadership.stored_epochs, [self._mesh.data_dir / p.name for p in nodes],
                                         self._topic, self.partitions, ring)
        attribution = attribute(stored, self.ledger.acknowledged)
        granted = await leadership.grants(self._mesh.etcd_endpoint, self._mesh.client_tls(), self._topic,
                                          attribution.epochs(claims))
        return audit_epochs(claims, granted, attribution)


# -- the nemesis: random faults, one at a time --------------------------------------

FAKETIME_LIBS = ("/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1",
                 "/usr/lib/aarch64-linux-gnu/faketime/libfaketimeMT.so.1")
FAULT_KINDS = ("kill", "pause", "isolate", "cut", "loss", "skew")


@dataclass
class Fault:
    kind: str
    target: str
    other: str = ""
    seconds: float = 0.0
    detail: str = ""
    at: float = 0.0  # time.monotonic() when injected

    def __str__(self) -> str:
        return " ".join(part for part in (self.kind, self.target, self.other, self.detail,
                                          f"for {self.seconds:.1f}s") if part)


class Nemesis:
    """Injects one random fault at a time into a partitioned mesh, chosen by a
    seeded generator (the same seed gives the same faults): a process killed
    (SIGKILL, restarted after the fault), paused (SIGSTOP/SIGCONT), a host cut off
    from all others, a link between two hosts cut or made lossy, or a service's
    wall clock skewed (restarted under libfaketime; the monotonic clock is left
    alone, and etcd, a Go binary, is never skewed). Never the machine's clock."""

    def __init__(self, mesh: LocalMesh, lab: Lab, seed: int, fault_s: tuple[float, float] = (3, 10),
                 quiet_s: float = 5, kinds: tuple[str, ...] = FAULT_KINDS, every_kind_in_turn: bool = False):
        """every_kind_in_turn: the kinds in order, round and round (targets still at
        random), so that a short run covers each."""
        self.mesh, self.lab, self.rng = mesh, lab, random.Random(seed)
        self.fault_s, self.quiet_s, self.kinds, self.in_turn = fault_s, quiet_s, kinds, every_kind_in_turn
        self.faults: list[Fault] = []
        self._plain_argv: dict[str, list[str]] = {}  # a skewed service's command as it was
        self._faketime = next((lib for lib in FAKETIME_LIBS if os.path.exists(lib)), None)
        if "skew" in kinds and self._faketime is None:
            raise RuntimeError("libfaketime not found: install the faketime package (see .ci/run)")

    async def run(self, seconds: float, progress=lambda line: None, faults: int | None = None) -> None:
        """Faults one after another for about seconds (or until faults of them are
        done, if sooner), each followed by quiet_s of calm."""
        loop = asyncio.get_running_loop()
        end = loop.time() + seconds
        while loop.time() < end and (faults is None or len(self.faults) < faults):
            fault = self._choose()
            progress(f"fault {len(self.faults) + 1}: {fault}")
            fault.at = time.monotonic()
            await asyncio.to_thread(self._inject, fault)
            try:
                await asyncio.sleep(fault.seconds)
            finally:
                await asyncio.to_thread(self._repair, fault)
            self.faults.append(fault)
            await asyncio.sleep(self.quiet_s)

    def counts(self) -> dict[str, int]:
        counted: dict[str, int] = {}
        for fault in self.faults:
            counted[fault.kind] = counted.get(fault.kind, 0) + 1
        return counted

    def _choose(self) -> Fault:
        kind = self.kinds[len(self.faults) % len(self.kinds)] if self.in_turn else self.rng.choice(self.kinds)
        services = self.mesh.service_names()
        hosts = [*self.mesh.processes]
        seconds = self.rng.uniform(*self.fault_s)
        if kind in ("kill", "pause"):
            return Fault(kind, self.rng.choice(hosts), seconds=seconds)
        if kind == "isolate":
            return Fault(kind, self.rng.choice(hosts), seconds=seconds)
        if kind in ("cut", "loss"):
            a, b = self.rng.sample(hosts, 2)
            return Fault(kind, a, b, seconds, f"{self.rng.choice((10, 30, 60))}%" if kind == "loss" else "")
        return Fault(kind, self.rng.choice(services), seconds=seconds,
                     detail=f"{self.rng.choice((-1, 1)) * self.rng.choice((2, 10, 60)):+d}s")  # libfaketime: a sign

    def _inject(self, fault: Fault) -> None:
        if fault.kind == "kill":
            self.mesh.kill(fault.target)
        elif fault.kind == "pause":
            self.mesh.kill(fault.target, signal.SIGSTOP)
        elif fault.kind == "isolate":
            self.lab.isolate(fault.target)
        elif fault.kind == "cut":
            self.lab.cut(fault.target, fault.other)
        elif fault.kind == "loss":
            self.lab.lose(fault.target, fault.other, int(fault.detail.rstrip("%")))
        elif fault.kind == "skew":
            self._restart_skewed(fault.target, fault.detail)

    def _repair(self, fault: Fault) -> None:
        if fault.kind == "kill":
            self.mesh.restart(fault.target)
        elif fault.kind == "pause":
            self.mesh.kill(fault.target, signal.SIGCONT)
        elif fault.kind in ("isolate", "cut", "loss"):
            self.lab.heal()
        elif fault.kind == "skew":
            self._restart_skewed(fault.target, None)

    def _restart_skewed(self, name: str, offset: str | None) -> None:
        """Restarts the service with its wall clock offset (None: as it was)."""
        process = self.mesh.processes[name]
        plain = self._plain_argv.setdefault(name, process.argv)
        if offset is None:
            process.argv = plain
        else:
            at = plain.index(sys.executable)
            process.argv = [*plain[:at], "env", f"LD_PRELOAD={self._faketime}", f"FAKETIME={offset}",
                            "FAKETIME_DONT_FAKE_MONOTONIC=1", *plain[at:]]
        self.mesh.restart(name)
