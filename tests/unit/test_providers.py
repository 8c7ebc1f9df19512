"""The channel providers against real local servers (deploy/local_providers.py's
SMTP server and SMS/webhook HTTP API, in the test's loop): what each sends, and
how each classifies a failure."""

import asyncio
import contextlib
import email.utils
import json
import time

import aiohttp
import aiosmtplib
import pytest
from aiohttp import web

from deploy.local_providers import LocalProviders, credentials, provider_records
from gen.notifymesh.v1 import notify_pb2
from notifymesh import webhooks
from notifymesh.clock import now_ms
from notifymesh.server.config import LOOPBACK_NETWORKS, parse_networks
from sender.providers import (OutgoingMessage, PermanentSendError, SendResult, TransientSendError, provider_for)
from sender.providers.base import retry_after_s
from sender.providers.smtp import classify

LOOPBACK = (lambda: parse_networks(LOOPBACK_NETWORKS))  # the local fakes are on loopback


@pytest.fixture
async def local(tmp_path):
    providers = LocalProviders(tmp_path, credentials(tmp_path))
    await providers.start()
    yield providers
    await providers.stop()


def records(local, max_concurrency=0) -> dict[int, notify_pb2.Provider]:
    made = provider_records(local.creds, "127.0.0.1", local.smtp_port, local.http_port)
    for record in made:
        record.max_concurrency = max_concurrency
    return {record.channel: record for record in made}


@pytest.fixture
async def provider(local):
    made = []

    def make(channel, max_concurrency=0, **settings):
        record = records(local, max_concurrency)[channel]
        record.settings.update(settings)
        made.append(provider_for(record, LOOPBACK))
        return made[-1]
    yield make
    for p in made:
        await p.close()


async def fault(local, **spec):
    async with aiohttp.ClientSession() as s:
        async with s.post(f"http://127.0.0.1:{local.http_port}/_faults", json=spec) as r:
            assert r.status == 200, await r.text()


def mail(to="alice@example.com", **kw) -> OutgoingMessage:
    return OutgoingMessage(notify_pb2.EMAIL, to, subject="Invoice 17", text="Due: 12.00", **kw)


# -- email ---------------------------------------------------------------------------


