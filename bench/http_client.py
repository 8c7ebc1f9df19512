"""CPU per send of the HTTP clients a provider could use.

--protocol http1 (default): an SMS-shaped request (form POST with basic auth, a
small JSON answer) to an aiohttp server, a kept-alive connection for each send
in flight: httpx, aiohttp (the SMS provider's until 2026-12-02) and pycurl
(sender/providers/curl_client.py over HTTP/1.1, as the SMS provider makes it).
--protocol http2: an APNs-shaped request (POST /3/device/TOKEN, a bearer JWT,
the apns-* headers, a small JSON body) to the local APNs fake
(deploy/push_fakes.py: HTTP/2, cleartext with prior knowledge, the JWT checked),
every client multiplexing its sends on one connection, on uvloop as in the
sender (both protocols): httpx (HTTP/2 only, as the APNs provider used it until 2026-12-01; needs h2, no longer a
dependency), niquests (AsyncSession, multiplexed=True) and
pycurl (libcurl's multi interface with HTTP/2 multiplexing, driven from asyncio's
loop: sender/providers/curl_client.py, as the APNs provider makes it).

The server runs in another process on loopback, so only the client's CPU is
measured (time.process_time of this process over the run). The clients take
turns, several rounds each, so drift of the machine hits them alike.

    .venv/bin/python bench/http_client.py --sends 3000 --rounds 4 --concurrency 32
    .venv/bin/python bench/http_client.py --protocol http2 --sends 2000 --concurrency 32
"""

import argparse
import asyncio
import json
import multiprocessing
import statistics
import sys
import time
from pathlib import Path
from typing import NamedTuple

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


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


def _serve_apns(port_out, key_out) -> None:
    from deploy import push_fakes

    class Owner:  # the fake's outbox and faults: none kept
        class outbox:
            @staticmethod
            def store(channel, record):
                pass

        @staticmethod
        def take_fault(channel):
            return None

    async def main():
        key = push_fakes.new_ec_key()
        fakes = push_fakes.PushFakes(Owner(), push_fakes.new_rsa_key(), key, "127.0.0.1", 0)
        await fakes.start(0)
        port_out.send(fakes.apns_port)
        key_out.send(key)
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


async def _pycurl(url: str, sends: int, concurrency: int) -> None:
    import urllib.parse

    import aiohttp

    from notifymesh.server.config import LOOPBACK_NETWORKS, parse_networks
    from sender.providers.curl_client import CurlClient
    allowed = parse_networks(LOOPBACK_NETWORKS)
    base, _, path = url.partition("/accounts/")
    client = CurlClient(lambda: allowed, base, 10.0, http2=False, max_connections=concurrency)
    headers = {"Authorization": aiohttp.encode_basic_auth("AC1", "token"),
               "Content-Type": "application/x-www-form-urlencoded"}
    try:
        async def one():
            response = await client.post("/accounts/" + path, urllib.parse.urlencode(FORM).encode(), headers)
            assert response.status == 201, response.content
            json.loads(response.content)
        await _run(one, sends, concurrency)
    finally:
        await client.aclose()


async def _run(one, sends: int, concurrency: int) -> None:
    left = sends

    async def worker():
        nonlocal left
        while left > 0:
            left -= 1
            await one()
    await asyncio.gather(*(worker() for _ in range(concurrency)))


CLIENTS = {"httpx": _httpx, "aiohttp": _aiohttp, "pycurl": _pycurl}


class Apns(NamedTuple):
    """What an APNs-shaped request needs: the fake's URL and the provider's headers."""
    url: str
    headers: dict[str, str]


def _apns(base_url: str, key: str) -> Apns:
    from deploy import push_fakes
    from sender.providers.push_auth import signed_jwt
    token = signed_jwt({"iss": push_fakes.APNS_TEAM_ID, "iat": int(time.time())}, key, "ES256",
                       push_fakes.APNS_KEY_ID)
    return Apns(base_url, {"authorization": f"bearer {token}", "apns-topic": push_fakes.APNS_TOPIC,
                           "apns-push-type": "alert", "apns-collapse-id": "c" * 64})


BODY = b'{"invoice":"17","aps":{"alert":{"title":"Invoice 17","body":"12.00 EUR is due"}}}'


