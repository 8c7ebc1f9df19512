"""What auth costs on publish (issue 17): one fresh local mesh, `notifymesh bench`
publishing alone (no subscribers) with auth on and off alternately (the live
setting auth_enabled, flipped between runs), ROUNDS rounds; one JSON line with
every run's publish rate and the load average.

    PYTHONPATH=. .venv/bin/python bench/auth_ab.py [--rounds 4] [--messages 50000]
"""

import argparse
import asyncio
import json
import os
import subprocess
import sys

from bench.fresh_mesh import header, progress, run_on_fresh_mesh
from deploy.local import LocalMesh
from notifymesh.client import Client

SETTLE_S = 2.0  # for every frontend to take the setting in (a watch of etcd)


def _bench(mesh: LocalMesh, messages: int) -> float:
    out = subprocess.run([sys.executable, "-m", "notifymesh.cli", "bench", "--messages", str(messages), "--subscribers",
                          "0", "--addr", mesh.frontend_addr], capture_output=True, text=True, timeout=600)
    return json.loads(out.stdout.strip().splitlines()[-1])["publish_msgs_per_s"]


async def _run(mesh: LocalMesh, rounds: int, messages: int) -> dict:
    runs = {"on": [], "off": []}
    async with Client(mesh.frontend_addr) as admin:
        for round_ in range(rounds):
            for mode in (("on", "off") if round_ % 2 == 0 else ("off", "on")):
                await admin.set_config("auth_enabled", "1" if mode == "on" else "0")
                await asyncio.sleep(SETTLE_S)
                rate = await asyncio.to_thread(_bench, mesh, messages)
                runs[mode].append(rate)
                progress("auth", f"round {round_ + 1} auth {mode}: {rate} msg/s, load {os.getloadavg()[0]:.1f}")
        await admin.set_config("auth_enabled", "1")
    return {"publish_msgs_per_s": runs, "loadavg_end": os.getloadavg()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--messages", type=int, default=50_000)
    p.add_argument("--keep", action="store_true", help="keep the data dir")
    args = p.parse_args()
    line = header("auth", rounds=args.rounds, messages=args.messages, loadavg_start=os.getloadavg())
    raise SystemExit(run_on_fresh_mesh(line, lambda mesh: _run(mesh, args.rounds, args.messages), args.keep))


if __name__ == "__main__":
    main()
