"""What one message costs a process that wakes up for it: CPU per message of an
echo server and its client at a steady rate (each message alone: the loop sleeps
between them) and back to back, over raw asyncio TCP, a gRPC unary call and a
gRPC bidirectional stream (grpc.aio, both ends). The floor under the mesh's CPU
per message at low rates, where every hop is such a wake-up (issue 19).

    .venv/bin/python bench/wakeups.py [--rates 100,500,0] [--seconds 5]

One JSON line per transport and rate (0: back to back) on stdout: client and
server CPU µs per message, and the round trip's p50.
"""

import argparse
import asyncio
import json
import multiprocessing
import platform
import resource
import socket
import sys
import time

import grpc

PAYLOAD = b"x" * 100
METHOD = "/bench.Echo/Echo"


def cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def _tcp_server(port: int) -> asyncio.Server:
    async def echo(reader, writer):
        while data := await reader.read(4096):
            writer.write(data)
    return await asyncio.start_server(echo, "127.0.0.1", port)


async def _grpc_server(port: int) -> grpc.aio.Server:
    async def unary(request, context):
        return request

    async def stream(requests, context):
        async for request in requests:
            yield request
    server = grpc.aio.server()
    server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler("bench.Echo", {
        "Echo": grpc.unary_unary_rpc_method_handler(unary),
        "Stream": grpc.stream_stream_rpc_method_handler(stream)})])
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    return server


def serve(transport: str, port: int, commands, answers) -> None:
    """The server process: answers each "cpu" command with its CPU seconds so far."""
    async def main():
        server = await (_tcp_server(port) if transport == "tcp" else _grpc_server(port))
        answers.put("ready")
        loop = asyncio.get_running_loop()
        while (await loop.run_in_executor(None, commands.get)) == "cpu":
            answers.put(cpu_s())
        await server.stop(None) if transport != "tcp" else server.close()
    asyncio.run(main())


async def exchange(transport: str, port: int):
    """A function sending one message and awaiting its echo, and its closer."""
    if transport == "tcp":
        reader, writer = await asyncio.open_connection("127.0.0.1", port)

        async def once():
            writer.write(PAYLOAD)
            await reader.readexactly(len(PAYLOAD))
        return once, writer.close
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    if transport == "grpc-unary":
        call = channel.unary_unary(METHOD)

        async def once():
            await call(PAYLOAD)
        return once, lambda: asyncio.ensure_future(channel.close())
    stream = channel.stream_stream("/bench.Echo/Stream")()

    async def once():
        await stream.write(PAYLOAD)
        await stream.read()
    return once, lambda: (stream.cancel(), asyncio.ensure_future(channel.close()))


async def measure(transport: str, port: int, rate: float, seconds: float, server_cpu) -> dict:
    once, close = await exchange(transport, port)
    for _ in range(50):  # connected and warm
        await once()
    server0, client0, started, sent, round_trips = server_cpu(), cpu_s(), time.monotonic(), 0, []
    while time.monotonic() - started < seconds and sent < 1_000_000:
        t = time.perf_counter()
        await once()
        round_trips.append(time.perf_counter() - t)
        sent += 1
        if rate:
            await asyncio.sleep(max(0.0, started + sent / rate - time.monotonic()))
    client_s, server_s = cpu_s() - client0, server_cpu() - server0
    close()
    round_trips.sort()
    return {"bench": "wakeups", "transport": transport, "rate": rate or "back to back", "messages": sent,
            "client_cpu_us_per_msg": round(client_s * 1e6 / sent, 1),
            "server_cpu_us_per_msg": round(server_s * 1e6 / sent, 1),
            "round_trip_p50_us": round(round_trips[len(round_trips) // 2] * 1e6, 1)}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rates", default="100,500,0", help="comma list of msgs/s; 0 is back to back")
    p.add_argument("--seconds", type=float, default=5.0, help="per transport and rate (at most 60)")
    args = p.parse_args()
    rates = [float(r) for r in args.rates.split(",")]
    if not 0 < args.seconds <= 60 or any(r < 0 for r in rates):
        p.error("--seconds: above 0, at most 60; rates: 0 or more")
    machine = {"cores": multiprocessing.cpu_count(), "python": platform.python_version(), "grpc": grpc.__version__}
    spawn = multiprocessing.get_context("spawn")  # no fork of a process holding gRPC's threads
    for transport in ("tcp", "grpc-unary", "grpc-stream"):
        port, commands, answers = free_port(), spawn.Queue(), spawn.Queue()
        server = spawn.Process(target=serve, args=("tcp" if transport == "tcp" else "grpc", port,
                                                             commands, answers), daemon=True)
        server.start()
        answers.get(timeout=30)

        def server_cpu() -> float:
            commands.put("cpu")
            return answers.get(timeout=30)
        try:
            for rate in rates:
                print(f"wakeups: {transport} at {rate or 'full speed'}", file=sys.stderr, flush=True)
                line = asyncio.run(measure(transport, port, rate, args.seconds, server_cpu))
                print(json.dumps({**line, "machine": machine}), flush=True)
        finally:
            commands.put("stop")
            server.join(timeout=10)
            server.kill()


if __name__ == "__main__":
    main()
