"""The local mesh's embedded providers, one process: an SMTP server (aiosmtpd), an
HTTP server (aiohttp) with an SMS API fake, a webhook receiver and an FCM fake,
and an APNs fake serving HTTP/2 (jh2, cleartext with prior knowledge). Each stores
what it receives as JSON lines under <data dir>/outbox/ (contracts.outbox_files),
which `notifymesh outbox list` prints, so a new user sees notifications arrive
without any account.

HTTP:
  POST /accounts/{account}/messages   the SMS API (form To, From, Body, StatusCallback; basic
                                      auth account:token) -> 201 {"id", "status": "queued"};
                                      RECEIPT_DELAY_S later, like a real provider, it POSTs
                                      form MessageSid, MessageStatus ("delivered") to the
                                      StatusCallback URL, signed (X-Twilio-Signature with the
                                      token: notifymesh/server/provider_callbacks.py)
  POST /webhook/{anything}            a webhook receiver: stores path, body, signature
                                      (Notifymesh-Signature) and whether it verified
  POST /fcm/token                     FCM's OAuth2 token endpoint: form grant_type (jwt-bearer),
                                      assertion (RS256, checked with the service account's
                                      public key) -> {"access_token", "expires_in"}
  POST /fcm/v1/projects/{p}/messages:send
                                      FCM HTTP v1 send (bearer token from /fcm/token)
  POST /_faults {"channel": "sms", "status": 500, "count": 2, "retry_after": 1}
                                      the next `count` requests of the channel fail with
                                      `status` (email: SMTP reply code to DATA; push: both
                                      fakes, in their providers' error shapes)
  POST /_receipts {"status": "undelivered", "count": 1}
                                      the next `count` SMS status callbacks report `status`
  POST /_faults {"channel": "push", "dead_token": T}
                                      both push fakes answer T as unregistered from then on
  GET  /_outbox?channel=sms           what the channel stored, as a JSON list
  POST /_erase {"address": "alice@example.com"}
                                      rewrites the outbox without any record that holds the
                                      address (a recipient's erasure reaches the outbox too)

APNs (HTTP/2 at --apns-port): POST /3/device/{token}, authorization: bearer an ES256
JWT (kid, iss: team id; checked with the key's public half), apns-topic, apns-push-type
-> 200 with apns-id; errors as APNs answers them ({"reason": ...}).

    python -m deploy.local_providers --data-dir .notifymesh --smtp-port 50066 --http-port 50067 --apns-port 50065
"""

import argparse
import asyncio
import email
import email.header
import json
import os
import secrets
import signal
import sys
import uuid
from pathlib import Path
from typing import NamedTuple, TextIO

import aiohttp
import uvloop
from aiohttp import web
from aiosmtpd.smtp import SMTP

from deploy import push_fakes

from gen.notifymesh.v1 import notify_pb2
from notifymesh import webhooks
from notifymesh.contracts import OUTBOX_CHANNELS, OUTBOX_MAX_BYTES, outbox_files
from notifymesh.server import provider_callbacks

CREDENTIALS_FILE = "local-providers.json"  # in the data dir: kept across restarts
SMS_FROM = "+15005550006"
EMAIL_FROM = "notifymesh@localhost"
RECEIPT_DELAY_S = 0.2  # from accepting an SMS to calling its StatusCallback
# Callbacks posted at once; the others wait their turn, as in a provider's queue.
# The timeout is one request's: a callback that waited for its turn was not
# dropped for that (it was, when the session's timeout also ran in the pool's
# queue: about half of 20,000 receipts of an SMS bench run, none logged).
RECEIPTS_IN_FLIGHT = 100
RECEIPT_TIMEOUT_S = 10.0
RECEIPT_STATUSES = ("delivered", "undelivered", "failed", "sent")


class Credentials(NamedTuple):
    sms_account: str
    sms_token: str
    webhook_secret: str
    fcm_key: str = ""  # the FCM service account's private key (PEM, RSA)
    apns_key: str = ""  # the APNs .p8 key (PEM, EC P-256)


