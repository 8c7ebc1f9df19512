"""Metrics of every service: OpenTelemetry's SDK (a MeterProvider whose resource
names the service, its instance and version) read by its Prometheus exporter, and
served as `GET /metrics` on each process's metrics address (`--metrics-listen`,
by default an ephemeral port on the gRPC listen host; registered in the member
record, so `notifymesh cluster status` and `make up` print where each one is).

What every process measures here: its gRPC calls (count and duration by method
and status code, open streams by method), the event loop's lag, its garbage
collections' pauses, etcd lease keep-alives, and, through prometheus_client's process collector, CPU seconds and
resident memory. Services add their own through `meter()` (storage: partitions
and backlogs; sender: deliveries, providers). Labels stay bounded: methods,
codes, topics, subscriptions, partitions, providers, never message ids.
"""

import asyncio
import collections
import gc
import logging
import time
from importlib import metadata as package_metadata

import grpc
from aiohttp import web
from opentelemetry import metrics as otel_metrics
from opentelemetry.exporter.prometheus import PrometheusMetricReader
from opentelemetry.sdk.metrics import Histogram, MeterProvider
from opentelemetry.sdk.metrics.view import ExplicitBucketHistogramAggregation, View
from opentelemetry.sdk.resources import Resource
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

from notifymesh.log import fields

log = logging.getLogger(__name__)

METER_NAME = "notifymesh"
# Latency buckets in seconds: 0.5 ms (a cached call) to 30 s (a long poll, a
# stalled provider); the OTel default tops out at 10 s with few sub-ms buckets.
LATENCY_BUCKETS_S = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
LOOP_LAG_PROBE_S = 0.25  # the event loop is asked to wake this often; how late it woke is its lag
# A collection holds the GIL throughout: every thread waits, the member lease's
# keep-alive thread too (one keep-alive a second, 3 s TTL). One this long is logged.
SLOW_GC_S = 1.0
GC_PAUSES_KEPT = 1000  # collections timed and not yet recorded: about a second's worth at most under load

_provider: MeterProvider | None = None


def version() -> str:
    try:
        return package_metadata.version("notifymesh")
    except package_metadata.PackageNotFoundError:
        return "0+unknown"


def resource(kind: str, node_id: str) -> Resource:
    """What names this process in metrics and traces (notifymesh.server.tracing)."""
    return Resource.create({"service.name": f"notifymesh-{kind}", "service.instance.id": node_id,
                            "service.version": version()})


def setup(kind: str, node_id: str) -> None:
    """The process's MeterProvider, exported to Prometheus; once per process."""
    global _provider
    if _provider is not None:
        return
    _provider = MeterProvider(resource=resource(kind, node_id), metric_readers=[PrometheusMetricReader()],
                              views=[View(instrument_type=Histogram, instrument_unit="s",
                                          aggregation=ExplicitBucketHistogramAggregation(LATENCY_BUCKETS_S))])
    otel_metrics.set_meter_provider(_provider)


def meter() -> otel_metrics.Meter:
    """The meter instruments are made on (a no-op one before setup: unit tests)."""
    return otel_metrics.get_meter(METER_NAME, version())


def scrape() -> bytes:
    """The Prometheus text exposition of every instrument (and the process collector)."""
    return generate_latest(REGISTRY)


class MetricsServer:
    """GET /metrics on its own address: storage, sender and metadata have no HTTP
    server of their own (the frontend also answers it on its HTTP port)."""

    def __init__(self, listen: str):
        self._listen = listen
        self._runner: web.AppRunner | None = None
        self.addr = ""

    async def start(self) -> str:
        app = web.Application()
        app.router.add_get("/metrics", metrics_handler)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        host, _, port = self._listen.rpartition(":")
        site = web.TCPSite(self._runner, host.strip("[]") or "127.0.0.1", int(port))
        await site.start()
        bound = site._server.sockets[0].getsockname()  # port 0: the one the kernel chose
        self.addr = f"{host or '127.0.0.1'}:{bound[1]}"
        return self.addr

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


async def metrics_handler(_request: web.Request) -> web.Response:
    # Collecting runs the services' gauge callbacks, which read in-memory state of
    # this loop's objects: on the loop, not in a thread.
    return web.Response(body=scrape(), headers={"Content-Type": CONTENT_TYPE_LATEST})


