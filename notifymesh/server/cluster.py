"""One process's view of the mesh, all of it read from etcd.

etcd keys (their layout and records in notifymesh.contracts): member registrations under a lease, topics and
subscriptions as serialized protos, and the cluster config. Every service
mirrors them with a watch, so each computes the same ring owners.
"""

import asyncio
import logging
import os
import time
from typing import Callable, Container, Generic, Iterable, NamedTuple, TypeVar

import aetcd
import grpc
from aetcd import rpc as etcd_rpc

from gen.notifymesh.internal.v1 import storage_pb2
from gen.notifymesh.v1 import cluster_pb2, notify_pb2, pubsub_pb2
from notifymesh import errors
from notifymesh.channel import channel_options
from notifymesh.contracts import (CATEGORIES, DRAINING, LEADERS, MEMBERS, PLACEMENTS, PROVIDERS, SUBSCRIPTIONS,
                                  TEMPLATES, TOPICS, DrainRecord, LeaderRecord, MemberRecord, member_key, shard_name,
                                  template_versions_prefix)
from notifymesh.log import fields
from notifymesh.server.internal_topics import channel_name
from notifymesh.server.lease_keeper import LeaseKeeper
from notifymesh.server import sealing, telemetry
from notifymesh.server.ring import Ring
from notifymesh.server.tls import CHECK_EVERY_S, ChannelCredentials, internal_options

log = logging.getLogger(__name__)

KINDS = ("metadata", "storage", "sender", "frontend")
# A process whose event loop has not run for this long lets its member lease lapse
# (lease_keeper): a hung process's subscriptions and shards move on within this plus
# the TTL. Three TTLs: the longest stalls seen under load (a sender handing one
# message to 45,000 streams) were a few seconds, and cost every stream it served.
MAX_LOOP_STALL_S = 10.0
# Owners (kind, key, partition) -> Member remembered until the membership changes
# (Cluster.owner); past this many the memo starts over. About 250 bytes an entry
# (measured: 100,000 pairs of 16-character names parsed from ack ids, 24.5 MB), so at
# most about 25 MB; a frontend acking for 50,000 subscriptions' streams keeps them all.
MAX_CACHED_OWNERS = 100_000

T = TypeVar("T")


def placeable(live: Iterable[str], draining: Container[str]) -> list[str]:
    """The live nodes that are not being drained."""
    return [node for node in live if node not in draining]


class Member(NamedTuple):
    node: str
    addr: str


class ShardLeader(NamedTuple):
    node: str
    addr: str
    epoch: int  # the create revision of the shard's leader key


class TlsEtcdClient(aetcd.Client):
    """aetcd's client over mutual TLS: its connect() dials an insecure channel, so
    this one opens a secure channel (with the process's credentials as they are at
    each connect) and sets up the same stubs."""

    def __init__(self, tls: ChannelCredentials, **kwargs):
        super().__init__(**kwargs)
        self._tls = tls

    async def connect(self) -> None:
        if self._connected.is_set():
            return
        if self._is_connecting:  # another task is connecting: wait for it, as aetcd does
            await asyncio.wait_for(self._connected.wait(), self._connect_wait_timeout)
            return
        try:
            self._is_connecting = True
            rpc = etcd_rpc
            self.channel = grpc.aio.secure_channel(f"{self._host}:{self._port}", self._tls.current(),
                                                   options=[*self._options.items(), *internal_options()])
            self.kvstub, self.clusterstub = rpc.KVStub(self.channel), rpc.ClusterStub(self.channel)
            self.leasestub, self.maintenancestub = rpc.LeaseStub(self.channel), rpc.MaintenanceStub(self.channel)
            self._watcher = aetcd.Watcher(rpc.WatchStub(self.channel), timeout=self._timeout,
                                                         metadata=self.metadata)
            self._connected.set()
        finally:
            self._is_connecting = False


def _etcd_target(endpoints: str) -> str:
    """endpoints (host:port[,host:port...]) as a gRPC target naming every member."""
    return "ipv4:" + endpoints if "," in endpoints else endpoints


def connect_etcd(endpoints: str, tls: ChannelCredentials | None = None) -> aetcd.Client:
    """endpoints: host:port[,host:port...]. aetcd takes one host and port and dials
    f"{host}:{port}"; a gRPC multi-address target split at its last colon gives
    it every member, and gRPC moves to another when one fails. With tls: mutual TLS."""
    host, _, port = _etcd_target(endpoints).rpartition(":")
    kwargs = dict(host=host or "127.0.0.1", port=int(port), timeout=5, options={"grpc.lb_policy_name": "round_robin"})
    return TlsEtcdClient(tls, **kwargs) if tls else aetcd.Client(**kwargs)


