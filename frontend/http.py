"""The frontend's HTTP server: one-click unsubscribe (RFC 8058) for the
List-Unsubscribe links of emails (notifymesh/server/unsubscribe.py makes the tokens).

  GET  /unsubscribe?token=T   a small page asking to confirm, with a POST form
  POST /unsubscribe?token=T   what a mail client's one-click button sends (body
                              List-Unsubscribe=One-Click) and the form: records the
                              opt-out as the recipient's preference row for the
                              token's category and channel
A token that is malformed, altered, not ours or expired is answered 400.
An unsubscribe through a notification's link also records SEND_UNSUBSCRIBED on it.

  GET  /t/o/<token>, GET /t/c/<token>, POST /t/s/<token>
                              email opens and clicks, SMS status callbacks
                              (notifymesh/server/tracking.py); an unknown, altered
                              or expired token: 404, nothing recorded. A status
                              callback also needs the provider's signature
                              (provider_callbacks.py): 401 without, 403 wrong

  /dashboard ...              the operators' dashboard (frontend/dashboard.py)
"""

import html
import logging
from typing import Callable, NamedTuple, Protocol

from aiohttp import web

from frontend.dashboard import Dashboard
from frontend.tracking import SMS_STATUSES, SendRecorder
from gen.notifymesh.internal.v1 import notify_pb2 as internal_pb2
from gen.notifymesh.internal.v1 import storage_pb2
from gen.notifymesh.v1 import notify_pb2
from notifymesh.log import fields
from notifymesh.server import provider_callbacks, rows, tracking
from notifymesh.server.unsubscribe import InvalidToken, TokenSigner, Unsubscribe

log = logging.getLogger(__name__)

PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>Unsubscribe</title></head>
<body><form method="post">
<p>Stop {channel} notifications of the category <b>{category}</b>?</p>
<input type="hidden" name="List-Unsubscribe" value="One-Click">
<button type="submit">Unsubscribe</button>
</form></body></html>
"""


class TableWriter(Protocol):
    """The part of notifymesh.server.table.TableClient this server uses."""

    async def write(self, partition_key: str, ops: list[storage_pb2.TableOp]) -> None: ...


class UnsubscribeEndpoint:
    def __init__(self, table: TableWriter, signer: TokenSigner, recorder: SendRecorder | None = None):
        """recorder: where SEND_UNSUBSCRIBED is recorded (None: nowhere)."""
        self._table, self._signer, self._recorder = table, signer, recorder

    def _request(self, request: web.Request) -> Unsubscribe:
        try:
            return self._signer.verify(request.query.get("token", ""))
        except InvalidToken as e:
            raise web.HTTPBadRequest(text=f"{e}\n") from None

    async def confirm(self, request: web.Request) -> web.Response:
        wanted = self._request(request)
        return web.Response(text=PAGE.format(channel=html.escape(wanted.channel),
                                             category=html.escape(wanted.category or "every")),
                            content_type="text/html")

    async def unsubscribe(self, request: web.Request) -> web.Response:
        wanted = self._request(request)
        row = internal_pb2.PreferenceRow(enabled=False).SerializeToString()
        key = rows.preference_key(wanted.recipient, wanted.category, wanted.channel)
        await self._table.write(wanted.recipient, [storage_pb2.TableOp(key=key, value=row)])
        log.info("unsubscribed", extra=fields(category=wanted.category, channel=wanted.channel))
        if wanted.notification_id and self._recorder is not None:
            await self._recorder.record(
                tracking.Send(wanted.notification_id, wanted.recipient, wanted.channel, wanted.accepted_ms),
                notify_pb2.SEND_UNSUBSCRIBED, reason=f"from {wanted.category or 'every'} {wanted.channel} notifications")
        return web.Response(text=f"You are unsubscribed from {wanted.category or 'all'} {wanted.channel} "
                                 "notifications.\n")


class CallbackAuth(NamedTuple):
    """What a provider callback is checked against (provider_callbacks.py), both live."""
    sms_secrets: Callable[[], list[str]]  # the secrets of the sms_http providers
    public_base_url: Callable[[], str]  # the URL providers were given ("": as they call it)


class TrackingEndpoint:
    """Opens, clicks and SMS status callbacks (notifymesh/server/tracking.py)."""

    def __init__(self, tokens: tracking.Tracking, recorder: SendRecorder, max_age_s: Callable[[], float],
                 auth: CallbackAuth):
        """max_age_s(): how long a token works (the notification log's retention)."""
        self._tokens, self._recorder, self._max_age_s, self._auth = tokens, recorder, max_age_s, auth

    def _verified(self, request: web.Request, kind: str) -> tuple[tracking.Send, str]:
        try:
            return self._tokens.verify(kind, request.match_info["token"], self._max_age_s())
        except InvalidToken:
            raise web.HTTPNotFound(text="no such link\n") from None

    async def _record(self, send: tracking.Send, state: int, **kw) -> None:
        if not (await self._recorder.record(send, state, **kw)).found:
            raise web.HTTPNotFound(text="no such notification\n")

    async def opened(self, request: web.Request) -> web.Response:
        send, _ = self._verified(request, tracking.OPEN)
        await self._record(send, notify_pb2.SEND_OPENED)
        return web.Response(body=tracking.PIXEL_GIF, content_type="image/gif",
                            headers={"Cache-Control": "no-store, private"})

    async def clicked(self, request: web.Request) -> web.Response:
        send, target = self._verified(request, tracking.CLICK)
        await self._record(send, notify_pb2.SEND_CLICKED, reason=f"link {tracking.without_query(target)}")
        raise web.HTTPFound(target)

    async def status(self, request: web.Request) -> web.Response:
        """The common SMS API's status callback: form MessageSid, MessageStatus (ErrorCode)."""
        form = await request.post()
        self._authenticated(request, {name: str(value) for name, value in form.items()})
        send, _ = self._verified(request, tracking.STATUS)
        status = str(form.get("MessageStatus", "")).lower()
        state = SMS_STATUSES.get(status)
        if state is not None:
            error = str(form.get("ErrorCode", ""))
            reason = "" if state == notify_pb2.SEND_DELIVERED else \
                f"the provider reported it {status}" + (f" (error {error[:40]})" if error else "")
            # Once delivered, nothing more; a failure is recorded whatever attempts failed
            # before the send that the provider took (a provider reports it once).
            await self._record(send, state, unless=frozenset({notify_pb2.SEND_DELIVERED}), reason=reason,
                               provider_message_id=str(form.get("MessageSid", ""))[:128])
        return web.Response(status=204)


    def _authenticated(self, request: web.Request, form: dict[str, str]) -> None:
        """401 without the provider's signature, 403 with a wrong one; both logged."""
        signature = request.headers.get(provider_callbacks.SMS_SIGNATURE_HEADER, "")
        base = self._auth.public_base_url()
        url = base + request.path_qs if base else str(request.url)
        if signature and provider_callbacks.sms_signed(self._auth.sms_secrets(), signature, url, form):
            return
        log.warning("provider callback refused", extra=fields(
            path=request.path.rpartition("/")[0], remote=request.remote,
            reason="wrong signature" if signature else f"no {provider_callbacks.SMS_SIGNATURE_HEADER}"))
        if not signature:
            raise web.HTTPUnauthorized(text=f"{provider_callbacks.SMS_SIGNATURE_HEADER} missing\n")
        raise web.HTTPForbidden(text="signature does not match\n")


def application(endpoint: UnsubscribeEndpoint, tracked: TrackingEndpoint | None = None,
                dashboard: Dashboard | None = None) -> web.Application:
    app = web.Application(client_max_size=64 * 1024)  # a form, nothing more
    app.router.add_get("/unsubscribe", endpoint.confirm)
    app.router.add_post("/unsubscribe", endpoint.unsubscribe)
    if tracked is not None:
        app.router.add_get(f"/t/{tracking.OPEN}/{{token}}", tracked.opened)
        app.router.add_get(f"/t/{tracking.CLICK}/{{token}}", tracked.clicked)
        app.router.add_post(f"/t/{tracking.STATUS}/{{token}}", tracked.status)
    if dashboard is not None:  # frontend/dashboard.py
        dashboard.add_routes(app)
    return app


class HttpServer:
    """The aiohttp server on the frontend's loop; port 0: any free one (.port after start)."""

    def __init__(self, app: web.Application, host: str, port: int):
        self._runner = web.AppRunner(app, access_log=None)
        self.host, self.port = host, port

    async def start(self) -> None:
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]
        log.info("http serving", extra=fields(addr=f"{self.host}:{self.port}"))

    async def stop(self) -> None:
        await self._runner.cleanup()
