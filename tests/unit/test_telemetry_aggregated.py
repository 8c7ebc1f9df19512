"""notifymesh.server.telemetry's pre-aggregated instruments: what they export
(through the SDK's reader) is what the SDK's own instruments export for the
same measurements, cumulative: the same points, and the same /metrics text."""

import random

from opentelemetry.sdk.metrics import Histogram, MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.metrics.view import ExplicitBucketHistogramAggregation, View
from prometheus_client import CollectorRegistry, generate_latest

from notifymesh.server import telemetry

RESOURCE = telemetry.resource("sender", "sender-test")
# Values on the boundaries (counted in the bucket below), under the first, over the last.
ON_BOUNDS = [*telemetry.LATENCY_BUCKETS_S, 0.0, 0.0001, 31.0, 1e-9]


def sdk_provider(reader) -> MeterProvider:
    """As telemetry.setup makes it, with reader."""
    return MeterProvider(resource=RESOURCE, metric_readers=[reader],
                         views=[View(instrument_type=Histogram, instrument_unit="s",
                                     aggregation=ExplicitBucketHistogramAggregation(telemetry.LATENCY_BUCKETS_S))])


def measurements(seed: int = 7) -> list[tuple[str, float, dict]]:
    """(instrument, value, attributes): a few attribute sets, one counter going down too."""
    rng = random.Random(seed)
    sets = [{"rpc.method": f"/m/{i}", "rpc.grpc.status_code": code} for i in range(3) for code in ("OK", "NOT_FOUND")]
    made = [("duration", v, sets[i % len(sets)]) for i, v in enumerate(ON_BOUNDS)]
    made += [("duration", rng.lognormvariate(-6, 2), rng.choice(sets)) for _ in range(3000)]
    made += [("sent", rng.randint(1, 5), {"subscription": rng.choice("ab")}) for _ in range(200)]
    made += [("open", rng.choice((1, -1)), {"rpc.method": rng.choice("xy")}) for _ in range(200)]
    made += [("open", -1, {"rpc.method": "z"})]  # back to 0: still a point
    return made


def make_sdk(meter):
    return {"duration": meter.create_histogram("notifymesh.rpc.server.duration", unit="s", description="calls"),
            "sent": meter.create_counter("notifymesh.stream.delivered", unit="{message}", description="sent"),
            "open": meter.create_up_down_counter("notifymesh.rpc.server.active_streams", unit="{stream}",
                                                 description="open")}


def make_aggregated() -> dict[str, telemetry.Aggregated]:
    return {"duration": telemetry.Aggregated("notifymesh.rpc.server.duration", "s", "calls", "histogram"),
            "sent": telemetry.Aggregated("notifymesh.stream.delivered", "{message}", "sent", "counter"),
            "open": telemetry.Aggregated("notifymesh.rpc.server.active_streams", "{stream}", "open",
                                         "up_down_counter")}


def feed(instruments, made, aggregated: bool) -> None:
    for name, value, attributes in made:
        instrument = instruments[name]
        if aggregated:  # as the call sites do: the series once, then its record or add
            series = instrument.series(attributes)
            (series.record if name == "duration" else series.add)(value)
        else:
            (instrument.record if name == "duration" else instrument.add)(value, attributes)


def points_of(metrics_data) -> dict[str, tuple]:
    """name -> (unit, description, its data's kind and flags, its points without their times).
    A histogram's sum to 12 digits: the SDK adds each collection's sum to the last
    one's, the pre-aggregated one every value to one sum (other roundings)."""
    found = {}
    for resource_metrics in metrics_data.resource_metrics:
        for scoped in resource_metrics.scope_metrics:
            for metric in scoped.metrics:
                data = metric.data
                points = sorted((tuple(sorted(p.attributes.items())),
                                 (p.count, float(f"{p.sum:.12g}"), tuple(p.bucket_counts), tuple(p.explicit_bounds), p.min, p.max)
                                 if hasattr(p, "bucket_counts") else p.value, list(p.exemplars))
                                for p in data.data_points)
                found[metric.name] = (metric.unit, metric.description, type(data).__name__,
                                      data.aggregation_temporality, getattr(data, "is_monotonic", None),
                                      scoped.scope, points)
    return found


