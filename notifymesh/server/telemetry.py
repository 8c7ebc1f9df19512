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

The instruments recorded on every call or send (RPC durations, provider sends,
deliveries) are this module's pre-aggregated ones (`histogram()`, `counter()`,
`up_down_counter()`): the SDK's Histogram.record cleans and hashes the
attributes on every call, 9-25 us here; a series kept per attribute set takes
a record in 0.14-0.16 us (bench/metrics_record.py, docs/benchmarks.md). The reader
(AggregatedReader) merges their points into what the SDK collects, as the
same Metric records the SDK makes, so /metrics shows the same names, units,
buckets and labels; OpenTelemetry stays the API of every other instrument and
the export path of all.
"""

import asyncio
import collections
import gc
import logging
import math
import time
from bisect import bisect_left
from collections.abc import Mapping
from importlib import metadata as package_metadata

import grpc
from aiohttp import web
from opentelemetry import metrics as otel_metrics
from opentelemetry.exporter.prometheus import PrometheusMetricReader
from opentelemetry.sdk.metrics import Histogram, MeterProvider
from opentelemetry.sdk.metrics.export import (AggregationTemporality, HistogramDataPoint, Metric, MetricsData,
                                              NumberDataPoint, ResourceMetrics, ScopeMetrics, Sum)
from opentelemetry.sdk.metrics.export import Histogram as HistogramData
from opentelemetry.sdk.metrics.view import ExplicitBucketHistogramAggregation, View
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
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
    _provider = MeterProvider(resource=resource(kind, node_id), metric_readers=[AggregatedReader()],
                              views=[View(instrument_type=Histogram, instrument_unit="s",
                                          aggregation=ExplicitBucketHistogramAggregation(LATENCY_BUCKETS_S))])
    otel_metrics.set_meter_provider(_provider)


def meter() -> otel_metrics.Meter:
    """The meter instruments are made on (a no-op one before setup: unit tests)."""
    return otel_metrics.get_meter(METER_NAME, version())


def scrape() -> bytes:
    """The Prometheus text exposition of every instrument (and the process collector)."""
    return generate_latest(REGISTRY)


# The SDK's limit of attribute sets a metric stream exports (its default, that of
# the Prometheus reader); the sets past it are counted in one, as the SDK does.
CARDINALITY_LIMIT = 2000
_OVERFLOW = {"otel.metric.overflow": True}


class HistogramSeries:
    """One attribute set of a pre-aggregated histogram. record() is all a
    measurement costs: its bucket (the SDK's rule: a value on a boundary counts in
    the bucket below it), the sum, min and max. Event-loop thread only: the
    increments are not atomic across threads (collection runs on the loop too)."""
    __slots__ = ("attributes", "start_ns", "_bounds", "counts", "sum", "min", "max")

    def __init__(self, attributes: dict, bounds: tuple[float, ...]):
        self.attributes, self.start_ns, self._bounds = attributes, time.time_ns(), bounds
        self.counts = [0] * (len(bounds) + 1)
        self.sum, self.min, self.max = 0, math.inf, -math.inf

    def record(self, value: float) -> None:
        self.counts[bisect_left(self._bounds, value)] += 1
        self.sum += value
        if value < self.min:
            self.min = value
        if value > self.max:
            self.max = value

    def point(self, now_ns: int) -> HistogramDataPoint | None:
        count = sum(self.counts)
        if not count:  # the SDK has no point for an attribute set never recorded
            return None
        return HistogramDataPoint(attributes=self.attributes, start_time_unix_nano=self.start_ns,
                                  time_unix_nano=now_ns, count=count, sum=self.sum,
                                  bucket_counts=tuple(self.counts), explicit_bounds=self._bounds,
                                  min=self.min, max=self.max)


class CounterSeries:
    """One attribute set of a pre-aggregated counter (or up-down counter); as
    HistogramSeries, event-loop thread only."""
    __slots__ = ("attributes", "start_ns", "value", "added")

    def __init__(self, attributes: dict):
        self.attributes, self.start_ns, self.value, self.added = attributes, time.time_ns(), 0, False

    def add(self, amount: int | float) -> None:
        self.value += amount
        self.added = True

    def point(self, now_ns: int) -> NumberDataPoint | None:
        if not self.added:
            return None
        return NumberDataPoint(attributes=self.attributes, start_time_unix_nano=self.start_ns,
                               time_unix_nano=now_ns, value=self.value)


class Aggregated:
    """A pre-aggregated instrument (kind: "histogram", "counter" or
    "up_down_counter"): a series (HistogramSeries, CounterSeries) per attribute
    set, which series() finds by hashing the attributes: a hot call site keeps its
    series. At most CARDINALITY_LIMIT sets, then the SDK's overflow set."""

    def __init__(self, name: str, unit: str, description: str, kind: str,
                 bounds: tuple[float, ...] = LATENCY_BUCKETS_S):
        self.name, self.unit, self.description, self.kind = name, unit, description, kind
        self._make = (lambda attributes: HistogramSeries(attributes, bounds)) if kind == "histogram" \
            else CounterSeries
        self._series: dict[frozenset, HistogramSeries | CounterSeries] = {}

    def series(self, attributes: Mapping[str, str | bool | int | float] | None = None):
        key = frozenset(attributes.items()) if attributes else frozenset()
        found = self._series.get(key)
        if found is None:
            if len(self._series) >= CARDINALITY_LIMIT:
                key, attributes = frozenset(_OVERFLOW.items()), _OVERFLOW
                found = self._series.get(key)
            if found is None:
                found = self._series[key] = self._make(dict(attributes or {}))
        return found

    def record(self, value: float, attributes: Mapping | None = None) -> None:
        """A histogram's measurement, the attribute set looked up each time."""
        self.series(attributes).record(value)

    def add(self, amount: int | float, attributes: Mapping | None = None) -> None:
        """A counter's increment, the attribute set looked up each time."""
        self.series(attributes).add(amount)

    def metric(self, now_ns: int) -> Metric | None:
        """The SDK's record of this instrument, cumulative (the Prometheus reader's)."""
        points = [p for p in (s.point(now_ns) for s in list(self._series.values())) if p is not None]
        if not points:
            return None
        if self.kind == "histogram":
            data = HistogramData(data_points=points, aggregation_temporality=AggregationTemporality.CUMULATIVE)
        else:
            data = Sum(data_points=points, aggregation_temporality=AggregationTemporality.CUMULATIVE,
                       is_monotonic=self.kind == "counter")
        return Metric(name=self.name, description=self.description, unit=self.unit, data=data)