async def test_email_is_sent_multipart_with_its_unsubscribe_headers_and_our_message_id(local, provider):
    smtp = provider(notify_pb2.EMAIL)
    headers = {"List-Unsubscribe": "<http://127.0.0.1:1/unsubscribe?token=t>",
               "List-Unsubscribe-Post": "List-Unsubscribe=One-Click"}
    result = await smtp.send(mail(html="<p>Due: <b>12.00</b></p>", headers=headers))
    assert result.provider == "smtp" and result.provider_message_id.startswith("<")
    [stored] = local.outbox.read("email")
    assert stored["to"] == ["alice@example.com"] and stored["from"] == "notifymesh@localhost"
    assert stored["subject"] == "Invoice 17" and stored["text"].strip() == "Due: 12.00"
    assert stored["html"].strip() == "<p>Due: <b>12.00</b></p>"
    assert stored["message_id"] == result.provider_message_id
    assert stored["headers"]["List-Unsubscribe"] == headers["List-Unsubscribe"]
    assert stored["headers"]["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    await smtp.send(mail())  # text only: no HTML part
    assert local.outbox.read("email")[1]["html"] == ""
    await smtp.send(OutgoingMessage(notify_pb2.EMAIL, "jorg@example.com", subject="Rechnung fällig",
                                    text="Betrag: 12,00 €", html="<p>12,00 €</p>"))
    utf8 = local.outbox.read("email")[2]
    assert (utf8["subject"], utf8["text"].strip(), utf8["html"].strip()) == ("Rechnung fällig", "Betrag: 12,00 €",
                                                                             "<p>12,00 €</p>")


async def test_email_4xx_is_transient_5xx_permanent(local, provider):
    smtp = provider(notify_pb2.EMAIL)
    await fault(local, channel="email", status=451, count=1)
    with pytest.raises(TransientSendError, match="451"):
        await smtp.send(mail())
    await fault(local, channel="email", status=550, count=1)
    with pytest.raises(PermanentSendError, match="550"):
        await smtp.send(mail())
    await smtp.send(mail())  # the faults are used up
    assert len(local.outbox.read("email")) == 1


async def test_email_to_no_server_is_transient(local, provider):
    smtp = provider(notify_pb2.EMAIL, port="1")
    with pytest.raises(TransientSendError):
        await smtp.send(mail())


async def test_email_goes_only_where_the_mesh_may_connect(local):
    """Without loopback in allowed_networks the local SMTP server's address is refused,
    as a permanent failure that names the setting (egress.py); with it, the mail goes."""
    record = records(local)[notify_pb2.EMAIL]
    for allowed, goes in ((lambda: (), False), (LOOPBACK, True)):
        smtp = provider_for(record, allowed)
        try:
            if goes:
                assert (await smtp.send(mail())).provider == "smtp"
            else:
                with pytest.raises(PermanentSendError, match="smtp refused: 127.0.0.1 is a loopback address"):
                    await smtp.send(mail())
        finally:
            await smtp.close()
    assert len(local.outbox.read("email")) == 1


async def test_email_connections_are_bounded_kept_open_and_reopened_after_a_drop(local, provider):
    smtp = provider(notify_pb2.EMAIL, max_concurrency=3)
    await asyncio.gather(*(smtp.send(mail(f"user{i}@example.com")) for i in range(30)))
    assert len(local.outbox.read("email")) == 30
    assert smtp.connects <= 3 and len(local.smtp_sessions) == smtp.connects  # kept open, never more than 3
    opened = smtp.connects
    local.drop_smtp_connections()  # the server closes them (idle timeout, restart)
    await asyncio.sleep(0.05)
    await smtp.send(mail())  # a dropped connection is replaced, not a failed send
    assert smtp.connects == opened + 1 and len(local.outbox.read("email")) == 31


async def test_email_logs_in_when_configured(tmp_path, provider, local):
    from aiosmtpd.smtp import SMTP, AuthResult

    class Handler:
        async def handle_DATA(self, server, session, envelope):
            return "250 OK"

    def authenticator(server, session, envelope, mechanism, auth_data):
        logins.append((auth_data.login, auth_data.password))
        return AuthResult(success=True)

    logins = []

    server = await asyncio.get_running_loop().create_server(
        lambda: SMTP(Handler(), authenticator=authenticator, auth_require_tls=False), "127.0.0.1", 0)
    port = str(server.sockets[0].getsockname()[1])
    try:
        record = records(local)[notify_pb2.EMAIL]
        record.settings.update(port=port, username="billing")
        record.secret = "s3cret"
        smtp = provider_for(record, LOOPBACK)
        assert (await smtp.send(mail())).provider == "smtp"
        assert [(_text(login), _text(password)) for login, password in logins] == [("billing", "s3cret")]
        await smtp.close()
    finally:
        server.close()


@pytest.mark.parametrize("mode", ["starttls", "use_tls"])
async def test_email_over_starttls_or_tls(tmp_path, provider, local, monkeypatch, mode):
    import ssl
    import subprocess

    from aiosmtpd.smtp import SMTP

    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True)
    server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_tls.load_cert_chain(cert, key)
    monkeypatch.setenv("SSL_CERT_FILE", str(cert))  # the client trusts the test's certificate

    class Handler:
        def __init__(self):
            self.secure = []

        async def handle_DATA(self, server, session, envelope):
            self.secure.append(session.ssl is not None or server.transport.get_extra_info("ssl_object") is not None)
            return "250 OK"

    handler = Handler()
    if mode == "starttls":
        factory = lambda: SMTP(handler, tls_context=server_tls, require_starttls=True)  # noqa: E731
        server = await asyncio.get_running_loop().create_server(factory, "127.0.0.1", 0)
    else:
        server = await asyncio.get_running_loop().create_server(lambda: SMTP(handler), "127.0.0.1", 0, ssl=server_tls)
    try:
        smtp = provider(notify_pb2.EMAIL, port=str(server.sockets[0].getsockname()[1]), **{mode: "true"})
        assert (await smtp.send(mail())).provider == "smtp"
        assert handler.secure == [True]
    finally:
        server.close()


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else value


