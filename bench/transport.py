"""The cost of the transport's security and compression (issue 17), as A/B runs:

  tls          two local meshes side by side, one with TLS (the default) and one
               plaintext (LocalMesh(tls=False)); `notifymesh bench` runs against
               each in turn, --rounds times, so both see the same machine load.
  compression  on the TLS mesh: publish throughput of SIZE-byte JSON-like payloads
               (one message per request, --window requests in flight) with the
               client's gzip off and on, alternating, for each size in --sizes;
               plus the bytes gzip makes of one such request and its time to compress.

One JSON line per run on stdout, a summary line per comparison at the end.

    .venv/bin/python bench/transport.py --rounds 3 --messages 20000
"""

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import zlib
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import notifymesh.server  # noqa: E402,F401  first: gRPC's I/O path, as the services choose it
from bench.procfs import cpu_s  # noqa: E402
from deploy.local import LocalMesh, free_frontend_port, free_port  # noqa: E402
from notifymesh.client import Client  # noqa: E402
from notifymesh.publisher import Publisher  # noqa: E402

NOTIFYMESH = Path(sys.executable).with_name("notifymesh")


def new_mesh(path: Path, tls: bool) -> LocalMesh:
    mesh = LocalMesh(path, frontend_ports=[free_frontend_port()], etcd_ports=[(free_port(), free_port())],
                     provider_ports=(free_port(), free_port(), free_port()), tls=tls)
    mesh.start()
    return mesh


def mesh_cpu_s(mesh: LocalMesh) -> float:
    """CPU time of every process of the mesh (etcd and services) so far: less swayed
    by a busy machine than throughput, which waits for the cores."""
    return sum(cpu_s(p.popen.pid) for p in mesh.processes.values() if p.popen is not None)


def cli_bench(mesh: LocalMesh, args) -> dict:
    argv = [str(NOTIFYMESH) if NOTIFYMESH.exists() else sys.executable, *([] if NOTIFYMESH.exists() else
            ["-m", "notifymesh.cli"]), "--addr", mesh.frontend_addr, "bench", "--messages", str(args.messages),
            "--size", str(args.size), "--subscribers", str(args.subscribers)]
    before = mesh_cpu_s(mesh)
    done = subprocess.run(argv, capture_output=True, text=True, timeout=900)
    line = json.loads(done.stdout.strip().splitlines()[-1])
    line["mesh_cpu_ms_per_msg"] = 1000 * (mesh_cpu_s(mesh) - before) / line["published"]
    line["client_cpu_ms_per_msg"] = 1000 * sum(line["cpu_s"]["publishers"]) / line["published"]
    return line


def payload(size: int) -> bytes:
    """JSON-like text, as notification payloads are, with random ids in it (gzip
    takes it to about a fifth)."""
    line = b'{"user": "%s", "event": "order.shipped", "items": [{"sku": "%s", "qty": %d}]}\n'
    out, i = bytearray(), 0
    while len(out) < size:
        out += line % (os.urandom(6).hex().encode(), os.urandom(4).hex().encode(), i % 7)
        i += 1
    return bytes(out[:size])


async def publish_rate(addr: str, size: int, compress: bool, seconds: float, window: int) -> float:
    data = payload(size)
    async with Client(addr) as client:
        client.compress_over_bytes = 0 if compress else None
        topic = f"transport-{size}-{int(compress)}-{time.monotonic_ns()}"
        await client.create_topic(topic)
        await client.publish(topic, [data])
        sent, deadline = 0, time.monotonic() + seconds

        async def worker():
            nonlocal sent
            while time.monotonic() < deadline:
                await client.publish(topic, [data])
                sent += 1

        started = time.monotonic()
        await asyncio.gather(*(worker() for _ in range(window)))
        rate = sent / (time.monotonic() - started)
        await client.delete_topic(topic)
        return rate


