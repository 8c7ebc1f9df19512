"""The frontend's HTTP server: one-click unsubscribe (RFC 8058) for the
List-Unsubscribe links of emails (notifymesh/server/unsubscribe.py makes the tokens).

  GET  /unsubscribe?token=T   a small page asking to confirm, with a POST form
  POST /unsubscribe?token=T   what a mail client's one-click button sends (body
                              List-Unsubscribe=One-Click) and the form: records the
                              opt-out as the recipient's preference row for the
                              token's category and channel
A token that is malformed, altered, not ours or expired is answered 400.
"""

import html
import logging
from typing import Protocol

from aiohttp import web

from gen.notifymesh.internal.v1 import notify_pb2 as internal_pb2
from gen.notifymesh.internal.v1 import storage_pb2
from notifymesh.log import fields
from notifymesh.server import rows
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
    def __init__(self, table: TableWriter, signer: TokenSigner):
        self._table, self._signer = table, signer

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
        return web.Response(text=f"You are unsubscribed from {wanted.category or 'all'} {wanted.channel} "
                                 "notifications.\n")


def application(endpoint: UnsubscribeEndpoint) -> web.Application:
    app = web.Application(client_max_size=64 * 1024)  # a form, nothing more
    app.router.add_get("/unsubscribe", endpoint.confirm)
    app.router.add_post("/unsubscribe", endpoint.unsubscribe)
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