# name -> its instrument: one per name in the process, as the SDK's meter has it;
# as many as the modules make (a handful).
_aggregated: dict[str, Aggregated] = {}


def _instrument(name: str, unit: str, description: str, kind: str) -> Aggregated:
    made = _aggregated.get(name)
    if made is None:
        made = _aggregated[name] = Aggregated(name, unit, description, kind)
    elif (made.kind, made.unit) != (kind, unit):
        raise ValueError(f"instrument {name} made again as another kind or unit")
    return made


def histogram(name: str, unit: str = "s", description: str = "") -> Aggregated:
    """A pre-aggregated histogram (the latency buckets, as the SDK's view gives
    instruments in seconds)."""
    if unit != "s":
        raise ValueError("pre-aggregated histograms are of seconds (the latency buckets)")
    return _instrument(name, unit, description, "histogram")


def counter(name: str, unit: str = "", description: str = "") -> Aggregated:
    return _instrument(name, unit, description, "counter")


def up_down_counter(name: str, unit: str = "", description: str = "") -> Aggregated:
    return _instrument(name, unit, description, "up_down_counter")


def with_aggregated(collected: MetricsData, instruments: dict[str, Aggregated] | None = None) -> MetricsData:
    """What the SDK collected with the pre-aggregated instruments' metrics (by
    default the module's) added to its scope (the meter's: the same labels on /metrics)."""
    now_ns = time.time_ns()
    made = _aggregated if instruments is None else instruments
    metrics = [m for m in (i.metric(now_ns) for i in list(made.values())) if m is not None]
    if not metrics or not collected.resource_metrics:
        return collected
    first, *others = collected.resource_metrics
    scopes = list(first.scope_metrics)
    for i, scoped in enumerate(scopes):
        if scoped.scope.name == METER_NAME:
            scopes[i] = ScopeMetrics(scope=scoped.scope, metrics=[*scoped.metrics, *metrics],
                                     schema_url=scoped.schema_url)
            break
    else:
        scopes.append(ScopeMetrics(scope=InstrumentationScope(METER_NAME, version()), metrics=metrics,
                                   schema_url=""))
    return MetricsData(resource_metrics=[ResourceMetrics(resource=first.resource, scope_metrics=scopes,
                                                         schema_url=first.schema_url), *others])


class AggregatedReader(PrometheusMetricReader):
    """The Prometheus reader, given the pre-aggregated instruments' metrics with
    the SDK's (_receive_metrics: the SDK's hook for a reader's export). The SDK
    calls it only when it has a point of its own: every process's loop-lag
    probe records one within LOOP_LAG_PROBE_S of starting."""

    def __init__(self, *args, instruments: dict[str, Aggregated] | None = None, **kwargs):
        """instruments: by name, the module's (those made by histogram() and the others) by default."""
        super().__init__(*args, **kwargs)
        self._instruments = instruments

    def _receive_metrics(self, metrics_data: MetricsData, timeout_millis: float = 10_000, **kwargs) -> None:
        super()._receive_metrics(with_aggregated(metrics_data, self._instruments), timeout_millis, **kwargs)


class MetricsServer:
    """GET /metrics on its own address, in every process (the frontend's too: not on
    its public HTTP port, since subscription and topic names are labels)."""

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
        self._duration = histogram("notifymesh.rpc.server.duration", unit="s",
                                   description="gRPC calls served, by method and status code")
        self._streams = up_down_counter("notifymesh.rpc.server.active_streams", unit="{stream}",
                                        description="streaming calls open now, by method")
        # method -> (the handler served, its measured wrapper): made once per method,
        # not per call. Bounded by the server's methods (an unknown one has no handler).
        self._wrapped: dict[str, tuple] = {}
        # (method, code) -> its duration's series: made once each.
        self._series: dict[tuple[str, object], HistogramSeries] = {}

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
        series = self._series.get((method, code))
        if series is None:
            name = code.name if isinstance(code, grpc.StatusCode) else "OK" if code in (None, 0) else str(code)
            series = self._series[(method, code)] = self._duration.series({"rpc.method": method,
                                                                           "rpc.grpc.status_code": name})
        series.record(time.perf_counter() - started)

    def _unary(self, method: str, behaviour):
        async def call(request, context):
            started = time.perf_counter()
            try:
                return await behaviour(request, context)
            finally:
                self._record(method, started, context)
        return call

    def _stream(self, method: str, behaviour):
        streams = self._streams.series({"rpc.method": method})

        async def call(request, context):
            started = time.perf_counter()
            streams.add(1)
            try:
                async for response in behaviour(request, context):
                    yield response
            finally:
                streams.add(-1)
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