def credentials(data_dir: Path) -> Credentials:
    """The data dir's local credentials, made at first use (the push keys added to
    a data dir made before them)."""
    path = Path(data_dir) / CREDENTIALS_FILE
    made = Credentials(**json.loads(path.read_text())) if path.exists() else \
        Credentials("AC" + secrets.token_hex(8), secrets.token_urlsafe(24), secrets.token_urlsafe(24))
    if not path.exists() or not made.fcm_key or not made.apns_key:
        made = made._replace(fcm_key=made.fcm_key or push_fakes.new_rsa_key(),
                             apns_key=made.apns_key or push_fakes.new_ec_key())
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(made._asdict()))
        os.chmod(tmp, 0o600)
        tmp.replace(path)
    return made


def provider_records(creds: Credentials, host: str, smtp_port: int, http_port: int) -> list[notify_pb2.Provider]:
    """The providers that point the channels at this process (push: the FCM fake,
    named "fcm"; apns_record is the APNs fake's, "apns": a push goes to the one of
    its device's platform)."""
    return [
        notify_pb2.Provider(channel=notify_pb2.EMAIL, kind="smtp", settings={
            "host": host, "port": str(smtp_port), "starttls": "false", "from": EMAIL_FROM}),
        notify_pb2.Provider(channel=notify_pb2.SMS, kind="sms_http", secret=creds.sms_token, settings={
            "base_url": f"http://{host}:{http_port}", "account": creds.sms_account, "from": SMS_FROM}),
        notify_pb2.Provider(channel=notify_pb2.WEBHOOK, kind="webhook", secret=creds.webhook_secret, settings={}),
        push_fakes.fcm_record(creds.fcm_key, host, http_port),
    ]


def apns_record(creds: Credentials, host: str, apns_port: int) -> notify_pb2.Provider:
    return push_fakes.apns_record(creds.apns_key, host, apns_port)


class Fault(NamedTuple):
    status: int
    count: int
    retry_after: str


class Outbox:
    """The JSON-lines files, one per channel, each rotated at OUTBOX_MAX_BYTES.
    A channel's current file stays open for appends (one per channel at most), each
    store flushed as it is written (a record, or the APNs fake's records of one
    read): opening it per record was 11 % of the APNs fake's CPU (docs/benchmarks.md,
    2026-12-01, issue 16)."""

    def __init__(self, data_dir: Path):
        self._data_dir = data_dir
        (Path(data_dir) / "outbox").mkdir(parents=True, exist_ok=True)
        self._appending: dict[str, TextIO] = {}  # channel -> its current file, open

    def store(self, channel: str, record: dict) -> None:
        self.store_many(channel, [record])

    def store_many(self, channel: str, records: list[dict]) -> None:
        """The records in one write (readable once it returns): the APNs fake stores
        the requests of one read from its connection together."""
        f = self._appending.get(channel)
        if f is None:
            f = self._appending[channel] = open(outbox_files(self._data_dir, channel)[1], "a", encoding="utf-8")
        f.write("".join([json.dumps(record, ensure_ascii=False) + "\n" for record in records]))
        f.flush()
        if f.tell() > OUTBOX_MAX_BYTES:
            self.close()
            rotated, current = outbox_files(self._data_dir, channel)
            current.replace(rotated)

    def close(self) -> None:
        """Closes the open files (the next store opens its channel's again)."""
        for f in self._appending.values():
            f.close()
        self._appending.clear()

    def read(self, channel: str) -> list[dict]:
        return read_outbox(self._data_dir, channel)

    def erase(self, address: str) -> int:
        """Rewrites every file without the lines that hold address (JSON-escaped as
        stored); returns how many went."""
        needle, erased = json.dumps(address, ensure_ascii=False)[1:-1], 0
        self.close()  # the files are replaced: the next store appends to the new ones
        for channel in OUTBOX_CHANNELS:
            for path in outbox_files(self._data_dir, channel):
                if not path.exists():
                    continue
                lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
                kept = [line for line in lines if needle not in line]
                if len(kept) < len(lines):
                    tmp = path.with_suffix(".tmp")
                    tmp.write_text("".join(kept), encoding="utf-8")
                    tmp.replace(path)
                    erased += len(lines) - len(kept)
        return erased


