"""Where a message's publish-to-deliver time goes, hop by hop, from traces.

Starts a local mesh (3 storage nodes, RF 3) with every message traced and an
OTLP/gRPC receiver in this process, runs `notifymesh bench` at a steady --rate,
and prints for each span of a message's trace (the frontend's publish, the
leader's append, each follower's replicate, the sender's pull, its delivery to
the subscriber's stream, the ack) its start and end after the publish started:
p50 and p90 over the messages, one JSON line per span and edge, in time order.
At 100 % sampling tracing costs CPU itself (docs/benchmarks.md): read the gaps
between hops, not the total.

    .venv/bin/python bench/latency_breakdown.py --rate 100 --messages 1000
"""

import argparse
import collections
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench.otlp_receiver import Span, SpanReceiver  # noqa: E402
from deploy.local import LocalMesh, free_frontend_port, tracing_args  # noqa: E402

MAX_SPANS = 200_000  # kept by the receiver: --messages is at most 20,000, about 8 spans each


def percentile(values: list[float], p: float) -> float:
    values = sorted(values)
    return round(values[min(len(values) - 1, int(len(values) * p))], 2)


def breakdown(spans: list[Span]) -> list[dict]:
    """Each span's start and end, in ms after its message's publish started, by
    process and span name; p50, p90 and how many messages had it."""
    by_trace: dict[str, list[Span]] = collections.defaultdict(list)
    for span in spans:
        for trace_id in set(span.trace_ids):
            by_trace[trace_id].append(span)
    offsets: dict[tuple[str, str, str], list[float]] = collections.defaultdict(list)
    for trace_spans in by_trace.values():
        publishes = [s for s in trace_spans if s.name == "notifymesh.publish"]
        if len(publishes) != 1:
            continue  # not a bench message's trace (or its publish span was lost)
        started = publishes[0].start_ns
        for span in trace_spans:
            offsets[(span.process, span.name, "start")].append((span.start_ns - started) / 1e6)
            offsets[(span.process, span.name, "end")].append((span.end_ns - started) / 1e6)
    rows = [{"process": process, "span": name, "edge": edge, "messages": len(values),
             "p50_ms": percentile(values, 0.5), "p90_ms": percentile(values, 0.9)}
            for (process, name, edge), values in offsets.items()]
    return sorted(rows, key=lambda row: row["p50_ms"])


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rate", type=float, default=100, help="msgs/s (1 to 5,000)")
    p.add_argument("--messages", type=int, default=1000, help="1 to 20,000")
    p.add_argument("--subscribers", type=int, default=1, help="1 to 10")
    args = p.parse_args()
    if not (1 <= args.rate <= 5000 and 1 <= args.messages <= 20_000 and 1 <= args.subscribers <= 10):
        p.error("--rate 1 to 5,000, --messages 1 to 20,000, --subscribers 1 to 10")
    receiver = SpanReceiver(keep=MAX_SPANS)
    data_dir = Path(tempfile.mkdtemp(prefix="notifymesh-breakdown-"))
    mesh = LocalMesh(data_dir / "mesh", frontend_port=free_frontend_port(), storage_nodes=3,
                     tracing=tracing_args(1, f"127.0.0.1:{receiver.port}"))
    try:
        mesh.start(progress=lambda line: print(line, file=sys.stderr, flush=True))
        bench = subprocess.run([sys.executable, "-m", "notifymesh.cli", "--addr", mesh.frontend_addr, "bench",
                                "--messages", str(args.messages), "--rate", f"{args.rate:g}",
                                "--subscribers", str(args.subscribers), "--replication-factor", "3"],
                               stdout=subprocess.PIPE, text=True, cwd=REPO, timeout=args.messages / args.rate + 300)
    finally:
        mesh.stop()  # the services export what they still hold as they stop
        receiver.stop()
        shutil.rmtree(data_dir, ignore_errors=True)
    run = json.loads(bench.stdout.splitlines()[-1]) if bench.stdout.strip() else {}
    print(json.dumps({"bench": "latency_breakdown", "rate": args.rate, "messages": args.messages,
                      "subscribers": args.subscribers, "date": run.get("date"), "machine": run.get("machine"),
                      "p50_ms": run.get("p50_ms"), "p99_ms": run.get("p99_ms"),
                      "publish_ack_p50_ms": run.get("publish_ack_p50_ms"), "spans": receiver.count,
                      "hops": breakdown(receiver.spans)}), flush=True)
    return 0 if run else 1


if __name__ == "__main__":
    sys.exit(main())
