#!/usr/bin/env python3
"""The cost of one metric measurement, in this process: the OpenTelemetry SDK's
Histogram.record and Counter.add (attributes as a dict, as the call sites gave
them) against notifymesh.server.telemetry's pre-aggregated series (made once per
attribute set). Both under a MeterProvider as telemetry.setup makes it, read by
its reader. Prints one JSON line of microseconds per call (the best of --rounds).

    .venv/bin/python bench/metrics_record.py --calls 200000
"""

import argparse
import json
import random
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from opentelemetry.sdk.metrics import Histogram, MeterProvider  # noqa: E402
from opentelemetry.sdk.metrics.view import ExplicitBucketHistogramAggregation, View  # noqa: E402
from prometheus_client import CollectorRegistry  # noqa: E402

from notifymesh.server import telemetry  # noqa: E402


def best_us(run, calls: int, rounds: int) -> float:
    best = float("inf")
    for _ in range(rounds):
        started = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - started)
    return round(best / calls * 1e6, 3)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--calls", type=int, default=200_000)
    p.add_argument("--rounds", type=int, default=5)
    args = p.parse_args()
    provider = MeterProvider(
        resource=telemetry.resource("bench", "bench-1"),
        metric_readers=[telemetry.AggregatedReader(registry=CollectorRegistry(), instruments={})],
        views=[View(instrument_type=Histogram, instrument_unit="s",
                    aggregation=ExplicitBucketHistogramAggregation(telemetry.LATENCY_BUCKETS_S))])
    meter = provider.get_meter(telemetry.METER_NAME, telemetry.version())
    sdk_histogram = meter.create_histogram("bench.sdk.duration", unit="s")
    sdk_counter = meter.create_counter("bench.sdk.count", unit="{x}")
    histogram = telemetry.Aggregated("bench.aggregated.duration", "s", "", "histogram")
    counter = telemetry.Aggregated("bench.aggregated.count", "{x}", "", "counter")
    attributes = {"rpc.method": "/notifymesh.internal.v1.Storage/Append", "rpc.grpc.status_code": "OK"}
    values = [random.Random(1).lognormvariate(-7, 1.5) for _ in range(args.calls)]
    series, counted = histogram.series(attributes), counter.series(attributes)

    def sdk_records():
        record = sdk_histogram.record
        for value in values:
            record(value, attributes)

    def sdk_adds():
        add = sdk_counter.add
        for _ in values:
            add(1, attributes)

    def series_records():
        record = series.record
        for value in values:
            record(value)

    def series_adds():
        add = counted.add
        for _ in values:
            add(1)

    def looked_up_records():  # Aggregated.record: the attribute set found each call
        record = histogram.record
        for value in values:
            record(value, attributes)

    print(json.dumps({
        "bench": "metrics_record", "calls": args.calls, "rounds": args.rounds,
        "sdk_histogram_record_us": best_us(sdk_records, args.calls, args.rounds),
        "sdk_counter_add_us": best_us(sdk_adds, args.calls, args.rounds),
        "series_record_us": best_us(series_records, args.calls, args.rounds),
        "series_add_us": best_us(series_adds, args.calls, args.rounds),
        "aggregated_record_with_attributes_us": best_us(looked_up_records, args.calls, args.rounds),
    }))


if __name__ == "__main__":
    main()
