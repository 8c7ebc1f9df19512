"""The one server factory and process lifecycle shared by every service.

A service supplies a Component (its servicers plus start/drain/close); run()
does the rest the same way everywhere: config from etcd, the cluster view,
the gRPC server with the error-mapping interceptor, health and Node services,
registration in etcd, and ordered shutdown on SIGTERM/SIGINT.
"""

import argparse
import asyncio
import gc
import json
import logging
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Awaitable, Callable, Protocol

import grpc
import uvloop
from google.protobuf.message import DecodeError
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from gen.notifymesh.internal.v1 import node_pb2, node_pb2_grpc
from notifymesh import contracts, errors
from notifymesh import log as log_mod
from notifymesh.channel import channel_options
from notifymesh.log import fields
from notifymesh.server import config as config_mod
from notifymesh.server import gc_freeze, sealing, telemetry, tracing
from notifymesh.server.cluster import Cluster, PrefixMirror, Registration, connect_etcd, etcd_channel
from notifymesh.server.status import answered
from notifymesh.server.tls import ChannelCredentials, TlsFiles, server_credentials

log = logging.getLogger(__name__)

SLOW_CALL_S = 1.0
SLOW_CALL_LOG_EVERY_S = 10.0
DRAIN_GRACE_S = 5.0
GIL_SWITCH_INTERVAL_S = 0.0005  # see main()
GC_THRESHOLDS = (50_000, 20, 10)  # see main()


class SlowCalls:
    """Logs slow calls, per method at most once every SLOW_CALL_LOG_EVERY_S with how
    many there were since the last line and the slowest: under overload a line per
    call (thousands a second were seen) would only add to the load."""

    def __init__(self):
        self._since: dict[str, tuple[float | None, int, float]] = {}  # method -> (last logged, calls, slowest)

    def record(self, method: str, seconds: float) -> None:
        now = time.monotonic()
        logged, calls, slowest = self._since.get(method, (None, 0, 0.0))
        calls, slowest = calls + 1, max(slowest, seconds)
        if logged is None or now - logged >= SLOW_CALL_LOG_EVERY_S:
            log.warning("slow calls", extra=fields(method=method, calls=calls, slowest_s=round(slowest, 3)))
            self._since[method] = (now, 0, 0.0)
        else:
            self._since[method] = (logged, calls, slowest)


def _fail(context: grpc.aio.ServicerContext, error: Exception, method: str) -> None:
    """Ends the call with the error's status, set on the context for the handler
    to return: not context.abort(), whose AbortError grpc keeps on the call's state
    while its traceback keeps the aborting frames, the context (and so the state)
    and, through the error it was raised over, the request: a reference cycle per
    refused call, about 2 KiB per refused 1 KiB message, that only a rare full
    collection (GC_THRESHOLDS) would free. Measured: 20,000 refused messages grew
    the frontend by 45 MiB with abort(), by under 2 MiB this way."""
    mapped = answered(error, method)
    context.set_code(mapped[0])
    context.set_details(mapped[1])
    if isinstance(error, errors.RateLimited):
        context.set_trailing_metadata((("grpc-status-details-bin", error.status_details()),))


def _parse(deserialize, raw: bytes):
    try:
        return deserialize(raw) if deserialize else raw
    except DecodeError as e:
        raise errors.InvalidArgument(f"malformed request: {e}") from None


async def _mapped(responses: Callable[[], Any], context, method: str):
    """Yields what responses() yields; an error ends the stream with its status."""
    try:
        async for response in responses():
            yield response
    except (asyncio.CancelledError, grpc.aio.AbortError):
        raise
    except Exception as e:
        _fail(context, e, method)