def sdk_collected(made):
    reader = InMemoryMetricReader()
    meter = sdk_provider(reader).get_meter(telemetry.METER_NAME, telemetry.version())
    feed(make_sdk(meter), made, aggregated=False)
    return reader.get_metrics_data()


def aggregated_collected(made):
    """Merged into an SDK collection holding one instrument of its own."""
    reader = InMemoryMetricReader()
    meter = sdk_provider(reader).get_meter(telemetry.METER_NAME, telemetry.version())
    meter.create_histogram("probe", unit="s").record(0.1)
    instruments = make_aggregated()
    feed(instruments, made, aggregated=True)
    merged = points_of(telemetry.with_aggregated(reader.get_metrics_data(), instruments))
    del merged["probe"]
    return merged


def test_the_exported_points_are_the_sdks_for_the_same_measurements():
    made = measurements()
    expected = points_of(sdk_collected(made))
    assert set(expected) == {"notifymesh.rpc.server.duration", "notifymesh.stream.delivered",
                             "notifymesh.rpc.server.active_streams"}
    assert aggregated_collected(made) == expected


def test_collected_again_the_points_are_cumulative():
    first, second = measurements(1), measurements(2)
    sdk_reader = InMemoryMetricReader()
    sdk = make_sdk(sdk_provider(sdk_reader).get_meter(telemetry.METER_NAME, telemetry.version()))
    reader = InMemoryMetricReader()
    meter = sdk_provider(reader).get_meter(telemetry.METER_NAME, telemetry.version())
    meter.create_histogram("probe", unit="s").record(0.1)
    aggregated = make_aggregated()
    for made in (first, second):
        feed(sdk, made, aggregated=False)
        feed(aggregated, made, aggregated=True)
        expected = points_of(sdk_reader.get_metrics_data())
        merged = points_of(telemetry.with_aggregated(reader.get_metrics_data(), aggregated))
        del merged["probe"]
        assert merged == expected


def test_attribute_sets_past_the_limit_go_to_the_sdks_overflow_set():
    made = [("sent", 1, {"subscription": f"s{i}"}) for i in range(telemetry.CARDINALITY_LIMIT + 5)]
    assert aggregated_collected(made) == points_of(sdk_collected(made))


def test_an_attribute_set_never_recorded_has_no_point():
    reader = InMemoryMetricReader()
    meter = sdk_provider(reader).get_meter(telemetry.METER_NAME, telemetry.version())
    meter.create_histogram("probe", unit="s").record(0.1)
    instruments = make_aggregated()
    instruments["duration"].series({"rpc.method": "/never"})
    instruments["sent"].series({"subscription": "never"})
    merged = points_of(telemetry.with_aggregated(reader.get_metrics_data(), instruments))
    assert set(merged) == {"probe"}


def test_metrics_text_is_the_sdks():
    """/metrics through the reader telemetry.setup uses, against the SDK's own reader."""
    made = measurements()
    sdk_registry, registry = CollectorRegistry(), CollectorRegistry()
    from opentelemetry.exporter.prometheus import PrometheusMetricReader
    sdk_meter = sdk_provider(PrometheusMetricReader(registry=sdk_registry)).get_meter(
        telemetry.METER_NAME, telemetry.version())
    sdk_meter.create_histogram("probe", unit="s").record(0.1)
    feed(make_sdk(sdk_meter), made, aggregated=False)
    instruments = make_aggregated()
    meter = sdk_provider(telemetry.AggregatedReader(registry=registry, instruments=instruments)).get_meter(
        telemetry.METER_NAME, telemetry.version())
    meter.create_histogram("probe", unit="s").record(0.1)
    feed(instruments, made, aggregated=True)
    expected = sorted(generate_latest(sdk_registry).decode().splitlines())
    assert any(line.startswith("notifymesh_rpc_server_duration_seconds_bucket{") for line in expected)
    assert sorted(generate_latest(registry).decode().splitlines()) == expected


def test_an_instrument_is_one_per_name():
    made = telemetry.counter("notifymesh.test.one_per_name", unit="{x}")
    assert telemetry.counter("notifymesh.test.one_per_name", unit="{x}") is made