def read_outbox(data_dir, channel: str) -> list[dict]:
    records = []
    for path in outbox_files(data_dir, channel):
        if path.exists():
            with open(path, encoding="utf-8") as f:
                records += [json.loads(line) for line in f if line.strip()]
    return records


class LocalProviders:
    """Both servers on the running loop; port 0: any free one (smtp_port, http_port
    say which after start())."""

    def __init__(self, data_dir: Path, creds: Credentials, host: str = "127.0.0.1", smtp_port: int = 0,
                 http_port: int = 0, apns_port: int = 0):
        self.outbox = Outbox(data_dir)
        self.creds, self.host, self.smtp_port, self.http_port = creds, host, smtp_port, http_port
        self.push = push_fakes.PushFakes(self, creds.fcm_key, creds.apns_key, host, apns_port)
        self.faults: dict[str, Fault] = {}  # channel -> the fault its next requests get
        self.smtp_sessions: set[SMTP] = set()  # open SMTP connections (drop_smtp_connections)
        self._smtp_server: asyncio.Server | None = None
        self._runner: web.AppRunner | None = None
        self.receipts: list[str] = []  # the statuses the next SMS callbacks report (then "delivered")
        self._callbacks: set[asyncio.Task] = set()
        self._receipt_slots = asyncio.Semaphore(RECEIPTS_IN_FLIGHT)
        self._client: aiohttp.ClientSession | None = None

    # -- faults -----------------------------------------------------------------

    def take_fault(self, channel: str) -> Fault | None:
        fault = self.faults.get(channel)
        if fault is None:
            return None
        if fault.count <= 1:
            del self.faults[channel]
        else:
            self.faults[channel] = fault._replace(count=fault.count - 1)
        return fault

    def drop_smtp_connections(self) -> None:
        """Closes every open SMTP connection, as a server's idle timeout or restart does."""
        for session in list(self.smtp_sessions):
            if session.transport is not None:
                session.transport.close()

    # -- SMTP -------------------------------------------------------------------

    async def handle_DATA(self, server, session, envelope) -> str:
        fault = self.take_fault("email")
        if fault is not None:
            return f"{fault.status} fault injected"
        # compat32 parsing: policy.default's header registry cost 5 ms a message.
        mail = email.message_from_bytes(envelope.content)
        bodies = {part.get_content_type(): part for part in mail.walk() if not part.is_multipart()}
        headers = {name: _header_text(value) for name, value in mail.items()}
        self.outbox.store("email", {
            "from": envelope.mail_from, "to": envelope.rcpt_tos, "subject": headers.get("Subject", ""),
            "text": _body_text(bodies.get("text/plain")), "html": _body_text(bodies.get("text/html")),
            "message_id": headers.get("Message-ID", ""), "headers": headers})
        return "250 OK"

    def _smtp_protocol(self) -> SMTP:
        providers = self

        class Session(SMTP):
            def connection_made(self, transport):
                super().connection_made(transport)
                providers.smtp_sessions.add(self)

            def connection_lost(self, exc):
                providers.smtp_sessions.discard(self)
                super().connection_lost(exc)

        return Session(self, hostname="notifymesh.local")

    # -- HTTP -------------------------------------------------------------------

    async def _sms(self, request: web.Request) -> web.Response:
        fault = self.take_fault("sms")
        if fault is not None:
            return _fault_response(fault)
        expected = aiohttp.encode_basic_auth(self.creds.sms_account, self.creds.sms_token)
        if request.match_info["account"] != self.creds.sms_account or request.headers.get("Authorization") != expected:
            return web.json_response({"message": "authentication failed"}, status=401)
        form = await request.post()
        to, body = str(form.get("To", "")), str(form.get("Body", ""))
        if not to.startswith("+") or not to[1:].isdigit():
            return web.json_response({"message": f"'To' is not a phone number: {to!r}"}, status=400)
        if not body:
            return web.json_response({"message": "'Body' is empty"}, status=400)
        message_id = "SM" + uuid.uuid4().hex
        self.outbox.store("sms", {"to": to, "from": str(form.get("From", "")), "body": body, "id": message_id})
        callback = str(form.get("StatusCallback", ""))
        if callback:
            task = asyncio.create_task(self._report(callback, message_id,
                                                    self.receipts.pop(0) if self.receipts else "delivered"))
            self._callbacks.add(task)
            task.add_done_callback(self._callbacks.discard)
        return web.json_response({"id": message_id, "status": "queued"}, status=201)

    async def _report(self, url: str, message_id: str, status: str) -> None:
        """The delivery receipt, once, as a provider sends it (no retry here)."""
        await asyncio.sleep(RECEIPT_DELAY_S)
        form = {"MessageSid": message_id, "MessageStatus": status}
        if status in ("undelivered", "failed"):
            form["ErrorCode"] = "30003"  # the common API's "unreachable handset"
        headers = {provider_callbacks.SMS_SIGNATURE_HEADER:
                   provider_callbacks.sms_signature(self.creds.sms_token, url, form)}
        async with self._receipt_slots:
            try:
                async with self._client.post(url, data=form, headers=headers, allow_redirects=False,
                                             timeout=aiohttp.ClientTimeout(total=RECEIPT_TIMEOUT_S)) as response:
                    await response.read()
                    failure = "" if response.status < 300 else f"HTTP {response.status}"
            except (aiohttp.ClientError, asyncio.TimeoutError) as e:
                failure = f"{type(e).__name__}: {e}".rstrip(": ")
        if failure:
            print(f"local providers: the receipt of {message_id} was not taken: {failure}", file=sys.stderr,
                  flush=True)

    async def _receipts(self, request: web.Request) -> web.Response:
        try:
            spec = await request.json()
            status, count = spec["status"], int(spec.get("count", 1))
            if status not in RECEIPT_STATUSES or not 0 <= count <= 1000:
                raise ValueError
        except (ValueError, KeyError, TypeError):
            return web.json_response({"message": f'want {{"status": one of {list(RECEIPT_STATUSES)}, '
                                                 '"count": 0..1000}'}, status=400)
        self.receipts = [status] * count
        return web.json_response({"status": status, "count": count})

    async def _webhook(self, request: web.Request) -> web.Response:
        fault = self.take_fault("webhook")
        if fault is not None:
            return _fault_response(fault)
        raw = await request.read()
        try:
            body = json.loads(raw)
        except ValueError:
            body = raw.decode(errors="replace")
        signature = request.headers.get(webhooks.HEADER, "")
        self.outbox.store("webhook", {"path": request.path, "body": body, "signature": signature,
                                      "verified": webhooks.verify(self.creds.webhook_secret, signature, raw)})
        return web.json_response({"received": True})

    async def _faults(self, request: web.Request) -> web.Response:
        try:
            spec = await request.json()
            if isinstance(spec, dict) and spec.get("channel") == "push" and isinstance(spec.get("dead_token"), str):
                self.push.dead(spec["dead_token"])
                return web.json_response({"channel": "push", "dead_token": spec["dead_token"]})
            channel, status, count = spec["channel"], int(spec["status"]), int(spec.get("count", 1))
            if channel not in OUTBOX_CHANNELS or not 100 <= status <= 599 or count < 0:
                raise ValueError
        except (ValueError, KeyError, TypeError):
            return web.json_response({"message": f"want {{\"channel\": one of {list(OUTBOX_CHANNELS)}, "
                                                 "\"status\": 100..599, \"count\": N, \"retry_after\": S}"},
                                     status=400)
        if count == 0:
            self.faults.pop(channel, None)
        else:
            self.faults[channel] = Fault(status, count, str(spec.get("retry_after", "")))
        return web.json_response({"channel": channel, "status": status, "count": count})

    async def _outbox(self, request: web.Request) -> web.Response:
        channel = request.query.get("channel", "")
        if channel not in OUTBOX_CHANNELS:
            return web.json_response({"message": f"channel: one of {list(OUTBOX_CHANNELS)}"}, status=400)
        return web.json_response(self.outbox.read(channel))

    async def _erase(self, request: web.Request) -> web.Response:
        """{"address": A}, or {"addresses": [A, ...]} as the mesh's erasure hook sends it."""
        try:
            body = await request.json()
            addresses = body["addresses"] if "addresses" in body else [body["address"]]
            if not isinstance(addresses, list) or not all(isinstance(a, str) and len(a) >= 3 for a in addresses):
                raise ValueError
        except (ValueError, KeyError, TypeError):
            return web.json_response({"message": 'want {"address": "an email address or phone number"} or '
                                                 '{"addresses": [...]}'}, status=400)
        return web.json_response({"erased": sum(self.outbox.erase(address) for address in addresses)})

    # -- lifecycle --------------------------------------------------------------

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._smtp_server = await loop.create_server(self._smtp_protocol, self.host, self.smtp_port)
        self.smtp_port = self._smtp_server.sockets[0].getsockname()[1]
        app = web.Application()
        app.router.add_post("/accounts/{account}/messages", self._sms)
        app.router.add_post("/webhook/{path:.*}", self._webhook)
        app.router.add_post("/_faults", self._faults)
        app.router.add_get("/_outbox", self._outbox)
        app.router.add_post("/_erase", self._erase)
        app.router.add_post("/_receipts", self._receipts)
        self._client = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))  # _receipt_slots bound it
        self.push.routes(app)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.http_port)
        await site.start()
        self.http_port = site._server.sockets[0].getsockname()[1]
        await self.push.start(self.http_port)

    async def stop(self) -> None:
        await self.push.stop()
        if self._smtp_server is not None:
            self._smtp_server.close()
            self.drop_smtp_connections()
        if self._runner is not None:
            await self._runner.cleanup()
        for task in list(self._callbacks):
            task.cancel()
        await asyncio.gather(*self._callbacks, return_exceptions=True)
        if self._client is not None:
            await self._client.close()
        self.outbox.close()


