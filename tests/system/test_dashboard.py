"""The dashboard (frontend/dashboard.py) in a real headless Chromium, Debian's
/usr/bin/chromium driven by Playwright (no browser download): log in, watch a
topic's subscription backlog rise and fall without a reload, redrive a dead letter
from the page, look a message up; and its HTTP answers to the wrong key, a role
that may not, and a POST without the CSRF header."""

import asyncio
import json
import re
import time
from pathlib import Path

import aiohttp
import pytest
from playwright.async_api import async_playwright
from yarl import URL

from frontend.ended_sessions import MAX_PER_KEY, EndedSessions
from gen.notifymesh.v1 import notify_pb2
from helpers import new_topic, unique
from notifymesh import errors
from notifymesh.server.cluster import connect_etcd

CHROMIUM = "/usr/bin/chromium"
# Without the background-networking flags Chromium keeps calling out, and this
# machine's closed network refuses it many times at every start.
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
PUBLISHED = 20
WAIT_MS = 20_000


def base_url(mesh) -> str:
    return f"http://127.0.0.1:{mesh.frontend_http_ports()[0]}"


@pytest.fixture
async def browser_page(tmp_path):
    assert Path(CHROMIUM).exists(), f"{CHROMIUM} is missing: apt-get install chromium (.ci/run installs it)"
    async with async_playwright() as playwright:
        context = await playwright.chromium.launch_persistent_context(
            tmp_path / "chromium-profile", executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            yield await context.new_page()
        finally:
            await context.close()


async def _backlog_is(page, subscription: str, value: int) -> None:
    cell = page.locator(f'#subscriptions tr[data-subscription="{subscription}"] td[data-field="backlog"]')
    await cell.filter(has_text=re.compile(f"^{value}$")).wait_for(timeout=WAIT_MS)
    assert await cell.text_content() == str(value)


async def _drain(client, subscription: str, count: int) -> list[str]:
    """Pulls and acknowledges count messages; their ids."""
    ids, deadline = [], time.monotonic() + 30
    while len(ids) < count and time.monotonic() < deadline:
        received = await client.pull(subscription, 100, wait_s=1)
        await client.acknowledge(subscription, [r.ack_id for r in received])
        ids += [r.message.message_id for r in received]
    return ids


async def test_the_page_follows_backlog_live_and_redrives_a_dead_letter(mesh, client, browser_page):
    page = browser_page
    dead_topic = unique("dash-dlq")
    await client.create_topic(dead_topic)
    topic, sub = await new_topic(client, "dash", ack_deadline_s=60, max_delivery_attempts=5,
                                 dead_letter_topic=dead_topic)

    await page.goto(f"{base_url(mesh)}/dashboard")
    await page.locator("#login").wait_for()
    # A wrong key is refused and the page stays on the login form.
    await page.fill("#key", "nm_000000000000_" + "A" * 43)
    await page.click("#login button")
    await page.locator("#login-error").filter(has_text="unknown API key").wait_for(timeout=WAIT_MS)
    assert await page.locator("#main-view").is_hidden()

    await page.fill("#key", mesh.admin_key_path.read_text().strip())
    await page.click("#login button")
    await page.locator(f'#topics tr[data-topic="{topic}"]').wait_for(timeout=WAIT_MS)
    await _backlog_is(page, sub, 0)
    navigations = []
    page.on("framenavigated", lambda frame: navigations.append(frame.url))
    await page.evaluate("window.notReloaded = true")

    await client.publish(topic, [b"m-%d" % i for i in range(PUBLISHED)])
    await _backlog_is(page, sub, PUBLISHED)
    assert len(await _drain(client, sub, PUBLISHED)) == PUBLISHED
    await _backlog_is(page, sub, 0)

    (poison,) = await client.publish(topic, [b"poison"])
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        received = await client.pull(sub, 10, wait_s=1)
        if received:
            await client.nack(sub, [r.ack_id for r in received], terminal=True, reason="bad payload")
            break
    row = page.locator(f'#dead-letters tr[data-message-id="{poison}"]')
    await row.wait_for(timeout=WAIT_MS)
    assert "bad payload" in await row.text_content()

    await page.click(f'#subscriptions tr[data-subscription="{sub}"] button.redrive')
    await page.locator("#redrive-result").filter(has_text=f"1 dead letter(s) of {sub} redriven").wait_for(
        timeout=WAIT_MS)
    assert await _drain(client, sub, 1) == [poison], "the redriven message is delivered again"
    await row.wait_for(state="detached", timeout=WAIT_MS)

    # The message's timeline: its subscription with each attempt, and its trace id.
    await page.select_option("#lookup-kind", "messages")
    await page.fill("#lookup-id", poison)
    await page.click("#lookup button")
    result = page.locator("#lookup-result")
    await result.locator("table").wait_for(timeout=WAIT_MS)
    text = await result.text_content()
    assert "trace id" in text and sub in text and "ACKNOWLEDGED" in text
    status = await client.get_message_status(poison)
    assert await result.get_attribute("data-trace-id") == status.trace_id

    assert navigations == [] and await page.evaluate("window.notReloaded === true"), "the page was reloaded"


async def test_a_notification_lookup_shows_each_send_s_timeline_and_the_trace_id(mesh, client, browser_page):
    page = browser_page
    template, category, rid = unique("dash-tpl"), unique("dash-cat"), unique("dash-rcpt")
    await client.create_category(category)
    await client.create_template(notify_pb2.Template(name=template, contents=[
        notify_pb2.TemplateContent(channel=notify_pb2.EMAIL, subject="Hi", text="Hello")]))
    await client.upsert_recipient(notify_pb2.Recipient(id=rid, email=f"{rid}@example.com"))
    nid = await client.notify(template, category, [rid])

    await page.goto(f"{base_url(mesh)}/dashboard")
    await page.fill("#key", mesh.admin_key_path.read_text().strip())
    await page.click("#login button")
    await page.locator("#main-view").wait_for()
    await page.select_option("#lookup-kind", "notifications")
    await page.fill("#lookup-id", nid)
    result, deadline = page.locator("#lookup-result"), time.monotonic() + 30
    while True:  # the fan-out records the send a moment after Notify answers
        await page.click("#lookup button")
        await page.wait_for_timeout(300)
        text = await result.text_content() or ""
        if "SEND_SENT" in text or time.monotonic() > deadline:
            break
    assert f"notification {nid}" in text and "trace id" in text, text
    assert rid in text and "EMAIL" in text and "SEND_QUEUED" in text and "SEND_SENT" in text, text
    found = await client.get_notification(nid)
    assert await result.get_attribute("data-trace-id") == found.trace_id


async def test_http_answers_wrong_key_role_and_csrf(mesh, client):
    url = base_url(mesh)
    _, sub = await new_topic(client, "dash-http")
    viewer = await client.create_api_key(unique("dash-viewer"), "viewer")
    publisher = await client.create_api_key(unique("dash-publisher"), "publisher")
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as anonymous:
        async with anonymous.get(f"{url}/dashboard/api/snapshot") as reply:
            assert reply.status == 401 and "not logged in" in (await reply.json())["error"]
        async with anonymous.post(f"{url}/dashboard/login", json={"key": "nm_000000000000_" + "A" * 43}) as reply:
            assert reply.status == 401 and "unknown API key" in (await reply.json())["error"]
            assert "Set-Cookie" not in reply.headers
        async with anonymous.post(f"{url}/dashboard/login", json={"key": publisher.secret_key}) as reply:
            assert reply.status == 403 and "needs read on some cluster" in (await reply.json())["error"]

    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as session:
        async with session.post(f"{url}/dashboard/login", json={"key": viewer.secret_key}) as reply:
            assert reply.status == 200, await reply.text()
            cookie = reply.headers["Set-Cookie"]
            assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and viewer.secret_key not in cookie
            csrf = (await reply.json())["csrf"]
        deadline, shown = time.monotonic() + 10, []
        while sub not in shown and time.monotonic() < deadline:  # snapshots are shared for a second
            async with session.get(f"{url}/dashboard/api/snapshot") as reply:
                assert reply.status == 200
                shown = [s["name"] for s in (await reply.json())["subscriptions"]]
            await asyncio.sleep(0.2)
        assert sub in shown
        redrive = f"{url}/dashboard/api/subscriptions/{sub}/redrive"
        async with session.post(redrive) as reply:
            assert reply.status == 403 and "X-Notifymesh-CSRF" in (await reply.json())["error"]
        async with session.post(redrive, headers={"X-Notifymesh-CSRF": csrf}) as reply:
            # RedriveDeadLetters' rule: subscribe on the subscription, which a viewer lacks.
            assert reply.status == 403 and f"may not subscribe subscription '{sub}'" in (await reply.json())["error"]
        async with session.get(f"{url}/dashboard/api/messages/nonsense") as reply:
            assert reply.status == 400 and "is not a notifymesh message id" in (await reply.json())["error"]
        async with session.get(f"{url}/dashboard/api/notifications/{unique('nope')}") as reply:
            assert reply.status == 404, await reply.text()
        async with session.get(f"{url}/dashboard/api/events") as stream:
            assert stream.status == 200 and stream.headers["Content-Type"] == "text/event-stream"
            first = await asyncio.wait_for(stream.content.readuntil(b"\n\n"), 10)
            assert first.startswith(b"event: snapshot\ndata: ")
            await client.revoke_api_key(viewer.key.key_id)
            # A revoked key ends its sessions: the stream says so and closes.
            rest = await asyncio.wait_for(stream.content.read(), 10)
            assert b"event: logout" in rest and b"was revoked" in rest
        async with session.get(f"{url}/dashboard/api/snapshot") as reply:
            assert reply.status == 401 and "was revoked" in (await reply.json())["error"]


async def test_redrive_and_logout_need_the_csrf_token_of_their_own_session(mesh, client):
    url = base_url(mesh)
    _, sub = await new_topic(client, "dash-csrf")
    key = mesh.admin_key_path.read_text().strip()
    tokens = []
    for _ in range(2):
        async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as session:
            async with session.post(f"{url}/dashboard/login", json={"key": key}) as reply:
                tokens.append((await reply.json())["csrf"])
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as session:
        async with session.post(f"{url}/dashboard/login", json={"key": key}) as reply:
            own = (await reply.json())["csrf"]
        redrive = f"{url}/dashboard/api/subscriptions/{sub}/redrive"
        async with session.post(redrive, headers={"X-Notifymesh-CSRF": tokens[0]}) as reply:
            assert reply.status == 403, "another session's CSRF token"
        async with session.post(redrive, headers={"X-Notifymesh-CSRF": own}) as reply:
            assert reply.status == 200 and json.loads(await reply.text()) == {"subscription": sub, "redriven": 0}
        async with session.post(f"{url}/dashboard/logout") as reply:
            assert reply.status == 403, "a logout needs the CSRF header too"
        token = session.cookie_jar.filter_cookies(URL(f"{url}/dashboard"))["nm_dashboard"].value
        async with session.post(f"{url}/dashboard/logout", headers={"X-Notifymesh-CSRF": own}) as reply:
            assert reply.status == 200 and (await reply.json())["everywhere"]
        async with session.get(f"{url}/dashboard/api/snapshot") as reply:
            assert reply.status == 401, "logged out"
    # A copy of the logged-out session's cookie is refused too, not only the browser's cleared one.
    async with aiohttp.ClientSession(cookies={"nm_dashboard": token}) as copied:
        async with copied.get(f"{url}/dashboard/api/snapshot") as reply:
            assert reply.status == 401 and "logged out" in (await reply.json())["error"]


async def test_ended_sessions_reach_every_frontend_go_when_they_would_have_expired_and_are_bounded(mesh):
    """frontend/ended_sessions.py on the real etcd: two EndedSessions stand for two frontends."""
    etcd = connect_etcd(mesh.etcd_endpoint, mesh.client_tls())
    here, there = EndedSessions(etcd), EndedSessions(etcd)
    await here.start()
    await there.start()
    try:
        key_id = unique("key")
        long_lived = unique("nonce-long")
        await here.end(long_lived, key_id, remaining_s=600)
        assert long_lived in here
        for _ in range(100):
            if long_lived in there:
                break
            await asyncio.sleep(0.05)
        assert long_lived in there
        for _ in range(MAX_PER_KEY - 2):
            await here.end(unique("nonce"), key_id, remaining_s=60)
        # The last one ended lasts 2 s (the first, it expired while the rest were ended on a slow host).
        await here.end(unique("nonce-short"), key_id, remaining_s=2)
        with pytest.raises(errors.ResourceExhausted, match="revoke the key"):
            await here.end(unique("nonce"), key_id, remaining_s=60)
        await here.end(unique("nonce"), unique("other-key"), remaining_s=60)  # another key's are its own
        # The 2 s one's lease ends (etcd: within a few seconds): room for one more.
        for _ in range(100):
            try:
                await here.end(unique("nonce"), key_id, remaining_s=60)
                break
            except errors.ResourceExhausted:
                await asyncio.sleep(0.1)
        else:
            raise AssertionError("the ended session of 2 s never went")
    finally:
        await here.stop()
        await there.stop()
        await etcd.close()