def test_email_replies_are_classified_by_their_code():
    assert isinstance(classify(aiosmtplib.SMTPAuthenticationError(535, "bad credentials")), PermanentSendError)
    refused = [aiosmtplib.SMTPRecipientRefused(550, "mailbox unavailable", "a@example.com")]
    assert "550 mailbox unavailable" in classify(aiosmtplib.SMTPRecipientsRefused(refused)).reason
    assert isinstance(classify(aiosmtplib.SMTPRecipientsRefused(refused)), PermanentSendError)
    greylisted = [aiosmtplib.SMTPRecipientRefused(450, "try later", "a@example.com")]
    assert isinstance(classify(aiosmtplib.SMTPRecipientsRefused(greylisted)), TransientSendError)
    assert isinstance(classify(aiosmtplib.SMTPConnectError("refused")), TransientSendError)
    assert isinstance(classify(aiosmtplib.SMTPReadTimeoutError("slow")), TransientSendError)


# -- sms -----------------------------------------------------------------------------


def sms(to="+14155550100") -> OutgoingMessage:
    return OutgoingMessage(notify_pb2.SMS, to, text="Invoice 17 is due", recipient="alice")


async def test_sms_is_posted_with_basic_auth_and_answers_the_provider_id(local, provider):
    result = await provider(notify_pb2.SMS).send(sms())
    [stored] = local.outbox.read("sms")
    assert result == SendResult("sms_http", stored["id"])
    assert stored == {"to": "+14155550100", "from": "+15005550006", "body": "Invoice 17 is due", "id": stored["id"]}


async def test_sms_classification(local, provider):
    sender = provider(notify_pb2.SMS)
    await fault(local, channel="sms", status=500, count=2)
    for _ in range(2):
        with pytest.raises(TransientSendError, match="HTTP 500: fault injected") as failed:
            await sender.send(sms())
        assert failed.value.retry_after_s is None
    await fault(local, channel="sms", status=429, count=1, retry_after=7)
    with pytest.raises(TransientSendError, match="HTTP 429") as failed:
        await sender.send(sms())
    assert failed.value.retry_after_s == 7
    with pytest.raises(PermanentSendError, match="HTTP 400: 'To' is not a phone number"):
        await sender.send(sms("alice"))
    await fault(local, channel="sms", status=404, count=1)
    with pytest.raises(PermanentSendError, match="HTTP 404"):
        await sender.send(sms())
    record = records(local)[notify_pb2.SMS]
    record.secret = "not the token"
    wrong = provider_for(record, LOOPBACK)
    with pytest.raises(PermanentSendError, match="HTTP 401: authentication failed"):
        await wrong.send(sms())
    await wrong.close()
    assert len(local.outbox.read("sms")) == 0
    await sender.send(sms())
    assert len(local.outbox.read("sms")) == 1


@contextlib.asynccontextmanager
async def sms_api(handler):
    """An SMS API of the test's own on loopback: its base URL."""
    app = web.Application()
    app.router.add_post("/accounts/{account}/messages", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}"
    finally:
        await runner.cleanup()


async def test_sms_timeouts_and_refused_connections_are_transient(provider, local):
    async def slow(request):
        await asyncio.sleep(5)
        return web.json_response({})

    async with sms_api(slow) as base_url:
        started = time.monotonic()
        with pytest.raises(TransientSendError, match="Timeout"):
            await provider(notify_pb2.SMS, base_url=base_url, timeout_seconds="0.3").send(sms())
        assert time.monotonic() - started < 3
    with pytest.raises(TransientSendError, match="Cannot connect to host"):
        await provider(notify_pb2.SMS, base_url=base_url).send(sms())


async def test_sms_connections_are_bounded_by_the_concurrency_and_kept_open(provider):
    ports: list[int] = []

    async def messages(request):
        ports.append(request.transport.get_extra_info("peername")[1])  # the connection's client port
        await request.post()
        await asyncio.sleep(0.05)
        return web.json_response({"id": f"SM{len(ports)}"}, status=201)

    async with sms_api(messages) as base_url:
        sender = provider(notify_pb2.SMS, max_concurrency=2, base_url=base_url)
        await asyncio.gather(*(sender.send(sms()) for _ in range(8)))
        opened = set(ports)
        assert len(opened) <= 2
        for _ in range(3):
            await sender.send(sms())
        assert set(ports) == opened  # the same connections again