def _header_text(value) -> str:
    return str(email.header.make_header(email.header.decode_header(value)))


def _body_text(part) -> str:
    if part is None:
        return ""
    return part.get_payload(decode=True).decode(part.get_content_charset() or "utf-8", errors="replace")


def _fault_response(fault: Fault) -> web.Response:
    headers = {"Retry-After": fault.retry_after} if fault.retry_after else {}
    return web.json_response({"message": "fault injected"}, status=fault.status, headers=headers)


async def _serve(args: argparse.Namespace) -> None:
    providers = LocalProviders(args.data_dir, credentials(args.data_dir), args.host, args.smtp_port, args.http_port,
                               args.apns_port)
    await providers.start()
    print(f"local providers: smtp {args.host}:{providers.smtp_port}; sms api, webhooks and fcm "
          f"http://{args.host}:{providers.http_port}; apns (http/2) {args.host}:{providers.push.apns_port}; "
          f"outbox {Path(args.data_dir).resolve() / 'outbox'}", flush=True)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(sig, stop.set)
    await stop.wait()
    await providers.stop()


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m deploy.local_providers", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", type=Path, required=True, help="the mesh's data dir: outbox/ and credentials")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--smtp-port", type=int, default=0)
    p.add_argument("--http-port", type=int, default=0)
    p.add_argument("--apns-port", type=int, default=0)
    args = p.parse_args()
    try:
        uvloop.run(_serve(args))  # the services' loop: the APNs fake's reads and writes cost less on it
    except OSError as e:  # a port in use
        sys.exit(f"local providers: {e}")


if __name__ == "__main__":
    main()