class ErrorInterceptor(grpc.aio.ServerInterceptor):
    """Maps errors to status codes (notifymesh.server.status) for every handler and logs
    slow calls. Cancellation and explicit aborts pass through. Requests are parsed
    here rather than by grpc, so a malformed one is INVALID_ARGUMENT, not UNKNOWN."""

    def __init__(self):
        self._slow_calls = SlowCalls()
        # method -> (the handler served, its wrapper): made once per method, not per
        # call (and so the same object for telemetry.RpcMetrics' own such cache).
        self._wrapped: dict[str, tuple] = {}

    async def intercept_service(self, continuation, details):
        handler = await continuation(details)
        if handler is None:
            return None
        cached = self._wrapped.get(details.method)
        if cached is None or cached[0] is not handler:
            cached = self._wrapped[details.method] = (handler, self._wrap(details.method, handler))
        return cached[1]

    def _wrap(self, method: str, handler):
        deserialize = handler.request_deserializer
        if handler.unary_unary:
            inner = handler.unary_unary

            async def unary_unary(raw, context):
                started = time.monotonic()
                try:
                    return await inner(_parse(deserialize, raw), context)
                except (asyncio.CancelledError, grpc.aio.AbortError):
                    raise
                except Exception as e:
                    _fail(context, e, method)
                    return None  # grpc sends no response with a status that is not OK
                finally:
                    if (elapsed := time.monotonic() - started) > SLOW_CALL_S:
                        self._slow_calls.record(method, elapsed)

            return grpc.unary_unary_rpc_method_handler(unary_unary, None, handler.response_serializer)
        if handler.unary_stream:
            inner_stream = handler.unary_stream

            async def unary_stream(raw, context):
                async for response in _mapped(lambda: inner_stream(_parse(deserialize, raw), context), context, method):
                    yield response

            serialize = handler.response_serializer
            return grpc.unary_stream_rpc_method_handler(  # a relayed frame comes serialized already
                unary_stream, None, lambda response: response if isinstance(response, bytes) else serialize(response))
        if handler.stream_stream:
            inner_bidi = handler.stream_stream

            async def stream_stream(requests, context):
                async for response in _mapped(lambda: inner_bidi(requests, context), context, method):
                    yield response

            return grpc.stream_stream_rpc_method_handler(stream_stream, deserialize, handler.response_serializer)
        return handler


class NodeServicer(node_pb2_grpc.NodeServicer):
    def __init__(self, kind: str, node_id: str, cluster: Cluster, shard_status: Callable[[], list]):
        self._kind, self._node_id, self._cluster, self._shard_status = kind, node_id, cluster, shard_status

    async def Describe(self, request, context):
        cluster = self._cluster
        return node_pb2.DescribeResponse(
            kind=self._kind, node_id=self._node_id, members=cluster.described_members(),
            topic_owners={t: cluster.rings["storage"].owner(t) or "" for t in request.topics},
            subscription_owners={s: cluster.rings["sender"].owner(s) or "" for s in request.subscriptions},
            shards=self._shard_status())


Servicer = tuple[Callable[[Any, grpc.aio.Server], None], Any]


class Component(Protocol):
    """What a service adds to the common process."""

    servicers: list[Servicer]
    # Full names of the public services, for server reflection (frontend only).
    reflected: tuple[str, ...]

    async def start(self) -> None: ...
    async def drain(self) -> None: ...   # stop streams and background work; the server still answers
    async def close(self) -> None: ...   # after the server stopped: flush and close state
    # Optional: shard_status() -> list[notifymesh.v1.ShardStatus], for Node.Describe (storage nodes).
    # Optional: interceptors, a tuple of server interceptors (the frontend's auth).


@dataclass
class Context:
    kind: str
    node_id: str
    args: argparse.Namespace
    config: config_mod.LiveConfig  # read like a Config; follows etcd (see config.RESTART_REQUIRED)
    cluster: Cluster
    # Set once the process is registered in etcd (after component.start()).
    registration: Registration | None = None


# grpc cancels new calls beyond 1,000 (soft) / 3,000 (hard) not yet taken up by
# the server; the aio server takes them one at a time, so thousands of subscribers
# (re)connecting at once to a frontend or sender were cancelled. Measured: 10,000
# streams opened at once all attach with these limits. grpc also cancels a call
# left untaken 30 s (grpc.server_max_unrequested_time_in_server): of 50,000 opened
# at once, the frontend took about 1,000 a second: those left waiting longer were cancelled;
# the client opens a stream cancelled so again (notifymesh.client).
MAX_PENDING_CALLS = 20_000