def test_retry_after_takes_seconds_or_an_http_date():
    assert retry_after_s("120") == 120
    now = time.time()
    assert retry_after_s(email.utils.formatdate(now + 30, usegmt=True), now=now) == pytest.approx(30, abs=1)
    assert retry_after_s(email.utils.formatdate(now - 30, usegmt=True), now=now) == 0
    assert retry_after_s("soon") is None and retry_after_s(None) is None


# -- webhook -------------------------------------------------------------------------


async def test_webhook_posts_the_json_signed_with_the_provider_secret(local, provider):
    hook = provider(notify_pb2.WEBHOOK)
    url = f"http://127.0.0.1:{local.http_port}/webhook/alice"
    body = json.dumps({"invoice": 17})
    result = await hook.send(OutgoingMessage(notify_pb2.WEBHOOK, url, json_body=body, idempotency_key="n1/alice/webhook"))
    assert result == SendResult("webhook", "n1/alice/webhook")
    [stored] = local.outbox.read("webhook")
    assert stored["verified"] and stored["path"] == "/webhook/alice" and stored["body"] == {"invoice": 17}
    assert webhooks.verify(local.creds.webhook_secret, stored["signature"], body.encode())
    assert not webhooks.verify("another secret", stored["signature"], body.encode())
    await fault(local, channel="webhook", status=503, count=1, retry_after=2)
    with pytest.raises(TransientSendError) as failed:
        await hook.send(OutgoingMessage(notify_pb2.WEBHOOK, url, json_body=body))
    assert failed.value.retry_after_s == 2
    with pytest.raises(PermanentSendError, match="HTTP 404"):
        await hook.send(OutgoingMessage(notify_pb2.WEBHOOK, f"http://127.0.0.1:{local.http_port}/nope", json_body=body))


async def test_a_replaced_webhook_key_signs_beside_the_new_one_until_it_expires(local):
    url = f"http://127.0.0.1:{local.http_port}/webhook/alice"
    body = json.dumps({"invoice": 17})
    record = records(local, 0)[notify_pb2.WEBHOOK]
    record.secret, record.previous_secret = "new-key", local.creds.webhook_secret
    for until_ms, old_key_signs in ((now_ms() + 60_000, True), (now_ms() - 1, False)):
        record.previous_secret_expire_time.FromMilliseconds(until_ms)
        hook = provider_for(record, LOOPBACK)
        try:
            await hook.send(OutgoingMessage(notify_pb2.WEBHOOK, url, json_body=body))
        finally:
            await hook.close()
        signature = local.outbox.read("webhook")[-1]["signature"]
        assert webhooks.verify("new-key", signature, body.encode())
        assert webhooks.verify(local.creds.webhook_secret, signature, body.encode()) is old_key_signs


async def test_a_message_that_cannot_be_sent_as_it_is_fails_permanently(local, provider):
    with pytest.raises(PermanentSendError, match="not a valid email"):
        await provider(notify_pb2.EMAIL).send(mail(headers={"List-Unsubscribe": "<x>\r\nBcc: eve@example.com"}))
    hook = provider(notify_pb2.WEBHOOK)
    for url in ("not a url", "ftp://127.0.0.1/x"):
        with pytest.raises(PermanentSendError, match="not an http"):
            await hook.send(OutgoingMessage(notify_pb2.WEBHOOK, url, json_body="{}"))
    assert local.outbox.read("email") == []


def test_an_unknown_kind_is_refused():
    with pytest.raises(ValueError, match="no provider of kind 'carrier-pigeon'"):
        provider_for(notify_pb2.Provider(channel=notify_pb2.SMS, kind="carrier-pigeon"))


async def test_http_providers_connect_to_no_loopback_address_unless_allowed(local):
    """The webhook channel and the SMS API (egress.py): the same local fakes, without
    loopback allowed, are refused before any connection, as permanent failures."""
    url = f"http://127.0.0.1:{local.http_port}/webhook/alice"
    for channel, message in ((notify_pb2.WEBHOOK, OutgoingMessage(notify_pb2.WEBHOOK, url, json_body="{}")),
                             (notify_pb2.SMS, OutgoingMessage(notify_pb2.SMS, "+14155550100", text="hi"))):
        strict = provider_for(records(local)[channel])
        try:
            with pytest.raises(PermanentSendError, match="loopback address"):
                await strict.send(message)
        finally:
            await strict.close()
    assert local.outbox.read("webhook") == [] and local.outbox.read("sms") == []
