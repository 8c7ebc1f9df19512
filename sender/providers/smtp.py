"""Email over SMTP (aiosmtplib): multipart text and HTML, our own Message-ID,
STARTTLS and login when configured, through a bounded pool of kept-open
connections.

Provider settings: host, port (default 25), starttls or use_tls ("true"/"false":
STARTTLS, or TLS from the start), username, from, timeout_seconds (default 30);
secret: the password. Failures: a 4xx reply,
a refused or dropped connection and a timeout are transient; a 5xx reply is
permanent (550 mailbox unavailable, 553 bad address, 535 bad credentials).
"""

import asyncio
import email.utils
import secrets
from email.header import Header
from email.message import Message
from email.mime.multipart import MIMEMultipart
from email.mime.text import MIMEText

import aiosmtplib

from gen.notifymesh.v1 import notify_pb2
from notifymesh.server import egress
from sender.providers.base import OutgoingMessage, PermanentSendError, SendResult, TransientSendError, setting

DEFAULT_TIMEOUT_S = 30.0


def build_message(msg: OutgoingMessage, sender: str) -> Message:
    """The MIME message: text/plain, or multipart/alternative with the HTML. Built on
    the email package's compat32 classes: EmailMessage's header registry cost 1.1 ms
    of CPU a message, these 0.3 ms (bench/providers.py)."""
    headers = {"From": sender, "To": msg.to, "Subject": msg.subject, **msg.headers}
    if any("\r" in value or "\n" in value for value in headers.values()):
        raise ValueError("a header value with a line break")  # it would add headers of its own
    if msg.html:
        # A boundary of our own, random: the generator would otherwise compile a regex a
        # message to check the one it makes does not occur in the text.
        mail = MIMEMultipart("alternative", boundary="=_" + secrets.token_hex(16))
        mail.attach(MIMEText(msg.text, "plain", "utf-8"))
        mail.attach(MIMEText(msg.html, "html", "utf-8"))
    else:
        mail = MIMEText(msg.text, "plain", "utf-8")
    domain = sender.rpartition("@")[2].rstrip(">") or "notifymesh.local"
    headers.update({"Date": email.utils.formatdate(), "Message-ID": email.utils.make_msgid(domain=domain)})
    for name, value in headers.items():
        mail[name] = value if value.isascii() else Header(value, "utf-8")
    return mail


def classify(error: Exception) -> TransientSendError | PermanentSendError:
    if isinstance(error, egress.ForbiddenAddress):
        return PermanentSendError(f"smtp refused: {error}")
    if isinstance(error, aiosmtplib.SMTPRecipientsRefused):  # each refused recipient has its reply
        codes = [r.code for r in error.recipients]
        reason = "; ".join(f"{r.code} {r.message}" for r in error.recipients)
        return PermanentSendError(reason) if codes and all(c >= 500 for c in codes) else TransientSendError(reason)
    if isinstance(error, aiosmtplib.SMTPResponseException) and not isinstance(error, aiosmtplib.SMTPConnectError):
        reason = f"{error.code} {error.message}"
        return PermanentSendError(reason) if error.code >= 500 else TransientSendError(reason)
    return TransientSendError(f"{type(error).__name__}: {error}")


class SmtpProvider:
    name = "smtp"

    def __init__(self, record: notify_pb2.Provider, allowed: egress.Allowed = lambda: ()):
        """allowed(): the non-public networks it may connect to (egress.py)."""
        self._allowed = allowed
        s = record.settings
        self._host, self._port = setting(s, "host", "127.0.0.1"), int(setting(s, "port", "25"))
        self._starttls = setting(s, "starttls", "false").lower() == "true"
        self._use_tls = setting(s, "use_tls", "false").lower() == "true"  # implicit TLS (port 465)
        self._username, self._password = setting(s, "username"), record.secret
        self._from = setting(s, "from", "notifymesh@localhost")
        self._timeout = float(setting(s, "timeout_seconds", str(DEFAULT_TIMEOUT_S)))
        size = record.max_concurrency or 32
        # At most `size` connections exist; an idle one waits here for the next send.
        self._slots = asyncio.Semaphore(size)
        self._idle: list[aiosmtplib.SMTP] = []
        self.connects = 0  # connections opened, for tests and stats

    async def _connect(self) -> aiosmtplib.SMTP:
        # To a checked address of the host (a name that resolves elsewhere later gains nothing); TLS names the host.
        sock = await egress.guarded_socket(self._host, self._port, self._allowed, self._timeout)
        client = aiosmtplib.SMTP(hostname=self._host, sock=sock, timeout=self._timeout,
                                 use_tls=self._use_tls, start_tls=self._starttls and not self._use_tls)
        await client.connect()
        self.connects += 1
        if self._username:
            await client.login(self._username, self._password)
        return client

    async def send(self, msg: OutgoingMessage) -> SendResult:
        try:
            mail = build_message(msg, self._from)
        except ValueError as e:  # a header with a line break: the same message fails every time
            raise PermanentSendError(f"not a valid email: {e}") from None
        async with self._slots:
            client = self._idle.pop() if self._idle else None
            reused = client is not None
            while True:
                try:
                    if client is None:
                        client = await self._connect()
                    await client.send_message(mail, sender=email.utils.parseaddr(self._from)[1],
                                              recipients=[msg.to])
                except asyncio.CancelledError:
                    if client is not None:
                        client.close()
                    raise
                except Exception as e:
                    failed, client = client, None
                    if failed is not None:
                        failed.close()
                    # A kept-open connection the server dropped meanwhile (idle timeout):
                    # once more on a new one, not a failed attempt.
                    if reused and isinstance(e, (aiosmtplib.SMTPServerDisconnected, ConnectionError)):
                        reused = False
                        continue
                    raise classify(e) from None
                self._idle.append(client)
                return SendResult(self.name, mail["Message-ID"])

    async def close(self) -> None:
        idle, self._idle = self._idle, []
        for client in idle:
            try:
                await asyncio.wait_for(client.quit(), 2)
            except Exception:
                client.close()