def build_server(servicers: list[Servicer], max_message_bytes: int, listen: str,
                 reflected: tuple[str, ...] = (), credentials: grpc.ServerCredentials | None = None,
                 interceptors: tuple = ()) -> tuple[grpc.aio.Server, int, health.aio.HealthServicer]:
    """Returns (server, bound port, health servicer); listen may end in :0.
    credentials None: plaintext. interceptors: the component's own, inside the error
    mapping (its errors are mapped)."""
    options = [*channel_options(max_message_bytes), ("grpc.server.max_pending_requests", MAX_PENDING_CALLS),
               ("grpc.server.max_pending_requests_hard_limit", 2 * MAX_PENDING_CALLS)]
    # Outermost first: the metrics see the status the error map gave.
    server = grpc.aio.server(interceptors=[telemetry.RpcMetrics(), ErrorInterceptor(), *interceptors],
                             options=options)
    for add, servicer in servicers:
        add(servicer, server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    if reflected:
        reflection.enable_server_reflection(
            (*reflected, health.SERVICE_NAME, reflection.SERVICE_NAME), server)
    port = server.add_secure_port(listen, credentials) if credentials else server.add_insecure_port(listen)
    if port == 0:
        raise OSError(f"cannot listen on {listen}")
    return server, port, health_servicer


def parser(kind: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=f"python -m {kind}", description=f"notifymesh {kind} service")
    p.add_argument("--node-id", required=True)
    p.add_argument("--etcd", default="127.0.0.1:2379", help="etcd client endpoint host:port")
    p.add_argument("--listen", default="127.0.0.1:0", help="host:port to serve on (port 0: any free port)")
    p.add_argument("--advertise", help="host:port the others reach this process at, when not the listen address "
                                       "(behind a proxy or NAT)")
    p.add_argument("--config", type=Path, help="JSON config file (see notifymesh/config.py)")
    p.add_argument("--master-key-file", type=Path,
                   help="the cluster master key for encryption at rest (notifymesh/server/sealing.py); else "
                        "NOTIFYMESH_MASTER_KEY_FILE, NOTIFYMESH_MASTER_KEY or NOTIFYMESH_KMS_COMMAND")
    p.add_argument("--log-level", default="INFO")
    tls = p.add_mutually_exclusive_group(required=True)
    tls.add_argument("--tls-dir", type=Path, help="mutual TLS: ca.pem, <node-id>.pem and <node-id>.key in this "
                                                  "directory (see notifymesh/server/tls.py)")
    tls.add_argument("--plaintext", action="store_true", help="no TLS, for a network where TLS ends elsewhere")
    p.add_argument("--tls-name", help="the name of this process's files in --tls-dir (default the node id; "
                                      "one certificate for all the replicas of a deployment)")
    p.add_argument("--metrics-listen", help="host:port of GET /metrics (default: the listen host, any free port)")
    tracing.add_arguments(p)
    return p


async def _read_etcd_config(etcd) -> dict:
    """The cluster-wide config object, waiting up to 30 s for etcd to come up."""
    deadline = time.monotonic() + 30
    while True:
        try:
            kv = await etcd.get(contracts.CONFIG)
            return json.loads(kv.value) if kv else {}
        except Exception as e:
            if time.monotonic() > deadline:
                raise SystemExit(f"etcd unreachable: {e!r}")
            await asyncio.sleep(0.3)


def _config_object(value: bytes):
    """The etcd config key's JSON, or None when it is not JSON (LiveConfig keeps its own then)."""
    try:
        return json.loads(value)
    except ValueError:
        return None


async def follow_config(etcd, config: config_mod.LiveConfig) -> PrefixMirror:
    """A watch of the config key that updates config at each change (a deleted key: the defaults)."""
    mirror = PrefixMirror(etcd, contracts.CONFIG, _config_object)  # the key alone: no other key starts so
    mirror.on_change(lambda _name: config.update(mirror.items.get("", {})))
    await mirror.start()
    return mirror


TASKS_LOGGED = 200  # SIGUSR1 logs at most this many tasks' stacks


def log_tasks(state: Callable[[], dict] | None = None) -> None:
    """SIGUSR1: where every task of the event loop waits, and the component's own
    state() if it has one, for a person finding out why a live process makes no
    progress (`kill -USR1 <pid>`; py-spy shows only the running frame, not the awaits)."""
    if state is not None:
        log.warning("state", extra=fields(state=state()))
    # What a full collection walks (the frozen: notifymesh/server/gc_freeze.py).
    log.warning("garbage collector", extra=fields(tracked_by_generation=[len(gc.get_objects(g)) for g in range(3)],
                                                  frozen=gc.get_freeze_count()))
    tasks = list(asyncio.all_tasks())
    for task in tasks[:TASKS_LOGGED]:
        log.warning("task", extra=fields(task=task.get_name(), awaits=_awaits(task.get_coro())))
    log.warning("tasks logged", extra=fields(count=min(len(tasks), TASKS_LOGGED), of=len(tasks)))


def _awaits(awaitable, depth: int = 24) -> list[str]:
    """The chain of awaits from a task's coroutine down to what it waits for."""
    chain = []
    while awaitable is not None and len(chain) < depth:
        frame = getattr(awaitable, "cr_frame", None) or getattr(awaitable, "gi_frame", None) \
            or getattr(awaitable, "ag_frame", None)
        if frame is None:
            chain.append(repr(awaitable)[:200])  # a future, or a coroutine that finished
            break
        chain.append(f"{frame.f_code.co_filename.rsplit('/', 2)[-1]}:{frame.f_lineno} {frame.f_code.co_name}")
        awaitable = getattr(awaitable, "cr_await", None) or getattr(awaitable, "gi_yieldfrom", None) \
            or getattr(awaitable, "ag_await", None)
    return chain


def _frontend_mtls_port(kind: str, args: argparse.Namespace, config, files: TlsFiles | None,
                        server: grpc.aio.Server) -> str:
    """The frontend's second port, mutual TLS (client certificate of the cluster CA
    required): gRPC Python cannot ask for a client certificate optionally on one port.
    Internal RPCs are served only here (frontend/auth.py); public ones too, the caller
    a certificate principal. At the public port + frontend_mtls_port_offset (any free
    port when that is 0); the address to advertise, "" when there is none."""
    if kind != "frontend" or files is None:
        return ""
    host, _, port = args.listen.rpartition(":")
    wanted = int(port) + config.frontend_mtls_port_offset if int(port) else 0
    bound = server.add_secure_port(f"{host}:{wanted}", server_credentials(files, require_client_cert=True))
    if bound == 0:
        raise OSError(f"cannot listen on {host}:{wanted} (the frontend's mutual-TLS port)")
    advertised = args.advertise.rpartition(":")[0] if args.advertise else (host or "127.0.0.1")
    if advertised in ("0.0.0.0", "[::]"):
        advertised = "127.0.0.1"
    return f"{advertised}:{bound}"


async def serve(kind: str, args: argparse.Namespace,
                build: Callable[[Context], Awaitable[Component]]) -> None:
    log_mod.setup(kind, args.node_id, args.log_level)
    telemetry.setup(kind, args.node_id)
    tracing.setup(kind, args.node_id, tracing.settings_of(args))
    files = None if args.plaintext else TlsFiles(args.tls_dir, args.tls_name or args.node_id)
    try:
        tls = ChannelCredentials(files) if files else None
    except (OSError, ValueError) as e:
        raise SystemExit(f"cannot read this process's TLS files: {e}")
    etcd = connect_etcd(args.etcd, tls)
    config = config_mod.LiveConfig(args.config, etcd_values=await _read_etcd_config(etcd))
    settings = await follow_config(etcd, config)
    # Before the cluster's mirrors: they open the secrets sealed in etcd records.
    ring = sealing.KeyRing(sealing.master_key(args.master_key_file), enabled=bool(config.encrypt_at_rest))
    await sealing.load(etcd, ring)
    sealing.install(ring)
    data_keys = await sealing.follow(etcd, ring)
    cluster = Cluster(etcd, config.max_grpc_message_bytes, tls)
    await cluster.start()
    ctx = Context(kind, args.node_id, args, config, cluster)
    component = await build(ctx)

    # Storage nodes report their shards; other kinds have none.
    shard_status = getattr(component, "shard_status", list)
    servicers = [*component.servicers, (node_pb2_grpc.add_NodeServicer_to_server,
                                        NodeServicer(kind, args.node_id, cluster, shard_status))]
    # The frontend's port is the public one: API keys, not client certificates (see tls.py).
    credentials = server_credentials(files, require_client_cert=kind != "frontend") if files else None
    server, port, health_servicer = build_server(
        servicers, config.max_grpc_message_bytes, args.listen, component.reflected, credentials,
        getattr(component, "interceptors", ()))
    internal_addr = _frontend_mtls_port(kind, args, config, files, server)
    await server.start()
    await component.start()
    host = args.listen.rpartition(":")[0] or "127.0.0.1"
    addr = args.advertise or f"{host}:{port}"
    metrics_server = telemetry.MetricsServer(args.metrics_listen or f"{host}:0")
    metrics_addr = await metrics_server.start()
    if host in ("0.0.0.0", "[::]") and args.advertise:  # reachable at the advertised host
        metrics_addr = f"{args.advertise.rpartition(':')[0]}:{metrics_addr.rpartition(':')[2]}"
    loop_lag, gc_pauses = telemetry.LoopLag(), telemetry.GcPauses()
    frozen = gc_freeze.FrozenSurvivors() if kind in gc_freeze.KINDS else None
    loop_lag.start()
    gc_pauses.start()  # before the freezer: a collection's pause is timed without its freeze
    if frozen is not None:
        frozen.start()
    registration = Registration(etcd, kind, args.node_id, addr, config.member_lease_ttl_s, metrics_addr,
                                internal_addr, keeper_channel=lambda: etcd_channel(args.etcd, tls))
    await registration.start()
    ctx.registration = registration
    await health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    log.info("serving", extra=fields(addr=addr, metrics=f"http://{metrics_addr}/metrics"))

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGUSR1, log_tasks, getattr(component, "state", None))
    await stop.wait()

    # Ordered shutdown: NOT_SERVING, drain streams and hand over, leave the rings,
    # stop the server with a grace period, then flush state.
    log.info("shutting down")
    await health_servicer.enter_graceful_shutdown()
    await component.drain()  # still registered: a storage leader hands over its state first
    await registration.stop()
    await server.stop(DRAIN_GRACE_S)
    await component.close()
    await loop_lag.stop()
    await gc_pauses.stop()
    if frozen is not None:
        await frozen.stop()
    await metrics_server.stop()
    await cluster.stop()
    await data_keys.stop()
    await settings.stop()
    await etcd.close()
    tracing.shutdown()
    log.info("stopped")


def main(kind: str, build: Callable[[Context], Awaitable[Component]],
         add_arguments: Callable[[argparse.ArgumentParser], None] | None = None) -> None:
    p = parser(kind)
    if add_arguments:
        add_arguments(p)
    # The event loop shares the GIL with gRPC's own threads (and the storage node's
    # write thread); one that needs it while the loop runs Python waits for the
    # switch interval, 5 ms by default, so under load every message arriving stood
    # in line behind it. At 0.5 ms, A/B over five rounds: K=10 delivered +21%, K=1
    # publish +10%, p50 at 5,000 msg/s 10.6 ms against 14.7 ms (0.2 ms was worse).
    sys.setswitchinterval(GIL_SWITCH_INTERVAL_S)
    # Python's cyclic GC walks every object of the generations it collects, and
    # by default starts after 700 net new objects. Busy services collected their
    # young objects constantly, promoting in-flight messages to older generations
    # that then had to be walked too; with 10,000 streams (about a million live
    # objects) the sender spent 8 s of the fan-out bench in full collections of
    # up to 0.9 s each. See docs/benchmarks.md for the A/B.
    gc.set_threshold(*GC_THRESHOLDS)
    uvloop.run(serve(kind, p.parse_args(), build))