async def batched_rate(addr: str, size: int, compress: bool, messages: int) -> float:
    """Publisher's batches (up to 500 messages, 1 MiB) of size-byte JSON-like messages:
    the requests of a busy publisher, far over the threshold."""
    data = [payload(size) for _ in range(100)]
    async with Client(addr) as client:
        client.compress_over_bytes = 0 if compress else None
        topic = f"transport-batched-{int(compress)}-{time.monotonic_ns()}"
        await client.create_topic(topic)
        async with Publisher(client) as publisher:
            started = time.monotonic()
            futures = [await publisher.publish(topic, data[i % 100]) for i in range(messages)]
            await asyncio.gather(*futures)
            rate = messages / (time.monotonic() - started)
        await client.delete_topic(topic)
        return rate


def spread(values: list[float]) -> dict:
    return {"median": round(statistics.median(values), 3), "min": round(min(values), 3),
            "max": round(max(values), 3), "runs": [round(v, 3) for v in values]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", choices=("tls", "compression"))
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--messages", type=int, default=20000, help="of each `notifymesh bench` run")
    p.add_argument("--size", type=int, default=256, help="payload bytes of the tls comparison")
    p.add_argument("--subscribers", type=int, default=0, help="of the tls comparison (0: publishing alone)")
    p.add_argument("--sizes", default="4096,65536", help="payload sizes of the compression comparison")
    p.add_argument("--seconds", type=float, default=8, help="of each compression run")
    p.add_argument("--window", type=int, default=16, help="publish requests in flight (compression)")
    args = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="transport-bench-") as tmp:
        meshes = {"tls": new_mesh(Path(tmp) / "tls", True)}
        try:
            if args.only != "compression":
                meshes["plaintext"] = new_mesh(Path(tmp) / "plain", False)
                keys = ("publish_msgs_per_s", "mesh_cpu_ms_per_msg", "client_cpu_ms_per_msg")
                runs = {mode: {key: [] for key in keys} for mode in ("tls", "plaintext")}
                for _ in range(args.rounds):
                    for mode in ("plaintext", "tls"):
                        line = cli_bench(meshes[mode], args)
                        for key in keys:
                            runs[mode][key].append(line[key])
                        print(json.dumps({"bench": "tls", "mode": mode, **{key: line[key] for key in keys},
                                          "loadavg": line["loadavg"]}), flush=True)
                summary = {"bench": "tls", "size": args.size, "messages": args.messages}
                for key in keys:
                    tls, plain = (statistics.median(runs[mode][key]) for mode in ("tls", "plaintext"))
                    summary[key] = {"tls": spread(runs["tls"][key]), "plaintext": spread(runs["plaintext"][key]),
                                    "tls_vs_plaintext_pct": round(100 * (tls - plain) / plain, 1)}
                print(json.dumps({**summary, "loadavg": os.getloadavg()}), flush=True)
            if args.only != "tls":
                rates = {False: [], True: []}
                for _ in range(args.rounds):
                    for compress in (False, True):
                        rates[compress].append(asyncio.run(batched_rate(
                            meshes["tls"].frontend_addr, 256, compress, args.messages)))
                print(json.dumps({"bench": "compression", "batched": True, "size": 256, "messages": args.messages,
                                  "plain": spread(rates[False]), "gzip": spread(rates[True]),
                                  "loadavg": os.getloadavg()}), flush=True)
                for size in (int(s) for s in args.sizes.split(",")):
                    rates = {False: [], True: []}
                    for _ in range(args.rounds):
                        for compress in (False, True):
                            rates[compress].append(asyncio.run(publish_rate(
                                meshes["tls"].frontend_addr, size, compress, args.seconds, args.window)))
                    data = payload(size)
                    started = time.process_time()
                    for _ in range(100):
                        packed = zlib.compress(data)  # gzip is deflate plus a header and checksum
                    print(json.dumps({"bench": "compression", "size": size, "window": args.window,
                                      "plain": spread(rates[False]), "gzip": spread(rates[True]),
                                      "gzip_vs_plain_pct": round(100 * (statistics.median(rates[True])
                                                                        - statistics.median(rates[False]))
                                                                 / statistics.median(rates[False]), 1),
                                      "compressed_bytes": len(packed),
                                      "compress_cpu_ms": round((time.process_time() - started) * 10, 3),
                                      "loadavg": os.getloadavg()}), flush=True)
        finally:
            for mesh in meshes.values():
                mesh.stop()


if __name__ == "__main__":
    main()