def etcd_channel(endpoints: str, tls: ChannelCredentials | None = None) -> grpc.Channel:
    """A blocking channel to etcd, as connect_etcd's client dials it (for the lease keeper's thread)."""
    target, options = _etcd_target(endpoints), [("grpc.lb_policy_name", "round_robin")]
    if tls is None:
        return grpc.insecure_channel(target, options=options)
    return grpc.secure_channel(target, tls.current(), options=[*options, *internal_options()])


class PrefixMirror(Generic[T]):
    """A dict kept equal to the keys under an etcd prefix: read once, then
    followed by a watch from the revision read; re-read after any watch error."""

    def __init__(self, etcd: aetcd.Client, prefix: bytes, decode: Callable[[bytes], T],
                 group_by: Callable[[T], str] | None = None):
        """group_by(item): the group an item is also listed under in groups."""
        self.items: dict[str, T] = {}
        # name -> (create revision, mod revision), for epochs and compare-and-swap.
        self.revisions: dict[str, tuple[int, int]] = {}
        # group -> {name: item}: e.g. the subscriptions of each topic, without a scan of all.
        self.groups: dict[str, dict[str, T]] = {}
        self._etcd, self._prefix, self._decode, self._group_by = etcd, prefix, decode, group_by
        self._listeners: list[Callable[[str | None], None]] = []
        self._loaded = asyncio.Event()
        self._task: asyncio.Task | None = None

    def on_change(self, listener: Callable[[str | None], None]) -> None:
        """listener(name) after the item of that name changed or went; listener(None)
        after everything was read again (any item may have changed)."""
        self._listeners.append(listener)

    async def start(self) -> None:
        self._task = asyncio.create_task(self._follow())
        await self._loaded.wait()

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def get(self, what: str, name: str) -> T:
        """The record from the mirror; on a miss, from etcd itself, so a record created
        a moment ago through another process is found before the watch delivers it."""
        item = self.items.get(name)
        if item is None:
            kv = await self._etcd.get(self._prefix + name.encode())
            if kv is None:
                raise errors.NotFound(f"{what} {name!r} not found")
            item = self._decode(kv.value)
        return item

    def wrote(self, name: str, item: T) -> None:
        """What this process has just written to etcd, shown now rather than when
        the watch brings it (which puts the same)."""
        self._put(name, item)

    def _changed(self, name: str | None) -> None:
        for listener in self._listeners:
            listener(name)

    def _put(self, name: str, item: T) -> None:
        self._drop(name)
        self.items[name] = item
        if self._group_by is not None:
            self.groups.setdefault(self._group_by(item), {})[name] = item

    def _drop(self, name: str) -> None:
        item = self.items.pop(name, None)
        self.revisions.pop(name, None)
        if item is not None and self._group_by is not None:
            group = self.groups.get(self._group_by(item), {})
            group.pop(name, None)
            if not group:
                self.groups.pop(self._group_by(item), None)

    def _name(self, key: bytes) -> str:
        return key[len(self._prefix):].decode()

    async def _follow(self) -> None:
        while True:
            try:
                snapshot = await self._etcd.get_prefix(self._prefix)
                self.items, self.revisions, self.groups = {}, {}, {}
                for kv in snapshot:
                    name = self._name(kv.key)
                    self._put(name, self._decode(kv.value))
                    self.revisions[name] = (kv.create_revision, kv.mod_revision)
                self._loaded.set()
                self._changed(None)
                watch = await self._etcd.watch_prefix(self._prefix, start_revision=snapshot.header.revision + 1)
                async for event in watch:
                    name = self._name(event.kv.key)
                    if event.kind == aetcd.rtypes.EventKind.PUT:
                        self._put(name, self._decode(event.kv.value))
                        self.revisions[name] = (event.kv.create_revision, event.kv.mod_revision)
                    else:
                        self._drop(name)
                    self._changed(name)
            except asyncio.CancelledError:
                raise
            except Exception as e:  # etcd restarting or unreachable: keep the last view, retry
                log.warning("etcd watch failed; retrying", extra=fields(prefix=self._prefix.decode(), error=repr(e)))
                await asyncio.sleep(0.5)


