"""The `notifymesh` commands of the notification layer: recipient, prefs, category,
template, notify, notification, audience, provider and stats (notifymesh.cli adds them
to its parser and runs them; they report through its Output like the others)."""

import argparse
import collections
import csv
import datetime
import json
import sys
import time
from pathlib import Path
from typing import Iterator, NamedTuple

from gen.notifymesh.v1 import notify_pb2
from notifymesh import cli as base
from notifymesh.client import MAX_RECIPIENTS_PER_CALL, Client, channel_of
from notifymesh.errors import InvalidArgument, NotFound

COMMANDS = ("recipient", "prefs", "category", "template", "notify", "notification", "audience", "provider", "stats",
            "device", "inbox")
CONTACT_FIELDS = ("id", "email", "phone", "locale", "timezone", "webhook_url")  # other import columns: attributes
BAR_WIDTH = 30
PROVIDER_KINDS = {"email": "smtp", "sms": "sms_http", "webhook": "webhook", "push": "fcm"}
PUSH_KINDS = ("fcm", "apns")


# -- argument types ------------------------------------------------------------------------


def rate_limit(text: str) -> tuple[int, int]:
    """--limit N/PERIOD, e.g. 3/1h or 100/1d: (limit, period in whole seconds)."""
    limit, sep, period = text.partition("/")
    try:
        count, seconds = base.count(1)(limit), base.duration(period) if sep else 0
    except argparse.ArgumentTypeError:
        count, seconds = 0, 0
    if not count or seconds < 1 or seconds != int(seconds):
        raise argparse.ArgumentTypeError(f"not a rate limit: {text!r} (N per a period of whole seconds: 3/1h, "
                                         "100/1d, 10/30s)")
    return count, int(seconds)


def channel(text: str) -> int:
    try:
        return channel_of(text)
    except InvalidArgument as e:
        raise argparse.ArgumentTypeError(e.details) from None


def channel_name(value: int) -> str:
    return notify_pb2.Channel.Name(value).lower()


