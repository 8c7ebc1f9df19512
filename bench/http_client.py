"""CPU per send of the HTTP clients a provider could use: httpx against aiohttp.

An SMS-shaped request (form POST with basic auth, a small JSON answer) to an
aiohttp server in another process on loopback, so only the client's CPU is
measured (time.process_time of this process over the run). The clients take
turns, several rounds each, so drift of the machine hits both alike.

    .venv/bin/python bench/http_client.py --sends 3000 --rounds 4 --concurrency 32
"""

import argparse
import asyncio
import json
import multiprocessing
import statistics
import time


def _serve(port_out) -> None:
    from aiohttp import web

    async def messages(request: web.Request) -> web.Response:
        await request.post()
        return web.json_response({"id": "SM0123456789", "status": "queued"}, status=201)

    async def main():
        app = web.Application()
        app.router.add_post("/accounts/{account}/messages", messages)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port_out.send(site._server.sockets[0].getsockname()[1])
        await asyncio.Event().wait()

    asyncio.run(main())


FORM = {"To": "+14155550100", "From": "+14155550199", "Body": "Your invoice 17 is due: 12.00 EUR."}


async def _httpx(url: str, sends: int, concurrency: int) -> None:
    import httpx
    async with httpx.AsyncClient(limits=httpx.Limits(max_connections=concurrency)) as client:
        auth = httpx.BasicAuth("AC1", "token")

        async def one():
            response = await client.post(url, data=FORM, auth=auth, timeout=10)
            response.json()
        await _run(one, sends, concurrency)


async def _aiohttp(url: str, sends: int, concurrency: int) -> None:
    import aiohttp
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency)) as session:
        headers = {"Authorization": aiohttp.encode_basic_auth("AC1", "token")}

        async def one():
            async with session.post(url, data=FORM, headers=headers, timeout=aiohttp.ClientTimeout(total=10)) as response:
                await response.json()
        await _run(one, sends, concurrency)


async def _run(one, sends: int, concurrency: int) -> None:
    left = sends

    async def worker():
        nonlocal left
        while left > 0:
            left -= 1
            await one()
    await asyncio.gather(*(worker() for _ in range(concurrency)))


CLIENTS = {"httpx": _httpx, "aiohttp": _aiohttp}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sends", type=int, default=3000)
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--concurrency", type=int, default=32)
    args = p.parse_args()
    parent, child = multiprocessing.Pipe()
    server = multiprocessing.Process(target=_serve, args=(child,), daemon=True)
    server.start()
    url = f"http://127.0.0.1:{parent.recv()}/accounts/AC1/messages"
    results: dict[str, list[tuple[float, float]]] = {name: [] for name in CLIENTS}
    try:
        for name, run in CLIENTS.items():  # warm-up: imports, first connections
            asyncio.run(run(url, 200, args.concurrency))
        for _ in range(args.rounds):
            for name, run in CLIENTS.items():
                cpu, wall = time.process_time(), time.perf_counter()
                asyncio.run(run(url, args.sends, args.concurrency))
                results[name].append(((time.process_time() - cpu) / args.sends * 1e6,
                                      args.sends / (time.perf_counter() - wall)))
    finally:
        server.kill()
    for name, runs in results.items():
        print(json.dumps({"bench": "http_client", "client": name, "sends": args.sends, "rounds": args.rounds,
                          "concurrency": args.concurrency,
                          "cpu_us_per_send_median": round(statistics.median(c for c, _ in runs), 1),
                          "cpu_us_per_send_runs": [round(c, 1) for c, _ in runs],
                          "sends_per_s_median": round(statistics.median(r for _, r in runs))}))


if __name__ == "__main__":
    main()
