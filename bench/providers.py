"""Each channel provider (sender/providers/) against the local providers process
(deploy/local_providers.py, started here on free ports in a temp dir): sends/s
and this process's CPU per send, at the provider's max_concurrency in flight.
What the providers alone cost a sender, without the pipeline around them; and
what a send costs the local providers' process (its CPU from /proc over the
sends: for apns, the APNs fake's cost per request).

    .venv/bin/python bench/providers.py --sends 2000 --concurrency 32
    .venv/bin/python bench/providers.py --only apns --sends 20000 --concurrency 256 --rounds 3
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

import uvloop

from bench.procfs import cpu_s
from deploy.local import free_port
from deploy.local_providers import apns_record, credentials, provider_records
from gen.notifymesh.v1 import notify_pb2
from notifymesh.server.config import LOOPBACK_NETWORKS, parse_networks
from sender.providers import OutgoingMessage, provider_for

WARM_SENDS = 50  # one at a time, before the timed sends


def _message(channel: int, i: int, http_port: int) -> OutgoingMessage:
    if channel == notify_pb2.EMAIL:
        return OutgoingMessage(channel, f"user{i}@example.com", subject=f"Invoice {i} is due",
                               text="Your invoice is due: 12.00 EUR.", html="<p>Your invoice is due: <b>12.00</b></p>",
                               headers={"List-Unsubscribe": "<http://127.0.0.1/unsubscribe?token=t>",
                                        "List-Unsubscribe-Post": "List-Unsubscribe=One-Click"})
    if channel == notify_pb2.SMS:
        return OutgoingMessage(channel, f"+1415555{i % 10000:04d}", text="Your invoice is due: 12.00 EUR.")
    if channel == notify_pb2.PUSH:  # an APNs device: its own token and collapse id each send, as in the pipeline
        return OutgoingMessage(channel, f"{i:064x}", subject=f"Invoice {i} is due", text="12.00 EUR is due.",
                               json_body=json.dumps({"invoice": i, "amount": "12.00 EUR"}),
                               idempotency_key=f"n/r{i}/push", platform="apns")
    return OutgoingMessage(channel, f"http://127.0.0.1:{http_port}/webhook/user{i}",
                           json_body=json.dumps({"invoice": i, "amount": "12.00"}), idempotency_key=f"n/{i}/webhook")


async def _run(record: notify_pb2.Provider, sends: int, http_port: int, server_pid: int) -> dict:
    provider = provider_for(record, lambda: parse_networks(LOOPBACK_NETWORKS))  # the local fakes, as `make up` allows
    left = sends

    async def worker():
        nonlocal left
        while left > 0:
            left -= 1
            await provider.send(_message(record.channel, left, http_port))
    try:
        left = WARM_SENDS
        await worker()  # warm: the first connection (it sent all `sends` one at a time before)
        left = sends
        cpu, wall, server_cpu = time.process_time(), time.perf_counter(), cpu_s(server_pid)
        await asyncio.gather(*(worker() for _ in range(record.max_concurrency)))
        cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
        server_cpu = cpu_s(server_pid) - server_cpu
    finally:
        await provider.close()
    return {"bench": "provider", "kind": record.kind, "sends": sends, "concurrency": record.max_concurrency,
            "sends_per_s": round(sends / wall), "client_cpu_ms_per_send": round(cpu / sends * 1000, 3),
            "server_cpu_ms_per_send": round(server_cpu / sends * 1000, 3)}


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
    p.add_argument("--only", default="smtp,sms_http,webhook", help="kinds, comma-separated (also fcm, apns)")
    p.add_argument("--rounds", type=int, default=1, help="runs of each kind, one JSON line each")
    args = p.parse_args()
    uvloop.install()  # the sender's loop
    with tempfile.TemporaryDirectory() as data_dir:
        smtp_port, http_port, apns_port = free_port(), free_port(), free_port()
        server = subprocess.Popen([sys.executable, "-m", "deploy.local_providers", "--data-dir", data_dir,
                                   "--smtp-port", str(smtp_port), "--http-port", str(http_port),
                                   "--apns-port", str(apns_port)], stdout=subprocess.DEVNULL)
        try:
            for port in (smtp_port, http_port, apns_port):
                _wait_port(port, server)
            creds = credentials(Path(data_dir))
            records = provider_records(creds, "127.0.0.1", smtp_port, http_port) + \
                [apns_record(creds, "127.0.0.1", apns_port)]
            for record in records:
                if record.kind in args.only.split(","):
                    record.max_concurrency = args.concurrency
                    for _ in range(args.rounds):
                        print(json.dumps(asyncio.run(_run(record, args.sends, http_port, server.pid))), flush=True)
        finally:
            server.terminate()
            server.wait(10)


if __name__ == "__main__":
    main()