class ChangedNames:
    """The names a PrefixMirror reported changed since they were last taken (None:
    all of them may have), for a loop that reconciles only what changed."""

    def __init__(self):
        self._names: set[str] | None = None  # nothing taken yet: all
        self.event = asyncio.Event()  # set while there is something to take
        self.event.set()

    def note(self, name: str | None) -> None:
        """A PrefixMirror listener; None means all."""
        if name is None or self._names is None:
            self._names = None
        else:
            self._names.add(name)
        self.event.set()

    def take(self) -> set[str] | None:
        names, self._names = self._names, set()
        self.event.clear()
        return names


class Registration:
    """This process's member key, kept alive by a lease: it disappears from etcd
    within the lease TTL once the process dies. The keep-alives go out from a
    thread (notifymesh.server.lease_keeper), so a busy event loop does not let
    the lease lapse."""

    def __init__(self, etcd: aetcd.Client, kind: str, node_id: str, addr: str, ttl_s: int, metrics_addr: str = "",
                 internal_addr: str = "", *, keeper_channel: Callable[[], grpc.Channel],
                 max_stall_s: float = MAX_LOOP_STALL_S):
        """keeper_channel(): a blocking channel to etcd for the keep-alives (etcd_channel)."""
        self.key = member_key(kind, node_id)
        self.addr = addr
        # This version's storage nodes read table entries of many rows (MemberRecord.table_ops).
        self._record = MemberRecord(addr, os.getpid(), time.time(), metrics_addr=metrics_addr,
                                    internal_addr=internal_addr, table_ops=kind == "storage")
        self._etcd, self._ttl = etcd, ttl_s
        self.lease = None
        self._expired = asyncio.Event()
        self._keeper = LeaseKeeper(keeper_channel, ttl_s, max_stall_s, self._expired_soon)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task | None = None

    @property
    def valid_until(self) -> float:
        """Until this monotonic time the lease is certainly alive."""
        return self._keeper.valid_until

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        await self._register()
        self._task = asyncio.create_task(self._follow())

    def _expired_soon(self) -> None:  # from the keeper's thread
        try:
            self._loop.call_soon_threadsafe(self._expired.set)
        except RuntimeError:  # the loop has closed: the process is ending
            pass

    async def _register(self) -> None:
        sent = time.monotonic()
        self.lease = await self._etcd.lease(self._ttl)
        await self._etcd.put(self.key, self._record._replace(lease=self.lease.id).encode(), lease=self.lease)
        self._keeper.keep(self.lease.id, sent + self._ttl)

    async def _follow(self) -> None:
        """Shows the keeper the loop runs, and registers again once the lease is gone."""
        while True:
            self._keeper.tick()
            try:
                await asyncio.wait_for(self._expired.wait(), self._ttl / 3)
            except TimeoutError:
                continue
            self._expired.clear()
            try:
                await self._register()
            except Exception as e:
                log.warning("registering again failed", extra=fields(error=repr(e)))
                await asyncio.sleep(self._ttl / 3)
                self._expired.set()

    async def stop(self) -> None:
        """Leaves the mesh at once rather than after the TTL, so peers re-route now."""
        if self._task:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        await asyncio.to_thread(self._keeper.stop)
        if self.lease is not None:
            try:
                await self.lease.revoke()
            except Exception as e:
                log.warning("lease revoke failed", extra=fields(error=repr(e)))