def _device(i: int) -> str:
    return f"/3/device/{i:064x}"


async def _httpx_h2(apns: Apns, sends: int, concurrency: int) -> None:
    import httpx
    transport = httpx.AsyncHTTPTransport(http1=False, http2=True)  # as the APNs provider had it (without the guard)
    async with httpx.AsyncClient(transport=transport, base_url=apns.url, timeout=10.0) as client:
        async def one(i):
            response = await client.post(_device(i), content=BODY, headers=apns.headers)
            assert response.status_code == 200, response.content
        await _run_numbered(one, sends, concurrency)


async def _niquests_h2(apns: Apns, sends: int, concurrency: int) -> None:
    import niquests
    async with niquests.AsyncSession(multiplexed=True, disable_http1=True, disable_http3=True,
                                     base_url=apns.url, timeout=10.0, pool_maxsize=1) as session:
        async def one(i):
            response = await session.post(_device(i), data=BODY, headers=apns.headers)
            await session.gather(response)
            assert response.status_code == 200, response.content
        await _run_numbered(one, sends, concurrency)


async def _pycurl_h2(apns: Apns, sends: int, concurrency: int) -> None:
    from notifymesh.server.config import LOOPBACK_NETWORKS, parse_networks
    from sender.providers.curl_client import CurlClient
    allowed = parse_networks(LOOPBACK_NETWORKS)
    client = CurlClient(lambda: allowed, apns.url, 10.0)
    try:
        async def one(i):
            response = await client.post(_device(i), BODY, apns.headers)
            assert response.status == 200, response.content
        await _run_numbered(one, sends, concurrency)
    finally:
        await client.aclose()


async def _run_numbered(one, sends: int, concurrency: int) -> None:
    left = sends

    async def worker():
        nonlocal left
        while left > 0:
            left -= 1
            await one(left)
    await asyncio.gather(*(worker() for _ in range(concurrency)))


H2_CLIENTS = {"httpx": _httpx_h2, "niquests": _niquests_h2, "pycurl": _pycurl_h2}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sends", type=int, default=3000)
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--concurrency", type=int, default=32)
    p.add_argument("--protocol", choices=("http1", "http2"), default="http1")
    p.add_argument("--clients", default="", help="comma-separated, of those of the protocol (default: all)")
    args = p.parse_args()
    parent, child = multiprocessing.Pipe()
    if args.protocol == "http1":
        clients = CLIENTS
        server = multiprocessing.Process(target=_serve, args=(child,), daemon=True)
        server.start()
        url = f"http://127.0.0.1:{parent.recv()}/accounts/AC1/messages"
    else:
        clients = H2_CLIENTS
        key_parent, key_child = multiprocessing.Pipe()
        server = multiprocessing.Process(target=_serve_apns, args=(child, key_child), daemon=True)
        server.start()
        url = _apns(f"http://127.0.0.1:{parent.recv()}", key_parent.recv())
    import uvloop  # the sender's loop
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    if args.clients:
        clients = {name: clients[name] for name in args.clients.split(",")}
    results: dict[str, list[tuple[float, float]]] = {name: [] for name in clients}
    try:
        for name, run in clients.items():  # warm-up: imports, first connections
            asyncio.run(run(url, 200, args.concurrency))
        for _ in range(args.rounds):
            for name, run in clients.items():
                cpu, wall = time.process_time(), time.perf_counter()
                asyncio.run(run(url, args.sends, args.concurrency))
                results[name].append(((time.process_time() - cpu) / args.sends * 1e6,
                                      args.sends / (time.perf_counter() - wall)))
    finally:
        server.kill()
    for name, runs in results.items():
        print(json.dumps({"bench": "http_client", "protocol": args.protocol, "client": name, "sends": args.sends, "rounds": args.rounds,
                          "concurrency": args.concurrency,
                          "cpu_us_per_send_median": round(statistics.median(c for c, _ in runs), 1),
                          "cpu_us_per_send_runs": [round(c, 1) for c, _ in runs],
                          "sends_per_s_median": round(statistics.median(r for _, r in runs))}))


if __name__ == "__main__":
    main()
