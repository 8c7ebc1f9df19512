"""The dashboard under load, for docs/dashboard.png: a fresh local mesh with a
publish loop (about RATE messages/s on a 4-partition topic), a subscriber that keeps
up, a slow one (SLOW_ACKS_PER_S) that dead-letters a few messages, and one nobody
reads; then Debian's headless Chromium logs in (after one wrong key, which the
recent errors show), looks a dead letter up and takes the screenshot.

  .venv/bin/python bench/dashboard_screenshot.py [--out docs/dashboard.png] [--seconds 20]
"""

import argparse
import asyncio
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from playwright.async_api import async_playwright  # noqa: E402

from deploy.local import LocalMesh, free_frontend_port, free_port  # noqa: E402
from notifymesh.client import Client  # noqa: E402

RATE, BATCH = 200, 20
SLOW_ACKS_PER_S = 15
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def say(text: str) -> None:
    print(f"dashboard screenshot: {text}", file=sys.stderr, flush=True)


async def publish_loop(client: Client, topic: str, stop: asyncio.Event) -> int:
    sent = 0
    while not stop.is_set():
        started = time.monotonic()
        await client.publish(topic, [b'{"order": %d, "total": "17.50"}' % (sent + i) for i in range(BATCH)])
        sent += BATCH
        await asyncio.sleep(max(0.0, BATCH / RATE - (time.monotonic() - started)))
    return sent


async def keep_up(client: Client, subscription: str, stop: asyncio.Event) -> None:
    while not stop.is_set():
        received = await client.pull(subscription, 500, wait_s=0.5)
        if received:
            await client.acknowledge(subscription, [r.ack_id for r in received])


async def slow(client: Client, subscription: str, stop: asyncio.Event) -> list[str]:
    """Acks SLOW_ACKS_PER_S; every 40th message it cannot parse goes to the dead letters."""
    dead, seen = [], 0
    while not stop.is_set():
        received = await client.pull(subscription, SLOW_ACKS_PER_S // 5, wait_s=0.2)
        bad = [r for i, r in enumerate(received, seen) if i % 40 == 39]
        seen += len(received)
        good = [r for r in received if r not in bad]
        if good:
            await client.acknowledge(subscription, [r.ack_id for r in good])
        if bad:
            await client.nack(subscription, [r.ack_id for r in bad], terminal=True,
                              reason="schema v2 expected, got v1")
            dead += [r.message.message_id for r in bad]
        await asyncio.sleep(0.2)
    return dead


async def run(mesh: LocalMesh, out: Path, seconds: float) -> None:
    async with Client(mesh.frontend_addr) as client:
        await client.create_topic("orders", partitions=4)
        await client.create_topic("orders-dead")
        await client.create_subscription("orders-billing", "orders")
        await client.create_subscription("orders-audit", "orders", ack_deadline_s=30, max_delivery_attempts=5,
                                         dead_letter_topic="orders-dead")
        await client.create_subscription("orders-search", "orders")  # nobody reads it: its backlog grows
        stop = asyncio.Event()
        load = asyncio.gather(publish_loop(client, "orders", stop), keep_up(client, "orders-billing", stop),
                              slow(client, "orders-audit", stop))
        await asyncio.sleep(seconds)
        say("loaded; opening the dashboard")
        async with async_playwright() as playwright:
            context = await playwright.chromium.launch_persistent_context(
                tempfile.mkdtemp(prefix="chromium-"), executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS,
                viewport={"width": 1280, "height": 1420})
            page = await context.new_page()
            await page.goto(mesh.dashboard_urls()[0])
            await page.fill("#key", "nm_000000000000_" + "A" * 43)
            await page.click("#login button")
            await page.locator("#login-error").filter(has_text="unknown API key").wait_for()
            await page.fill("#key", mesh.admin_key_path.read_text().strip())
            await page.click("#login button")
            dead_row = page.locator("#dead-letters tbody tr").first
            await dead_row.wait_for(timeout=30_000)
            await page.fill("#lookup-id", await dead_row.get_attribute("data-message-id"))
            await page.click("#lookup button")
            await page.locator("#lookup-result table").wait_for()
            await asyncio.sleep(6)  # publish rates over a few snapshots
            await page.screenshot(path=str(out))
            stop.set()
            await context.close()
        sent, _, dead = await load
        say(f"published {sent} messages, {len(dead)} dead-lettered; screenshot {out} "
            f"({out.stat().st_size // 1024} KiB)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "dashboard.png")
    parser.add_argument("--seconds", type=float, default=15, help="how long the load runs before the browser opens")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="dashboard-shot-"))
    mesh = LocalMesh(tmp, frontend_port=free_frontend_port(), etcd_ports=[(free_port(), free_port())],
                     provider_ports=(free_port(), free_port(), free_port()))
    try:
        mesh.start(say)
        asyncio.run(run(mesh, args.out, args.seconds))
    finally:
        mesh.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
