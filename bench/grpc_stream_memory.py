#!/usr/bin/env python3
"""What gRPC itself keeps per open server-streaming call, on each side: a bare
grpc.aio server (iomgr, as the services run it) in this process, a client
process opening --calls unary-stream calls to it that never end; prints one
JSON line with each side's RSS growth per call. A frontend holds the server side
per Subscribe stream (the client's call); before Sender.Relay it held a client
side too (a relay call to the sender per stream), so this is the floor of its
memory per stream.

    .venv/bin/python bench/grpc_stream_memory.py --calls 10000
"""

import argparse
import asyncio
import datetime
import json
import multiprocessing
import os
import platform
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import notifymesh.server  # noqa: E402,F401  first: gRPC's I/O path, as the services choose it
import grpc  # noqa: E402

METHOD = "/bench.Memory/Stream"
SETTLE_S = 3  # after the last call is open, before RSS is read
OPEN_TIMEOUT_S = 120


def rss_mb() -> float:
    return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def client(port: int, calls: int, opened, done, results) -> None:
    async def main():
        before = rss_mb()
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
        stub = channel.unary_stream(METHOD, request_serializer=None, response_deserializer=None)
        streams = [stub(b"") for _ in range(calls)]
        reads = [asyncio.ensure_future(call.read()) for call in streams]
        while opened.value < calls:  # the server counts the calls that reached it
            await asyncio.sleep(0.1)
        await asyncio.sleep(SETTLE_S)
        results.put(rss_mb() - before)
        await asyncio.to_thread(done.wait, OPEN_TIMEOUT_S)
        for read in reads:
            read.cancel()
    asyncio.run(main())


async def serve(calls: int) -> dict:
    ctx = multiprocessing.get_context("spawn")
    opened, done, results = ctx.Value("q", 0), ctx.Event(), ctx.Queue()
    forever = asyncio.Event()

    async def handler(request, context):
        with opened.get_lock():
            opened.value += 1
        await forever.wait()
        yield b""

    server = grpc.aio.server(options=[("grpc.server.max_pending_requests", 2 * calls),
                                      ("grpc.server.max_pending_requests_hard_limit", 4 * calls)])
    server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler("bench.Memory", {
        "Stream": grpc.unary_stream_rpc_method_handler(handler)})])
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    before = rss_mb()
    child = ctx.Process(target=client, args=(port, calls, opened, done, results), daemon=True)
    child.start()
    try:
        client_mb = await asyncio.to_thread(results.get, True, OPEN_TIMEOUT_S)
        server_mb = rss_mb() - before
    finally:
        done.set()
        child.join(10)
        if child.is_alive():
            child.terminate()
        forever.set()  # the handlers end their calls, so stopping cancels none
        await server.stop(5)
    return {"server_kb_per_call": round(server_mb * 1024 / calls, 1),
            "client_kb_per_call": round(client_mb * 1024 / calls, 1)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=10_000, help="open calls (default 10000)")
    args = parser.parse_args()
    if not 1 <= args.calls <= 100_000:
        parser.error("--calls must be from 1 to 100000")
    results = asyncio.run(serve(args.calls))
    print(json.dumps({"bench": "grpc_stream_memory", "calls": args.calls, "grpcio": grpc.__version__,
                      "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                      "machine": {"cores": os.cpu_count(), "system": f"{platform.system()} {platform.release()}"},
                      **results}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
