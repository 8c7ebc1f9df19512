"""Each channel provider (sender/providers/) against the local providers process
(deploy/local_providers.py, started here on free ports in a temp dir): sends/s
and this process's CPU per send, at the provider's max_concurrency in flight.
What the providers alone cost a sender, without the pipeline around them.

    .venv/bin/python bench/providers.py --sends 2000 --concurrency 32
"""

import argparse
import asyncio
import json
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from deploy.local import free_port
from deploy.local_providers import credentials, provider_records
from gen.notifymesh.v1 import notify_pb2
from notifymesh.server.config import LOOPBACK_NETWORKS, parse_networks
from sender.providers import OutgoingMessage, provider_for


def _message(channel: int, i: int, http_port: int) -> OutgoingMessage:
    if channel == notify_pb2.EMAIL:
        return OutgoingMessage(channel, f"user{i}@example.com", subject=f"Invoice {i} is due",
                               text="Your invoice is due: 12.00 EUR.", html="<p>Your invoice is due: <b>12.00</b></p>",
                               headers={"List-Unsubscribe": "<http://127.0.0.1/unsubscribe?token=t>",
                                        "List-Unsubscribe-Post": "List-Unsubscribe=One-Click"})
    if channel == notify_pb2.SMS:
        return OutgoingMessage(channel, f"+1415555{i % 10000:04d}", text="Your invoice is due: 12.00 EUR.")
    return OutgoingMessage(channel, f"http://127.0.0.1:{http_port}/webhook/user{i}",
                           json_body=json.dumps({"invoice": i, "amount": "12.00"}), idempotency_key=f"n/{i}/webhook")


async def _run(record: notify_pb2.Provider, sends: int, http_port: int) -> dict:
    provider = provider_for(record, lambda: parse_networks(LOOPBACK_NETWORKS))  # the local fakes, as `make up` allows
    left = sends

    async def worker():
        nonlocal left
        while left > 0:
            left -= 1
            await provider.send(_message(record.channel, left, http_port))
    try:
        await worker()  # warm: the first connection
        left = sends
        cpu, wall = time.process_time(), time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(record.max_concurrency)))
        cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    finally:
        await provider.close()
    return {"bench": "provider", "kind": record.kind, "sends": sends, "concurrency": record.max_concurrency,
            "sends_per_s": round(sends / wall), "client_cpu_ms_per_send": round(cpu / sends * 1000, 3)}


def _wait_port(port: int, process: subprocess.Popen) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and process.poll() is None:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise SystemExit("the local providers did not start")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sends", type=int, default=2000)
    p.add_argument("--concurrency", type=int, default=32)
    p.add_argument("--only", default="smtp,sms_http,webhook")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as data_dir:
        smtp_port, http_port = free_port(), free_port()
        server = subprocess.Popen([sys.executable, "-m", "deploy.local_providers", "--data-dir", data_dir,
                                   "--smtp-port", str(smtp_port), "--http-port", str(http_port)],
                                  stdout=subprocess.DEVNULL)
        try:
            _wait_port(smtp_port, server)
            _wait_port(http_port, server)
            for record in provider_records(credentials(Path(data_dir)), "127.0.0.1", smtp_port, http_port):
                if record.kind in args.only.split(","):
                    record.max_concurrency = args.concurrency
                    print(json.dumps(asyncio.run(_run(record, args.sends, http_port))), flush=True)
        finally:
            server.terminate()
            server.wait(10)


if __name__ == "__main__":
    main()