class Cluster:
    """Live members and their rings, topics and subscriptions, and cached channels
    to peers. Read-only: only the metadata service writes topics and subscriptions."""

    def __init__(self, etcd: aetcd.Client, max_message_bytes: int, tls: ChannelCredentials | None = None):
        """tls: mutual TLS to the other services (None: plaintext)."""
        self.etcd = etcd
        self.members = PrefixMirror(etcd, MEMBERS, MemberRecord.parse)
        self.topics = PrefixMirror(etcd, TOPICS, pubsub_pb2.Topic.FromString)
        self.subscriptions = PrefixMirror(etcd, SUBSCRIPTIONS, sealing.mirrored_subscription,
                                          group_by=lambda subscription: subscription.topic)
        self.placements = PrefixMirror(etcd, PLACEMENTS, storage_pb2.ShardPlacement.FromString)
        self.leaders = PrefixMirror(etcd, LEADERS, LeaderRecord.parse)
        # The notification layer's metadata: every stored template version (grouped by
        # template name), providers by channel name with their secrets (senders use them).
        self.categories = PrefixMirror(etcd, CATEGORIES, notify_pb2.Category.FromString)
        self.templates = PrefixMirror(etcd, TEMPLATES, notify_pb2.Template.FromString,
                                      group_by=lambda template: template.name)
        # Providers grouped by channel name: a channel's several, tried by priority.
        self.providers = PrefixMirror(etcd, PROVIDERS, sealing.mirrored_provider,
                                      group_by=lambda provider: channel_name(provider.channel))
        # Storage nodes being drained: left out of the storage ring (placeable()).
        self.draining = PrefixMirror(etcd, DRAINING, DrainRecord.parse)
        self.draining.on_change(lambda _name: self._rebuild_rings())
        self.rings: dict[str, Ring] = {kind: Ring() for kind in KINDS}
        # owner()'s answers: a hash-ring lookup and a scan of the members cost 2.9 us a
        # pair, 7.3 % of the frontend's samples acking one message to 50,000 streams (the
        # ring lookup per ack id's pair). Emptied at every change of the members or
        # the drains (each ring change, and a member's new address under its old name).
        self._owners: dict[tuple[str, str, int], Member] = {}
        self._ring_changes = {kind: asyncio.Event() for kind in KINDS}
        self._leader_change = asyncio.Event()
        self.leaders.on_change(lambda _name: self._leaders_changed())
        self._channels: dict[str, grpc.aio.Channel] = {}
        # After a certificate rotation the channels made before it, still serving
        # the calls they carry; closed at the next rotation (two generations at most).
        self._retired: list[grpc.aio.Channel] = []
        self._tls, self._tls_generation = tls, 0
        self._tls_task: asyncio.Task | None = None
        self._options = channel_options(max_message_bytes) + (internal_options() if tls else [])
        self.members.on_change(lambda _name: self._rebuild_rings())

    async def start(self) -> None:
        for mirror in self._mirrors():
            await mirror.start()
        if self._tls:
            self._tls_task = asyncio.create_task(self._follow_certificates())

    async def _follow_certificates(self) -> None:
        """Takes in rotated certificate files within a second even while no new channel
        is asked for: the next channel() then makes its channels anew."""
        while True:
            await asyncio.sleep(CHECK_EVERY_S)
            self._tls.current()

    async def stop(self) -> None:
        if self._tls_task:
            self._tls_task.cancel()
        for mirror in self._mirrors():
            await mirror.stop()
        await asyncio.gather(*(c.close() for c in [*self._channels.values(), *self._retired]),
                             return_exceptions=True)

    def _mirrors(self) -> tuple[PrefixMirror, ...]:
        return (self.members, self.topics, self.subscriptions, self.placements, self.leaders, self.categories,
                self.templates, self.providers, self.draining)

    def leader(self, topic: str, partition: int) -> "ShardLeader":
        shard = shard_name(topic, partition)
        leader = self.leaders.items.get(shard)
        if leader is None:
            raise errors.Unavailable(f"partition {partition} of topic {topic!r} has no leader at the moment")
        return ShardLeader(leader.node, leader.addr, self.epoch(shard))

    def epoch(self, shard: str) -> int:
        """The epoch of the shard's current leader (0 without one)."""
        return self.leaders.revisions.get(shard, (0, 0))[0]

    def _rebuild_rings(self) -> None:
        self._owners = {}
        for kind in KINDS:
            ring = Ring(self.placeable(kind))
            if ring != self.rings[kind]:
                log.info("ring changed", extra=fields(kind=kind, nodes=list(ring.nodes)))
                self.rings[kind] = ring
                self._ring_changes[kind].set()
                self._ring_changes[kind] = asyncio.Event()

    def _leaders_changed(self) -> None:
        self._leader_change.set()
        self._leader_change = asyncio.Event()

    def next_leader_change(self) -> asyncio.Event:
        """An event set at the next change of any shard's leader (take it before looking)."""
        return self._leader_change

    def next_ring_change(self, kind: str) -> asyncio.Event:
        """An event set at the next change of kind's ring (take it before looking)."""
        return self._ring_changes[kind]

    def live(self, kind: str) -> dict[str, str]:
        """node id -> address of the live members of one kind."""
        prefix = kind + "/"
        return {name[len(prefix):]: info.addr for name, info in self.members.items.items()
                if name.startswith(prefix)}

    def reads_table_ops(self, node: str) -> bool:
        """Whether the storage node is live and reads table entries of many rows."""
        record = self.members.items.get(f"storage/{node}")
        return record is not None and record.table_ops

    def internal(self, kind: str) -> dict[str, str]:
        """node id -> the address internal callers use: a frontend's mutual-TLS port
        when it has one (a plaintext mesh has none), else its address."""
        prefix = kind + "/"
        return {name[len(prefix):]: info.internal_addr or info.addr for name, info in self.members.items.items()
                if name.startswith(prefix)}

    def placeable(self, kind: str) -> list[str]:
        """The live members of kind the ring places work on: for storage, not the
        draining ones (placements then move their replicas away, storage.placement)."""
        return placeable(self.live(kind), self.draining.items if kind == "storage" else {})

    def described_members(self) -> list[cluster_pb2.ClusterMember]:
        """Every live member as cluster status and Node.Describe show it."""
        return [cluster_pb2.ClusterMember(kind=name.partition("/")[0], node_id=name.partition("/")[2],
                                          addr=record.addr, metrics_addr=record.metrics_addr,
                                          draining=name.startswith("storage/")
                                          and name.partition("/")[2] in self.draining.items)
                for name, record in sorted(self.members.items.items()) if name.partition("/")[0] in self.rings]

    def owner(self, kind: str, key: str, partition: int = 0) -> "Member":
        """The member of kind that owns key (its pair with partition: see Ring.owner)."""
        found = self._owners.get((kind, key, partition))
        if found is not None:
            return found
        node = self.rings[kind].owner(key, partition)
        addr = self.live(kind).get(node) if node else None
        if addr is None:
            raise errors.Unavailable(f"no live {kind} node")
        if len(self._owners) >= MAX_CACHED_OWNERS:
            self._owners = {}
        found = self._owners[(kind, key, partition)] = Member(node, addr)
        return found

    def any_member(self, kind: str, key: str = "") -> str:
        """Address of some live member of kind (spread by key), for stateless services."""
        return self.owner(kind, key)[1]

    def channel(self, addr: str) -> grpc.aio.Channel:
        if self._tls is None:
            channel = self._channels.get(addr)
            if channel is None:
                channel = self._channels[addr] = grpc.aio.insecure_channel(addr, options=self._options)
            return channel
        credentials = self._tls.current()
        if self._tls.generation != self._tls_generation:  # rotated: new calls go over new connections
            self._tls_generation = self._tls.generation
            for old in self._retired:
                asyncio.ensure_future(old.close())
            self._retired, self._channels = list(self._channels.values()), {}
        channel = self._channels.get(addr)
        if channel is None:
            channel = self._channels[addr] = grpc.aio.secure_channel(addr, credentials, options=self._options)
        return channel

    async def topic(self, name: str) -> pubsub_pb2.Topic:
        return await self.topics.get("topic", name)

    async def subscription(self, name: str) -> pubsub_pb2.Subscription:
        return await self.subscriptions.get("subscription", name)

    async def category(self, name: str) -> notify_pb2.Category:
        return await self.categories.get("category", name)

    async def template(self, name: str, version: int = 0) -> notify_pb2.Template:
        """The version (0: the latest) from the mirror; on a miss, from etcd, so a
        version created a moment ago through another process is found."""
        versions = list(self.templates.groups.get(name, {}).values())
        found = [t for t in versions if t.version == version] if version else versions
        if not found:
            kvs = await self.etcd.get_prefix(template_versions_prefix(name))
            versions = [notify_pb2.Template.FromString(kv.value) for kv in kvs]
            found = [t for t in versions if t.version == version] if version else versions
        if not found:
            raise errors.NotFound(f"template {name!r} version {version} not found" if version
                                  else f"template {name!r} not found")
        return max(found, key=lambda t: t.version)

    async def provider(self, channel: int) -> notify_pb2.Provider:
        """The channel's first provider by priority; on a miss, from etcd, so one set a
        moment ago through another process is found."""
        name = channel_name(channel)
        found = list(self.providers.groups.get(name, {}).values())
        if not found:
            kvs = await self.etcd.get_prefix(PROVIDERS + name.encode())
            found = [sealing.mirrored_provider(kv.value) for kv in kvs
                     if kv.key[len(PROVIDERS):].decode().partition("/")[0] == name]
        if not found:
            raise errors.NotFound(f"provider {name!r} not found")
        return min(found, key=lambda provider: (provider.priority, provider.name))