class RpcMetrics(grpc.aio.ServerInterceptor):
    """Every gRPC call the server takes: duration and count by method and code for
    unary calls and whole streams, and the streams open now by method."""

    def __init__(self):
        m = meter()
        self._duration = m.create_histogram("notifymesh.rpc.server.duration", unit="s",
                                            description="gRPC calls served, by method and status code")
        self._streams = m.create_up_down_counter("notifymesh.rpc.server.active_streams", unit="{stream}",
                                                 description="streaming calls open now, by method")
        # method -> (the handler served, its measured wrapper): made once per method,
        # not per call. Bounded by the server's methods (an unknown one has no handler).
        self._wrapped: dict[str, tuple] = {}
        # (method, code) -> the attributes recorded: built once each.
        self._attributes: dict[tuple[str, object], dict[str, str]] = {}

    async def intercept_service(self, continuation, handler_call_details):
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        method = handler_call_details.method
        cached = self._wrapped.get(method)
        if cached is not None and cached[0] is handler:
            return cached[1]
        wrapped = self._wrap(method, handler)
        self._wrapped[method] = (handler, wrapped)
        return wrapped

    def _wrap(self, method: str, handler):
        if handler.unary_unary:
            return grpc.unary_unary_rpc_method_handler(self._unary(method, handler.unary_unary),
                                                       handler.request_deserializer, handler.response_serializer)
        if handler.unary_stream:
            return grpc.unary_stream_rpc_method_handler(self._stream(method, handler.unary_stream),
                                                        handler.request_deserializer, handler.response_serializer)
        if handler.stream_stream:
            return grpc.stream_stream_rpc_method_handler(self._stream(method, handler.stream_stream),
                                                         handler.request_deserializer, handler.response_serializer)
        if handler.stream_unary:
            return grpc.stream_unary_rpc_method_handler(self._unary(method, handler.stream_unary),
                                                        handler.request_deserializer, handler.response_serializer)
        return handler

    def _record(self, method: str, started: float, context) -> None:
        code = context.code() if hasattr(context, "code") else None
        attributes = self._attributes.get((method, code))
        if attributes is None:
            name = code.name if isinstance(code, grpc.StatusCode) else "OK" if code in (None, 0) else str(code)
            attributes = self._attributes[(method, code)] = {"rpc.method": method, "rpc.grpc.status_code": name}
        self._duration.record(time.perf_counter() - started, attributes)

    def _unary(self, method: str, behaviour):
        async def call(request, context):
            started = time.perf_counter()
            try:
                return await behaviour(request, context)
            finally:
                self._record(method, started, context)
        return call

    def _stream(self, method: str, behaviour):
        async def call(request, context):
            started = time.perf_counter()
            self._streams.add(1, {"rpc.method": method})
            try:
                async for response in behaviour(request, context):
                    yield response
            finally:
                self._streams.add(-1, {"rpc.method": method})
                self._record(method, started, context)
        return call


class LoopLag:
    """How late the event loop wakes a task that asked to sleep LOOP_LAG_PROBE_S:
    the time any ready callback waited behind the others."""

    def __init__(self):
        self._lag = meter().create_histogram("notifymesh.event_loop.lag", unit="s",
                                             description="how late the event loop ran a timer due now")
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            due = loop.time() + LOOP_LAG_PROBE_S
            await asyncio.sleep(LOOP_LAG_PROBE_S)
            self._lag.record(max(0.0, loop.time() - due))

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)


class GcPauses:
    """How long each cyclic garbage collection took, by generation, and a warning
    for one over SLOW_GC_S. gc's callback only notes the time: recording or
    logging from inside a collection could wait on a lock the collecting thread
    holds itself; a task records what it noted, once a second."""

    def __init__(self):
        self._pause = meter().create_histogram("notifymesh.gc.pause", unit="s",
                                               description="cyclic garbage collections, by generation: "
                                                           "every thread of the process waits them out")
        self._started = 0.0
        # (generation, seconds, objects collected), oldest dropped past the bound
        self._noted: collections.deque[tuple[int, float, int]] = collections.deque(maxlen=GC_PAUSES_KEPT)
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        gc.callbacks.append(self._timed)
        self._task = asyncio.create_task(self._run())

    def _timed(self, phase: str, info: dict) -> None:
        if phase == "start":
            self._started = time.perf_counter()
        else:
            self._noted.append((info["generation"], time.perf_counter() - self._started, info["collected"]))

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(1)
            self.record()

    def record(self) -> None:
        """What the callback noted: into the histogram, and the slow ones to the log."""
        while self._noted:
            generation, took_s, collected = self._noted.popleft()
            self._pause.record(took_s, {"generation": str(generation)})
            if took_s > SLOW_GC_S:
                log.warning("long garbage collection: every thread waited", extra=fields(
                    generation=generation, took_s=round(took_s, 2), collected=collected))

    async def stop(self) -> None:
        if self._timed in gc.callbacks:
            gc.callbacks.remove(self._timed)
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
