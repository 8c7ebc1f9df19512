"""What dashboard viewers cost the frontend: CPU seconds per second of the frontend
process (/proc/<pid>/stat) with 0, 1, 10 and 30 event streams open on a fresh mesh
of 20 two-partition topics, and the snapshots each received per second. One snapshot
is built a second for all of them (frontend/dashboard.py SnapshotHub), so the cost
should hardly grow with the viewers. One JSON line per viewer count.

  .venv/bin/python bench/dashboard_viewers.py [--seconds 20]
"""

import argparse
import asyncio
import json
import os
import shutil
import sys
import tempfile
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import aiohttp  # noqa: E402

from deploy.local import LocalMesh, free_frontend_port, free_port  # noqa: E402
from notifymesh.client import Client  # noqa: E402

TICK = os.sysconf("SC_CLK_TCK")


def cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK  # utime + stime


async def measure(mesh: LocalMesh, viewers: int, seconds: float) -> dict:
    url, key = mesh.dashboard_urls()[0], mesh.admin_key_path.read_text().strip()
    pid = mesh.processes["frontend-1"].popen.pid
    received = [0] * viewers

    async def view(i: int) -> None:
        async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as session:
            async with session.post(f"{url}/login", json={"key": key}) as reply:
                reply.raise_for_status()
            async with session.get(f"{url}/api/events") as stream:
                async for line in stream.content:
                    received[i] += line.startswith(b"event: snapshot")

    tasks = [asyncio.create_task(view(i)) for i in range(viewers)]
    await asyncio.sleep(3)  # logged in and streaming
    cpu0, t0, got0 = cpu_s(pid), time.monotonic(), sum(received)
    await asyncio.sleep(seconds)
    cpu1, t1, got1 = cpu_s(pid), time.monotonic(), sum(received)
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    return {"bench": "dashboard_viewers", "viewers": viewers,
            "frontend_cpu_s_per_s": round((cpu1 - cpu0) / (t1 - t0), 3),
            "snapshots_per_viewer_per_s": round((got1 - got0) / (t1 - t0) / viewers, 2) if viewers else 0,
            "load_average": round(os.getloadavg()[0], 1)}


async def run(mesh: LocalMesh, seconds: float) -> None:
    async with Client(mesh.frontend_addr) as client:
        for _ in range(20):
            topic = f"viewers-{uuid.uuid4().hex[:8]}"
            await client.create_topic(topic, partitions=2)
            await client.create_subscription(f"{topic}-sub", topic)
    for viewers in (0, 1, 10, 30):
        print(json.dumps(await measure(mesh, viewers, seconds)), flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=20, help="measured per viewer count")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="dashboard-viewers-"))
    mesh = LocalMesh(tmp, frontend_port=free_frontend_port(), etcd_ports=[(free_port(), free_port())],
                     provider_ports=(free_port(), free_port(), free_port()))
    try:
        mesh.start(lambda line: print(f"dashboard viewers bench: {line}", file=sys.stderr, flush=True))
        asyncio.run(run(mesh, args.seconds))
    finally:
        mesh.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
