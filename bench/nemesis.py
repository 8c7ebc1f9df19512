#!/usr/bin/env python3
"""The randomised nemesis: a mesh with each process on a host of its own (network
namespaces, as the partition tests build them), one random fault at a time
(kills, pauses, a host cut off, a link cut or lossy, a service's wall clock
skewed) chosen by a seed, while a checker publishes unique payloads and consumes
them. Prints one JSON line: faults injected, messages acknowledged, lost (must
be 0), duplicated and why, leaders per (partition, epoch) that acknowledged
writes (must be one), the longest stall and each partition's longest
unavailability. Needs root, iproute2, nftables and
faketime (.ci/run installs them).

    sudo .venv/bin/python bench/nemesis.py --seconds 1800 --seed 7
"""

import argparse
import asyncio
import datetime
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

import notifymesh.server  # noqa: E402,F401  first: gRPC's I/O path, as the services choose it
from netns import Lab  # noqa: E402
from partitions import FAULT_KINDS, Checker, Nemesis, partitioned_mesh  # noqa: E402

from notifymesh.client import Client  # noqa: E402


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seconds", type=float, default=600, help="how long faults go on (default 600)")
    p.add_argument("--seed", type=int, default=1, help="chooses the faults: the same seed, the same faults")
    p.add_argument("--fault-min", type=float, default=3, help="shortest fault, s")
    p.add_argument("--fault-max", type=float, default=12, help="longest fault, s")
    p.add_argument("--quiet", type=float, default=5, help="calm after each fault, s")
    p.add_argument("--kinds", default=",".join(FAULT_KINDS), help=f"comma list of {','.join(FAULT_KINDS)}")
    p.add_argument("--partitions", type=int, default=2, help="partitions of the checker's topic")
    p.add_argument("--senders", type=int, default=2)
    p.add_argument("--frontends", type=int, default=2,
                   help="the checker's client uses all of them, so one frontend's fault need not stall it")
    return p


async def run(args, mesh, lab) -> dict:
    say = lambda line: print(f"nemesis: {line}", file=sys.stderr, flush=True)  # noqa: E731
    async with Client(mesh.frontend_target, timeout_s=10) as client:
        topic, sub = f"nemesis-{args.seed}", f"nemesis-{args.seed}-sub"
        await client.create_topic(topic, partitions=args.partitions, replication_factor=3)
        await client.create_subscription(sub, topic, ack_deadline_s=10)
        # Publishing must last the whole run: at most about 250 messages/s go out
        # (batches of 5, 20 ms apart), so this bound is never reached first.
        checker = Checker(client, topic, sub, mesh, max_published=int((args.seconds + 300) * 300))
        await checker.start()
        nemesis = Nemesis(mesh, lab, args.seed, (args.fault_min, args.fault_max), args.quiet,
                          tuple(args.kinds.split(",")))
        started = time.monotonic()
        await nemesis.run(args.seconds, progress=say)
        say(f"{len(nemesis.faults)} faults in {time.monotonic() - started:.0f}s; draining")
        report = await checker.stop(drain_s=120)
    return {"faults": len(nemesis.faults), "faults_by_kind": nemesis.counts(), **vars(report)}


def main() -> int:
    args = parser().parse_args()
    uname = platform.uname()
    line = {"system": "notifymesh", "bench": "nemesis", "seed": args.seed, "seconds": args.seconds,
            "senders": args.senders, "frontends": args.frontends,
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "machine": {"cores": os.cpu_count(), "system": f"{uname.system} {uname.release}"}}
    with tempfile.TemporaryDirectory() as tmp, Lab() as lab:
        mesh = partitioned_mesh(Path(tmp), lab, senders=args.senders, frontends=args.frontends)
        try:
            line |= asyncio.run(run(args, mesh, lab))
        except Exception as e:
            line["error"] = repr(e)
        finally:
            mesh.stop()
    print(json.dumps(line), flush=True)
    return 0 if line.get("lost") == 0 and line.get("one_leader_per_epoch") and "error" not in line else 2


if __name__ == "__main__":
    raise SystemExit(main())