def json_object(text: str) -> str:
    try:
        value = json.loads(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"not JSON: {e}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError("not a JSON object")
    return text


def text_file(path: str) -> str:
    """The contents of a UTF-8 file ('-': stdin)."""
    try:
        return sys.stdin.read() if path == "-" else Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise argparse.ArgumentTypeError(f"cannot read {path}: {e}") from None


# -- records -------------------------------------------------------------------------------


def _recipient_record(r: notify_pb2.Recipient) -> dict:
    return {"id": r.id, "email": r.email, "phone": r.phone, "locale": r.locale, "timezone": r.timezone,
            "attributes": dict(r.attributes), "webhook_url": r.webhook_url,
            "update_time": r.update_time.ToJsonString() if r.HasField("update_time") else None}


def _limit(limit: notify_pb2.RateLimit) -> str | None:
    return f"{limit.limit}/{limit.period_seconds}s" if limit.limit or limit.period_seconds else None


def _preferences_record(p: notify_pb2.Preferences) -> dict:
    return {"recipient": p.recipient, "unsubscribed": p.unsubscribed,
            "preferences": [{"category": x.category or "*", "channel": x.channel or "*", "enabled": x.enabled}
                            for x in p.preferences],
            "rate_limits": {x.category: _limit(x.rate_limit) or "none" for x in p.rate_limits}}


def _category_record(c: notify_pb2.Category) -> dict:
    return {"name": c.name, "description": c.description, "mandatory": c.mandatory, "limit": _limit(c.rate_limit),
            "over_limit": notify_pb2.OverLimitPolicy.Name(c.over_limit or notify_pb2.DROP).lower(),
            "create_time": c.create_time.ToJsonString()}


def _template_record(t: notify_pb2.Template) -> dict:
    return {"name": t.name, "version": t.version, "description": t.description, "default_locale": t.default_locale,
            "contents": [{"channel": channel_name(c.channel), "locale": c.locale or t.default_locale,
                          **{f: getattr(c, f) for f in ("subject", "text", "html", "json_body") if getattr(c, f)}}
                         for c in t.contents],
            "create_time": t.create_time.ToJsonString()}


def _rendered_record(r: notify_pb2.RenderedContent) -> dict:
    return {"channel": channel_name(r.channel), "locale": r.locale, "version": r.version,
            **{f: getattr(r, f) for f in ("subject", "text", "html", "json_body") if getattr(r, f)}}


def _provider_record(p: notify_pb2.Provider) -> dict:
    record = {"channel": channel_name(p.channel), "name": p.name or "default", "priority": p.priority,
              "kind": p.kind, "settings": dict(p.settings), "secret_set": p.secret_set,
              "max_concurrency": p.max_concurrency}
    if p.HasField("previous_secret_expire_time"):
        record["previous_secret_expire_time"] = p.previous_secret_expire_time.ToJsonString()
    return record


def _provider_status_record(s: notify_pb2.ProviderStatus) -> dict:
    record = {"sender": s.sender, "channel": channel_name(s.channel), "name": s.name, "priority": s.priority,
              "state": notify_pb2.BreakerState.Name(s.state).removeprefix("BREAKER_").lower(),
              "error_rate": round(s.error_rate, 3), "sends": s.sends, "failures": s.failures,
              "consecutive_failures": s.consecutive_failures}
    if s.HasField("retry_time"):
        record["retry_time"] = s.retry_time.ToJsonString()
    if s.last_error:
        record["last_error"] = s.last_error
    return record


def _state(state: int) -> str:
    return notify_pb2.SendState.Name(state)


def _header_record(n: notify_pb2.Notification) -> dict:
    return {"notification": n.id, "template": n.template, "template_version": n.template_version,
            "category": n.category, "priority": notify_pb2.Priority.Name(n.priority or notify_pb2.NORMAL).lower(),
            "create_time": n.create_time.ToJsonString(), "recipient_count": n.recipient_count,
            **({"audience": n.audience} if n.audience else {}), "trace_id": n.trace_id}


def _event_fields(e) -> dict:
    """A SendEvent's or RecipientSend's outcome fields that are set."""
    return {k: getattr(e, k) for k in ("reason", "provider", "provider_message_id") if getattr(e, k)}


def _send_record(s: notify_pb2.RecipientSend) -> dict:
    return {"recipient": s.recipient, "channel": channel_name(s.channel), "state": _state(s.state),
            **_event_fields(s),
            "timeline": [{"time": e.time.ToJsonString(), "state": _state(e.state), **_event_fields(e),
                          **({"attempt": e.attempt} if e.attempt else {})} for e in s.timeline]}


# -- commands ------------------------------------------------------------------------------


async def _recipient(args, client: Client) -> int:
    if args.action == "set":
        recipient = notify_pb2.Recipient(id=args.id, email=args.email or "", phone=args.phone or "",
                                         locale=args.locale or "", timezone=args.timezone or "",
                                         attributes=dict(args.attr or []), webhook_url=args.webhook_url or "")
        args.out.record(_recipient_record(await client.upsert_recipient(recipient)))
    elif args.action == "get":
        args.out.record(_recipient_record(await client.get_recipient(args.id)))
    elif args.action == "delete":
        await client.delete_recipient(args.id)
        args.out.record({"recipient": args.id, "erased": True})
    elif args.action == "import":
        return await _import(args, client)
    return 0


class _Row(NamedTuple):
    """A row of an import file: its (last) line, the recipient, or why there is none."""
    line: int
    recipient: notify_pb2.Recipient | None
    error: str | None


def _recipient_of(fields: dict, attributes: dict) -> notify_pb2.Recipient:
    for key in CONTACT_FIELDS:
        if not isinstance(fields.get(key, ""), str):
            raise ValueError(f"{key} must be a string")
    if not fields.get("id"):
        raise ValueError("no id")
    return notify_pb2.Recipient(**{key: fields[key] for key in CONTACT_FIELDS if fields.get(key)},
                                attributes=attributes)


def _csv_rows(stream) -> Iterator[_Row]:
    """Header: id,email,phone,locale,timezone,webhook_url in any order (only id is
    required); any other column is an attribute (left out where empty)."""
    reader = csv.reader(stream)
    header = next(reader, None)
    if header is None or "id" not in header:
        base.fail("the CSV file needs a header row with an id column (and email, phone, locale, timezone, "
                  "webhook_url, or any other column as an attribute)")
    for cells in reader:
        if not any(cells):
            continue
        if len(cells) != len(header):
            yield _Row(reader.line_num, None, f"{len(cells)} cells; the header has {len(header)}")
            continue
        row = dict(zip(header, cells))
        attributes = {k: v for k, v in row.items() if k not in CONTACT_FIELDS and v}
        try:
            yield _Row(reader.line_num, _recipient_of(row, attributes), None)
        except ValueError as e:
            yield _Row(reader.line_num, None, str(e))


def _json_rows(stream) -> Iterator[_Row]:
    """An object per line: the contact fields, "attributes" (an object), and any
    other key as an attribute (non-strings as their JSON)."""
    for line, text in enumerate(stream, 1):
        if not text.strip():
            continue
        try:
            row = json.loads(text)
            if not isinstance(row, dict):
                raise ValueError("not a JSON object")
            attributes = row.get("attributes") or {}
            if not isinstance(attributes, dict):
                raise ValueError("attributes must be an object")
            attributes |= {k: v for k, v in row.items() if k not in (*CONTACT_FIELDS, "attributes")}
            attributes = {k: v if isinstance(v, str) else json.dumps(v) for k, v in attributes.items()}
            yield _Row(line, _recipient_of(row, attributes), None)
        except ValueError as e:
            yield _Row(line, None, str(e))


class _CountingReader:
    """Lines of a text file, counting the bytes read, for the progress bar."""

    def __init__(self, stream):
        self._stream, self.bytes_read = stream, 0

    def __iter__(self):
        return self

    def __next__(self) -> str:
        line = next(self._stream)
        self.bytes_read += len(line.encode())
        return line


class _Progress:
    """On a terminal, a bar on stderr updated in place: share of the file read, rows
    imported, rows per second and refusals."""

    def __init__(self, total_bytes: int):
        self._total, self._start, self._last = max(1, total_bytes), time.monotonic(), 0.0
        self._tty = sys.stderr.isatty()

    def show(self, done_bytes: int, rows: int, refused: int, final: bool = False) -> None:
        now = time.monotonic()
        if not self._tty or (not final and now - self._last < base.PROGRESS_EVERY_S):
            return
        self._last = now
        share = min(1.0, done_bytes / self._total)
        bar = "#" * round(share * BAR_WIDTH)
        rate = rows / max(now - self._start, 1e-9)
        print(f"\r\x1b[K[{bar:<{BAR_WIDTH}}] {share:4.0%}  {rows} rows  {rate:,.0f} rows/s  {refused} refused",
              end="\n" if final else "", file=sys.stderr, flush=True)


def _format_of(path: Path, given: str | None) -> str:
    if given:
        return given
    return "jsonl" if path.suffix.lower() in (".jsonl", ".ndjson", ".json") else "csv"


async def _import(args, client: Client) -> int:
    """Upserts the file's recipients in batches; a row refused (here or by the
    server) is reported as a JSON line and the import goes on. The last line is a
    summary; exit 1 when any row was refused."""
    path = Path(args.file)
    try:
        stream = path.open(encoding="utf-8", newline="")
    except OSError as e:
        base.fail(f"cannot read {path}: {e.strerror}")
    started = time.monotonic()
    tally = collections.Counter()
    lines: collections.deque[int] = collections.deque()  # the lines of the batch being sent
    with stream:
        counted = _CountingReader(stream)
        rows = _csv_rows(counted) if _format_of(path, args.format) == "csv" else _json_rows(counted)
        progress = _Progress(path.stat().st_size)

        def recipients() -> Iterator[notify_pb2.Recipient]:
            for row in rows:
                if row.recipient is None:
                    tally["refused"] += 1
                    args.out.record({"line": row.line, "error": row.error})
                    continue
                lines.append(row.line)
                yield row.recipient

        try:
            async for batch in client.import_recipients(recipients(), args.batch):
                for error in batch.errors:
                    args.out.record({"line": lines[error.index - batch.start], "id": error.id, "error": error.reason})
                for _ in range(batch.count):
                    lines.popleft()
                tally["stored"] += batch.stored
                tally["refused"] += len(batch.errors)
                progress.show(counted.bytes_read, tally["stored"] + tally["refused"], tally["refused"])
        except UnicodeDecodeError as e:
            base.fail(f"{path} is not UTF-8 text: {e}")
        progress.show(counted.bytes_read, tally["stored"] + tally["refused"], tally["refused"], final=True)
    seconds = time.monotonic() - started
    args.out.record({"imported": tally["stored"], "refused": tally["refused"], "seconds": round(seconds, 3),
                     "rows_per_s": round((tally["stored"] + tally["refused"]) / max(seconds, 1e-9))})
    return 1 if tally["refused"] else 0


async def _prefs(args, client: Client) -> None:
    if args.action == "get":
        args.out.record(_preferences_record(await client.get_preferences(args.recipient)))
        return
    preferences = []
    if args.enabled is not None:
        preferences.append(notify_pb2.Preference(category=args.category or "", channel=args.channel or "",
                                                 enabled=args.enabled))
    limits = None
    if args.limit is not None or args.no_limit_override:
        if not args.category:
            _usage("prefs set", "--limit and --no-limit-override need --category")
        limits = {args.category: args.limit or (0, 0)}
    if not preferences and limits is None and args.unsubscribed is None:
        _usage("prefs set", "give --on or --off, --unsubscribe-all or --resubscribe-all, or --limit")
    args.out.record(_preferences_record(await client.update_preferences(args.recipient, preferences,
                                                                        args.unsubscribed, limits)))


def _usage(command: str, message: str) -> None:
    print(f"notifymesh {command}: error: {message}", file=sys.stderr)
    raise SystemExit(2)


async def _category(args, client: Client) -> None:
    if args.action in ("create", "update"):
        limit, period = args.limit or (0, 0)
        call = client.create_category if args.action == "create" else client.update_category
        args.out.record(_category_record(await call(args.name, args.description or "", args.mandatory, limit,
                                                    period, args.over_limit)))
    elif args.action == "get":
        args.out.record(_category_record(await client.get_category(args.name)))
    elif args.action == "list":
        for category in await client.list_categories():
            args.out.record(_category_record(category))
    elif args.action == "delete":
        await client.delete_category(args.name)
        args.out.record({"category": args.name, "deleted": True})


async def _template(args, client: Client) -> None:
    if args.action == "create":
        args.out.record(_template_record(await client.create_template(await _new_version(args, client))))
    elif args.action == "get":
        args.out.record(_template_record(await client.get_template(args.name, args.version)))
    elif args.action == "list":
        for template in await client.list_templates():
            args.out.record(_template_record(template))
    elif args.action == "delete":
        await client.delete_template(args.name)
        args.out.record({"template": args.name, "deleted": True})
    elif args.action == "preview":
        channels = [args.channel] if args.channel else list(dict.fromkeys(
            c.channel for c in (await client.get_template(args.name, args.version)).contents))
        for each in channels:
            args.out.record(_rendered_record(await client.preview_template(
                args.name, each, args.data or "{}", args.recipient or "", args.locale or "", args.version)))


async def _new_version(args, client: Client) -> notify_pb2.Template:
    """The latest version's contents, with this channel and locale's replaced (a new
    template: this content alone)."""
    content = notify_pb2.TemplateContent(channel=args.channel, locale=args.locale or "", subject=args.subject or "",
                                         text=args.body_file or "", html=args.html_file or "",
                                         json_body=args.json_file or "")
    try:
        latest = await client.get_template(args.name)
    except NotFound:
        latest = notify_pb2.Template(name=args.name)
    template = notify_pb2.Template(name=args.name, description=latest.description,
                                   default_locale=latest.default_locale)
    if args.description is not None:
        template.description = args.description
    if args.default_locale:
        template.default_locale = args.default_locale
    template.contents.extend(c for c in latest.contents if (c.channel, c.locale) != (content.channel, content.locale))
    template.contents.append(content)
    return template


async def _notify(args, client: Client) -> None:
    recipients = [r for r in (args.to or "").split(",") if r]
    notification_id = await client.notify(
        args.template, args.category, recipients, args.audience or "", args.data or args.data_file or "{}",
        args.channel or (), args.key or "", notify_pb2.Priority.Value(args.priority.upper()), args.version)
    args.out.record({"notification_id": notification_id})


async def _notification(args, client: Client) -> None:
    if args.action == "status":
        header_shown = False
        async for page in client.notification_pages(args.id):
            if not header_shown:
                _header(args, page)
                header_shown = True
            for send in page.sends:
                if args.output == "table":  # a row per step, for people
                    for e in send.timeline:
                        args.out.record({"recipient": send.recipient, "channel": channel_name(send.channel),
                                         "time": e.time.ToJsonString(), "state": _state(e.state),
                                         "detail": " ".join(_event_fields(e).values())})
                else:
                    args.out.record(_send_record(send))
    elif args.action == "list":
        async for page in client.notifications_pages(args.recipient, args.since, args.until):
            for n in page:
                args.out.record({**_header_record(n), "sends": [
                    {"channel": channel_name(s.channel), "state": _state(s.state), **_event_fields(s)}
                    for s in n.sends]})


def _header(args, notification: notify_pb2.Notification) -> None:
    header = _header_record(notification)
    if args.output == "table":
        for key, value in header.items():
            print(f"{key}: {value}")
        print("(no sends yet)" if not notification.sends else "")
    else:
        args.out.record(header)


async def _audience(args, client: Client) -> None:
    if args.action == "create":
        audience = await client.create_audience(args.name, args.description or "")
        args.out.record({"audience": audience.name, "description": audience.description,
                         "create_time": audience.create_time.ToJsonString()})
    elif args.action in ("add", "remove"):
        call = client.add_audience_members if args.action == "add" else client.remove_audience_members
        ids = list(dict.fromkeys(args.recipients))
        for start in range(0, len(ids), MAX_RECIPIENTS_PER_CALL):
            await call(args.name, ids[start:start + MAX_RECIPIENTS_PER_CALL])
        args.out.record({"audience": args.name, "added" if args.action == "add" else "removed": len(ids)})
    elif args.action == "list":
        async for page in client.audience_member_pages(args.name):  # a page at a time: any size
            for rid in page:
                args.out.record({"recipient": rid})
    elif args.action == "delete":
        await client.delete_audience(args.name)
        args.out.record({"audience": args.name, "deleted": True})


async def _provider(args, client: Client) -> None:
    if args.action == "set":
        kind = args.kind or PROVIDER_KINDS.get(channel_name(args.channel), "")
        provider = notify_pb2.Provider(channel=args.channel, kind=kind, settings=dict(args.setting or []),
                                       max_concurrency=args.max_concurrency or 0, name=args.name,
                                       priority=args.priority)
        if args.secret_file is not None:
            provider.secret = args.secret_file.rstrip("\r\n")
        args.out.record(_provider_record(await client.set_provider(provider, keep_secret=args.secret_file is None,
                                                                   previous_secret_ttl_s=args.overlap)))
    elif args.action == "get":
        args.out.record(_provider_record(await client.get_provider(args.channel, args.name)))
    elif args.action == "list":
        for provider in await client.list_providers():
            args.out.record(_provider_record(provider))
    elif args.action == "delete":
        await client.delete_provider(args.channel, args.name)
        args.out.record({"channel": channel_name(args.channel), "name": args.name or "default", "deleted": True})
    elif args.action == "status":
        status = await client.get_provider_status(args.channel or 0)
        for each in status.providers:
            args.out.record(_provider_status_record(each))
        if status.unanswered_senders:
            print(f"senders that did not answer: {', '.join(status.unanswered_senders)}", file=sys.stderr)


async def _stats(args, client: Client) -> None:
    start = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(seconds=args.since)
    stats = await client.get_stats(args.template or "", args.category or "", start)
    record = {"since": stats.start_time.ToJsonString(), "template": args.template or "*",
              "category": args.category or "*"}
    for name in ("queued", "sent", "delivered", "failed", "opened", "clicked", "unsubscribed", "dead_lettered",
                 "suppressed"):
        record[name] = getattr(stats, name)
    for name in ("delivery_rate", "open_rate", "click_rate", "failure_rate"):
        record[name] = round(getattr(stats, name), 4)
    args.out.record(record)


def _device_record(recipient: str, d: notify_pb2.Device) -> dict:
    return {"recipient": recipient, "platform": d.platform, "token": d.token, "app_id": d.app_id,
            "last_seen": d.last_seen.ToJsonString()}


async def _device(args, client: Client) -> None:
    if args.action == "add":
        args.out.record(_device_record(args.recipient, await client.add_device(args.recipient, args.platform,
                                                                               args.token, args.app_id or "")))
    elif args.action == "remove":
        await client.remove_device(args.recipient, args.platform, args.token)
        args.out.record({"recipient": args.recipient, "platform": args.platform, "token": args.token,
                         "removed": True})
    elif args.action == "list":
        for device in await client.list_devices(args.recipient):
            args.out.record(_device_record(args.recipient, device))


def _item_record(recipient: str, item: notify_pb2.InboxItem) -> dict:
    return {"recipient": recipient, "notification": item.notification_id, "title": item.title, "body": item.body,
            "data": item.data, "category": item.category, "create_time": item.create_time.ToJsonString(),
            "read": item.read, "acked": item.acked}


async def _inbox(args, client: Client) -> None:
    if args.action == "list":
        async for page in client.inbox_pages(args.recipient, args.unread):
            for item in page.items:
                args.out.record(_item_record(args.recipient, item))
    elif args.action == "watch":  # until interrupted; each frame acknowledged once printed (at least once)
        async for items in client.subscribe_inbox(args.recipient, args.max_outstanding):
            for item in items:
                args.out.record(_item_record(args.recipient, item))
            args.out.flush()
            if items and not args.no_ack:
                await client.ack_inbox(args.recipient, [item.notification_id for item in items])
    elif args.action == "read":
        marked = await client.mark_read(args.recipient, args.ids)
        args.out.record({"recipient": args.recipient, "marked_read": marked})


async def run(args, client: Client) -> int:
    """Runs one of COMMANDS; the exit code."""
    handler = {"recipient": _recipient, "prefs": _prefs, "category": _category, "template": _template,
               "notify": _notify, "notification": _notification, "audience": _audience,
               "provider": _provider, "stats": _stats, "device": _device, "inbox": _inbox}[args.command]
    return await handler(args, client) or 0


# -- the parser --------------------------------------------------------------------------


def add_commands(commands) -> None:
    _add_recipient_commands(commands)
    _add_category_commands(commands)
    _add_template_commands(commands)
    _add_notify_commands(commands)
    _add_audience_commands(commands)
    _add_provider_commands(commands)
    _add_stats_command(commands)
    _add_device_commands(commands)
    _add_inbox_commands(commands)


def _add_stats_command(commands) -> None:
    stats = commands.add_parser("stats", help="sent, delivered, failed, opened, clicked and their rates, counted "
                                              "from the events stream (notifymesh.events)")
    stats.add_argument("--template", help="one template's (default: every one)")
    stats.add_argument("--category", help="one category's (default: every one)")
    stats.add_argument("--since", type=base.duration, default=3600.0,
                       help="how far back, rounded down to the hour: 1h (default), 24h, 7d; at most 31d")


def _add_device_commands(commands) -> None:
    """device add|remove|list"""
    device = commands.add_parser("device", help="a recipient's mobile devices (the push channel sends to each)")
    actions = device.add_subparsers(dest="action", required=True)
    for action, text in (("add", "add a device token, or refresh one the recipient has"),
                         ("remove", "remove a device token")):
        change = actions.add_parser(action, help=text)
        change.add_argument("recipient", help="the recipient's id")
        change.add_argument("--platform", required=True, choices=PUSH_KINDS, help="apns or fcm")
        change.add_argument("--token", required=True, help="the device (apns) or registration (fcm) token")
        if action == "add":
            change.add_argument("--app-id", help="the app's bundle id or package name")
    actions.add_parser("list", help="the recipient's devices").add_argument("recipient", help="the recipient's id")


def _add_recipient_commands(commands) -> None:
    """recipient set|get|delete|import, prefs set|get"""
    recipient = commands.add_parser("recipient", help="the people notified, by your user id")
    actions = recipient.add_subparsers(dest="action", required=True)
    put = actions.add_parser("set", help="store a recipient (replaces the whole record)")
    put.add_argument("id", help="your user id (1 to 255 bytes)")
    put.add_argument("--email", help="an email address (checked, normalized)")
    put.add_argument("--phone", help="a phone number in E.164, e.g. +14155550100 (checked)")
    put.add_argument("--locale", help="BCP 47, e.g. en or de-CH: templates use its content when they have it")
    put.add_argument("--timezone", help="an IANA name, e.g. Europe/Berlin")
    put.add_argument("--webhook-url", help="where the webhook channel POSTs this recipient's notifications")
    put.add_argument("--attr", type=base.attribute, action="append", metavar="KEY=VALUE",
                     help="an attribute templates can use (repeatable)")
    actions.add_parser("get", help="a stored recipient").add_argument("id", help="the recipient's id")
    actions.add_parser("delete", help="erase the recipient's contact data and preferences everywhere "
                                      "(right to be forgotten)").add_argument("id", help="the recipient's id")
    load = actions.add_parser("import", help="store the recipients of a CSV or JSON-lines file in batches; prints "
                                             "each refused row and a summary (exit 1 when any was refused)")
    load.add_argument("file", help="CSV with a header (id,email,phone,locale,timezone,webhook_url; other columns "
                                   "become attributes) or JSON lines (the same keys, attributes as an object)")
    load.add_argument("--format", choices=("csv", "jsonl"), help="default: jsonl for .jsonl/.ndjson/.json, else csv")
    load.add_argument("--batch", type=base.count(1, MAX_RECIPIENTS_PER_CALL), default=MAX_RECIPIENTS_PER_CALL,
                      help=f"recipients per call (default and most {MAX_RECIPIENTS_PER_CALL})")

    prefs = commands.add_parser("prefs", help="a recipient's opt-ins, opt-outs and rate limits")
    actions = prefs.add_subparsers(dest="action", required=True)
    actions.add_parser("get", help="every preference of a recipient").add_argument("recipient", help="its id")
    put = actions.add_parser("set", help="set one preference (category and channel: all when left out), the "
                                         "global unsubscribe, or a category's rate-limit override")
    put.add_argument("recipient", help="the recipient's id")
    put.add_argument("--category", help="the category (default: every category)")
    put.add_argument("--channel", choices=("email", "sms", "webhook"), help="the channel (default: every channel)")
    switch = put.add_mutually_exclusive_group()
    switch.add_argument("--on", dest="enabled", action="store_true", default=None, help="opt in")
    switch.add_argument("--off", dest="enabled", action="store_false", help="opt out")
    everything = put.add_mutually_exclusive_group()
    everything.add_argument("--unsubscribe-all", dest="unsubscribed", action="store_true", default=None,
                            help="opt out of everything not mandatory")
    everything.add_argument("--resubscribe-all", dest="unsubscribed", action="store_false",
                            help="undo --unsubscribe-all")
    limit = put.add_mutually_exclusive_group()
    limit.add_argument("--limit", type=rate_limit, metavar="N/PERIOD",
                       help="this recipient's limit in --category, e.g. 1/1d")
    limit.add_argument("--no-limit-override", action="store_true", help="the category's limit applies again")


def _add_category_commands(commands) -> None:
    """category create|update|get|list|delete"""
    category = commands.add_parser("category", help="kinds of notification (billing, security...), each with its "
                                                    "rate limit")
    actions = category.add_subparsers(dest="action", required=True)
    for action, text in (("create", "create a category"), ("update", "replace a category's settings")):
        put = actions.add_parser(action, help=text)
        put.add_argument("name", help="the category")
        put.add_argument("--description", help="for people")
        put.add_argument("--limit", type=rate_limit, metavar="N/PERIOD",
                         help="at most N per recipient per period, e.g. 3/1h (default: no limit)")
        put.add_argument("--over-limit", choices=("drop", "delay"), default="drop",
                         help="over the limit: drop (suppressed, the default) or delay until allowed")
        put.add_argument("--mandatory", action="store_true", help="opt-outs do not apply (e.g. security)")
    actions.add_parser("get", help="a category").add_argument("name", help="the category")
    actions.add_parser("list", help="every category")
    actions.add_parser("delete", help="delete a category").add_argument("name", help="the category")


def _add_template_commands(commands) -> None:
    """template create|get|list|delete|preview"""
    template = commands.add_parser("template", help="what notifications say, per channel and locale")
    actions = template.add_subparsers(dest="action", required=True)
    put = actions.add_parser("create", help="add a version: the latest one's contents with this channel and "
                                            "locale's set (a new name starts at version 1)")
    put.add_argument("name", help="the template")
    put.add_argument("--channel", type=channel, required=True, help="email, sms, webhook or push")
    put.add_argument("--locale", help="the content's locale (default: the template's default locale)")
    put.add_argument("--subject", help="email: the subject; push: the title (a template)")
    put.add_argument("--body-file", type=text_file, metavar="FILE", help="email: the text body; sms: the text; "
                                                                         "push: the body ('-': stdin)")
    put.add_argument("--html-file", type=text_file, metavar="FILE", help="email: the HTML body (optional)")
    put.add_argument("--json-file", type=text_file, metavar="FILE", help="webhook: the JSON body; push: the data "
                                                                         "payload, a JSON object (a template)")
    put.add_argument("--default-locale", help="the template's default locale (default en)")
    put.add_argument("--description", help="for people")
    get = actions.add_parser("get", help="a template version")
    get.add_argument("name", help="the template")
    get.add_argument("--version", type=base.count(0), default=0, help="default: the latest")
    actions.add_parser("list", help="the latest version of every template")
    actions.add_parser("delete", help="delete every version").add_argument("name", help="the template")
    preview = actions.add_parser("preview", help="render without sending (each channel it has, or --channel)")
    preview.add_argument("name", help="the template")
    preview.add_argument("--data", type=json_object, help="a JSON object: the template's data")
    preview.add_argument("--recipient", help="a stored recipient whose fields fill `recipient`")
    preview.add_argument("--channel", type=channel, help="email, sms, webhook or push")
    preview.add_argument("--locale", help="default: the recipient's, else the template's default")
    preview.add_argument("--version", type=base.count(0), default=0, help="default: the latest")


def _add_notify_commands(commands) -> None:
    """notify, notification status|list"""
    notify = commands.add_parser("notify", help="notify recipients or an audience; prints the notification id")
    notify.add_argument("template", help="the template")
    to = notify.add_mutually_exclusive_group(required=True)
    to.add_argument("--to", metavar="ID,ID...", help=f"recipient ids, up to {MAX_RECIPIENTS_PER_CALL}")
    to.add_argument("--audience", help="a stored audience")
    notify.add_argument("--category", required=True, help="the category (its opt-outs and rate limit apply)")
    data = notify.add_mutually_exclusive_group()
    data.add_argument("--data", type=json_object, help="a JSON object of at most 64 KiB: the template's data")
    data.add_argument("--data-file", type=text_file, metavar="FILE", help="the data from a file ('-': stdin)")
    notify.add_argument("--channel", type=channel, action="append",
                        help="email, sms, webhook or push (repeatable; default: every channel a recipient has and allows)")
    notify.add_argument("--key", help="idempotency key: a repeat within 24 h notifies nobody again")
    notify.add_argument("--priority", choices=("normal", "high"), default="normal",
                        help="high: sent first, never delayed by a rate limit")
    notify.add_argument("--version", type=base.count(0), default=0, help="the template version (default: latest)")

    notification = commands.add_parser("notification", help="what happened to a notification")
    actions = notification.add_subparsers(dest="action", required=True)
    actions.add_parser("status", help="per recipient and channel: the state and every step with its time"
                       ).add_argument("id", help="the notification id, as notify printed it")
    listing = actions.add_parser("list", help="a recipient's notifications, newest first")
    listing.add_argument("--recipient", required=True, help="the recipient's id")
    listing.add_argument("--since", type=base.instant, help="an ISO 8601 time with its zone (default: the oldest)")
    listing.add_argument("--until", type=base.instant, help="an ISO 8601 time with its zone (default: now)")


def _add_audience_commands(commands) -> None:
    """audience create|add|remove|list|delete"""
    audience = commands.add_parser("audience", help="named sets of recipients")
    actions = audience.add_subparsers(dest="action", required=True)
    create = actions.add_parser("create", help="create an empty audience")
    create.add_argument("name", help="the audience")
    create.add_argument("--description", help="for people")
    for action, text in (("add", "add members (ids need not be recipients yet)"), ("remove", "remove members")):
        change = actions.add_parser(action, help=text)
        change.add_argument("name", help="the audience")
        change.add_argument("recipients", nargs="+", metavar="ID", help="recipient ids")
    actions.add_parser("list", help="the members, by id").add_argument("name", help="the audience")
    actions.add_parser("delete", help="delete the audience and its members").add_argument("name", help="the audience")


def _add_provider_commands(commands) -> None:
    """provider set|get|list|delete|status"""
    provider = commands.add_parser("provider", help="how each channel sends")
    actions = provider.add_subparsers(dest="action", required=True)
    put = actions.add_parser("set", help="configure a channel's provider (secrets are write-only)")
    put.add_argument("channel", type=channel, help="email, sms, webhook or push")
    put.add_argument("--kind", choices=sorted({*PROVIDER_KINDS.values(), *PUSH_KINDS}),
                     help="default: the channel's (email smtp, sms sms_http, webhook webhook, push fcm)")
    put.add_argument("--setting", type=base.attribute, action="append", metavar="KEY=VALUE",
                     help="e.g. host=smtp.example.com, port=587, from=..., base_url=... (repeatable)")
    put.add_argument("--secret-file", type=text_file, metavar="FILE",
                     help="the password or token, read from FILE ('-': stdin), never from the command line; "
                          "without it the stored secret is kept")
    put.add_argument("--overlap", type=base.duration,
                     help="webhook, with a new --secret-file: how long the replaced signing key keeps signing beside "
                          "the new one, e.g. 2h (default 24h; 0: stops at once; at most 7d)")
    put.add_argument("--max-concurrency", type=base.count(1, 1000), help="sends in flight at once (default 32; apns 256)")
    put.add_argument("--name", default="", help="a channel has several providers by name (default: 'default')")
    put.add_argument("--priority", type=base.count(0, 1000), default=0,
                     help="lower is tried first; the next takes over while one's circuit breaker is open")
    get = actions.add_parser("get", help="a channel's provider (without its secret)")
    get.add_argument("channel", type=channel, help="email, sms, webhook or push")
    get.add_argument("--name", default="", help="default: 'default'")
    actions.add_parser("list", help="every provider (without secrets), in the order each channel tries them")
    delete = actions.add_parser("delete", help="remove one of a channel's providers")
    delete.add_argument("channel", type=channel, help="email, sms, webhook or push")
    delete.add_argument("--name", default="", help="default: 'default'")
    status = actions.add_parser("status", help="each provider's circuit breaker and recent error rate, per sender")
    status.add_argument("channel", type=channel, nargs="?", help="default: every channel")


def _add_inbox_commands(commands) -> None:
    """inbox list|watch|read"""
    inbox = commands.add_parser("inbox", help="a recipient's in-app notifications")
    actions = inbox.add_subparsers(dest="action", required=True)
    listing = actions.add_parser("list", help="the items, newest first")
    listing.add_argument("recipient", help="the recipient's id")
    listing.add_argument("--unread", action="store_true", help="only the unread ones")
    watch = actions.add_parser("watch", help="stream the unacknowledged items, then new ones as they come")
    watch.add_argument("recipient", help="the recipient's id")
    watch.add_argument("--max-outstanding", type=base.count(1, 1000), default=0,
                       help="unacknowledged items in flight at most (default 100)")
    watch.add_argument("--no-ack", action="store_true", help="print without acknowledging (they come again)")
    read = actions.add_parser("read", help="mark items read")
    read.add_argument("recipient", help="the recipient's id")
    read.add_argument("ids", nargs="+", metavar="NID", help="notification ids")
