"""The public Notifications service: a thin servicer over Notifications, the plain
class that does the work.

- Recipients, preferences and audiences are rows of the replicated table
  (notifymesh.server.rows; a recipient's rows under its id, an audience's under
  its name).
- Categories, templates and providers are metadata's (etcd): passed to it, and
  looked up in the local mirror where a request needs one. Provider secrets never
  come back: a provider read back says secret_set instead.
- Notify checks the request and publishes it, as a NotificationJob, to the notify
  topic through the gateway's publish path: the message id is the notification id,
  and the request's idempotency key the message's, so a repeat gets the first id.
- The notification log is read through notification_log; before the fan-out has
  written a notification's header, the job read back from the notify topic stands in.
"""

import asyncio
import base64
import binascii
import json
import logging
from typing import Callable, Protocol

from gen.notifymesh.internal.v1 import notify_pb2 as internal_pb2
from gen.notifymesh.internal.v1 import storage_pb2
from gen.notifymesh.v1 import notify_pb2, notify_pb2_grpc, pubsub_pb2
from notifymesh import errors
from notifymesh.clock import now_ms, to_ms
from notifymesh.log import fields
from notifymesh.server import devices, egress, internal_topics, rows, tracing, validation

log = logging.getLogger(__name__)

MAX_RECIPIENTS = 1000  # per UpsertRecipients, Notify, audience change
MAX_DATA_BYTES = 64 * 1024
MAX_DATA_DEPTH = 32  # nested objects and arrays in data: templates and the sender walk it recursively
MAX_PREFERENCES = 1000  # preferences and rate limits in one UpdatePreferences
SCAN_PAGE = 1000  # rows per table scan: what one step of a listing or a deletion holds
MEMBERS_PAGE, NOTIFICATION_SENDS_PAGE = 1000, 1000
NOTIFICATIONS_PAGE, MAX_NOTIFICATIONS_PAGE = 100, 1000
CHANNEL_NAMES = frozenset(internal_topics.channel_name(c) for c in internal_topics.CHANNELS)


class Scanned(Protocol):
    """A page of a table scan (notifymesh.server.table.Scanned)."""

    keys: list[bytes]
    values: list[bytes]
    more: bool


class Table(Protocol):
    """What this asks of the replicated table (notifymesh.server.table.TableClient)."""

    async def write(self, partition_key: str, ops: list[storage_pb2.TableOp]) -> None: ...

    async def write_many(self, ops_by_partition_key: dict[str, list[storage_pb2.TableOp]]) -> None: ...

    async def read(self, partition_key: str, keys: list[bytes]) -> list[bytes | None]: ...

    async def scan(self, partition_key: str, prefix: bytes, start_after: bytes = b"", limit: int = 1000,
                   reverse: bool = False) -> Scanned: ...


class Metadata(Protocol):
    """Metadata.<method> on any live metadata service (the gateway's admin path)."""

    async def admin(self, method: str, request): ...


class Catalog(Protocol):
    """Categories and templates as the local mirror of etcd has them
    (notifymesh.server.cluster.Cluster); NotFound for one that does not exist."""

    async def category(self, name: str) -> notify_pb2.Category: ...

    async def template(self, name: str, version: int = 0) -> notify_pb2.Template: ...


class Mesh(Protocol):
    """The gateway's publish path and message lookup (frontend.gateway.Gateway)."""

    async def publish(self, topic: str, messages) -> list[str]: ...

    async def message_status(self, message_id: str) -> pubsub_pb2.MessageStatus: ...

    async def provider_status(self, channel: int) -> notify_pb2.GetProviderStatusResponse: ...


class NotificationLog(Protocol):
    """The reader of the log (notifymesh.server.notification_log.NotificationLog).
    notification(): None (or NotFound) while the notification's header is not written."""

    async def notification(self, notification_id: str, page_size: int,
                           page_token: str) -> notify_pb2.Notification | None: ...

    async def by_recipient(self, recipient: str, start_ms: int, end_ms: int, page_size: int,
                           page_token: str) -> notify_pb2.ListNotificationsResponse: ...


class Renderer(Protocol):
    """notifymesh.server.templating.Renderer: one channel's content of a template."""

    def render(self, template: notify_pb2.Template, channel: int, locale: str,
               context: dict) -> notify_pb2.RenderedContent: ...


class ErasureHook(Protocol):
    """frontend.erasure_hook.ErasureHook: tells the providers' side of an erasure."""

    async def erased(self, recipient: str, addresses: list[str]) -> bool: ...


class NoErasureHook:
    async def erased(self, recipient: str, addresses: list[str]) -> bool:
        return True


# The names a template sees (notifymesh.server.templating.context):
# (recipient, data, notification id, category) -> context.
ContextOf = Callable[[notify_pb2.Recipient, dict, str, str], dict]


def _put(key: bytes, value: bytes) -> storage_pb2.TableOp:
    return storage_pb2.TableOp(key=key, value=value)


def _delete(key: bytes) -> storage_pb2.TableOp:
    return storage_pb2.TableOp(key=key, delete=True)


def _erase(key: bytes) -> storage_pb2.TableOp:
    return storage_pb2.TableOp(key=key, erase=True)


def _channel(channel: int) -> int:
    if channel not in internal_topics.CHANNELS:
        raise errors.InvalidArgument(f"channel {channel}: one of "
                                     f"{', '.join(sorted(n.upper() for n in CHANNEL_NAMES))}")
    return channel


def _data(text: str) -> dict:
    """A request's data: a JSON object of at most 64 KiB ("" stands for {})."""
    size = len(text.encode())
    if size > MAX_DATA_BYTES:
        raise errors.InvalidArgument(f"data is {size} bytes; at most {MAX_DATA_BYTES}")
    try:
        data = json.loads(text or "{}", parse_constant=validation.not_json)
    except ValueError as e:
        raise errors.InvalidArgument(f"data is not JSON: {e}") from None
    except RecursionError:  # nested past the parser's stack
        raise errors.InvalidArgument(f"data nests objects and arrays over {MAX_DATA_DEPTH} deep") from None
    if _depth(data) > MAX_DATA_DEPTH:
        raise errors.InvalidArgument(f"data nests objects and arrays over {MAX_DATA_DEPTH} deep")
    if not isinstance(data, dict):
        raise errors.InvalidArgument(f"data must be a JSON object, not {type(data).__name__}")
    return data


def _depth(value) -> int:
    """How deep objects and arrays nest in a parsed JSON value (without recursion)."""
    deepest, level = 0, [(value, 1)]
    while level:
        item, depth = level.pop()
        if isinstance(item, (dict, list)):
            deepest = max(deepest, depth)
            level.extend((child, depth + 1) for child in (item.values() if isinstance(item, dict) else item))
    return deepest


def _recipient_ids(ids, what: str = "recipients") -> list[str]:
    if not 1 <= len(ids) <= MAX_RECIPIENTS:
        raise errors.InvalidArgument(f"{len(ids)} {what}; 1 to {MAX_RECIPIENTS} in one request")
    return [validation.recipient_id(rid) for rid in ids]


def _without_secret(provider: notify_pb2.Provider) -> notify_pb2.Provider:
    shown = notify_pb2.Provider()
    shown.CopyFrom(provider)
    shown.secret_set = provider.secret_set or bool(provider.secret)
    shown.secret = shown.previous_secret = ""
    if shown.previous_secret_expire_time.ToMilliseconds() <= now_ms():  # no previous key signs any more
        shown.ClearField("previous_secret_expire_time")
    return shown


def _members_token(audience: str, after: str) -> str:
    return base64.urlsafe_b64encode(f"{audience}\0{after}".encode()).decode()


def _members_after(audience: str, token: str) -> str:
    """The member a page token of ListAudienceMembers resumes after ("" for none)."""
    if not token:
        return ""
    try:
        named, sep, after = base64.urlsafe_b64decode(token.encode()).decode().partition("\0")
    except (binascii.Error, UnicodeDecodeError, ValueError):
        named, sep, after = "", "", ""
    if not sep or named != audience:
        raise errors.InvalidArgument(f"page token {token[:40]!r} is not one of audience {audience!r}")
    return after


class Notifications:
    def __init__(self, table: Table, metadata: Metadata, catalog: Catalog, mesh: Mesh,
                 notification_log: NotificationLog, renderer: Renderer, context_of: ContextOf,
                 erasure_hook: ErasureHook = NoErasureHook(), allowed: egress.Allowed = lambda: ()):
        """allowed(): the non-public networks a recipient's webhook_url may be in (egress.py)."""
        self._table, self._metadata, self._catalog, self._mesh = table, metadata, catalog, mesh
        self._log, self._renderer, self._context_of = notification_log, renderer, context_of
        self._erasure_hook, self._allowed = erasure_hook, allowed
        self._devices = devices.Devices(table)

    # -- recipients -------------------------------------------------------------

    def _contact_op(self, recipient: notify_pb2.Recipient) -> storage_pb2.TableOp:
        recipient.update_time.FromMilliseconds(now_ms())
        return _put(rows.contact_key(recipient.id), recipient.SerializeToString())

    async def _checked(self, given: notify_pb2.Recipient) -> notify_pb2.Recipient:
        """validation.recipient, and its webhook URL not at a forbidden address (egress.py)."""
        recipient = validation.recipient(given)
        if recipient.webhook_url:
            await egress.check_url("webhook_url", recipient.webhook_url, self._allowed())
        return recipient

    async def upsert_recipient(self, request: notify_pb2.UpsertRecipientRequest) -> notify_pb2.Recipient:
        recipient = await self._checked(request.recipient)
        await self._table.write(recipient.id, [self._contact_op(recipient)])
        return recipient

    async def upsert_recipients(self, request: notify_pb2.UpsertRecipientsRequest
                                ) -> notify_pb2.UpsertRecipientsResponse:
        """Each checked on its own; the valid ones stored in one write (per partition)."""
        if len(request.recipients) > MAX_RECIPIENTS:
            raise errors.InvalidArgument(f"{len(request.recipients)} recipients; at most {MAX_RECIPIENTS} in one call")
        response = notify_pb2.UpsertRecipientsResponse()
        ops: dict[str, list[storage_pb2.TableOp]] = {}
        checked = await asyncio.gather(*map(self._checked, request.recipients), return_exceptions=True)
        for index, (given, recipient) in enumerate(zip(request.recipients, checked)):
            if isinstance(recipient, errors.InvalidArgument):
                response.errors.add(index=index, id=given.id[:255], reason=recipient.details)
                continue
            if isinstance(recipient, BaseException):
                raise recipient
            ops.setdefault(recipient.id, []).append(self._contact_op(recipient))
            response.stored += 1
        if ops:
            await self._table.write_many(ops)
        return response

    async def _contact(self, rid: str) -> notify_pb2.Recipient:
        validation.recipient_id(rid)
        [value] = await self._table.read(rid, [rows.contact_key(rid)])
        if value is None:
            raise errors.NotFound(f"recipient {rid!r} not found")
        return notify_pb2.Recipient.FromString(value)

    async def get_recipient(self, request: notify_pb2.GetRecipientRequest) -> notify_pb2.Recipient:
        return await self._contact(request.id)

    async def _rows(self, partition_key: str, prefix: bytes) -> list[tuple[bytes, bytes]]:
        """Every row under prefix, a scan page at a time: a recipient's preference or
        override rows (categories x channels of them, so few)."""
        found, after = [], b""
        while True:
            page = await self._table.scan(partition_key, prefix, start_after=after, limit=SCAN_PAGE)
            found.extend(zip(page.keys, page.values))
            if not page.more or not page.keys:
                return found
            after = page.keys[-1]

    async def delete_recipient(self, request: notify_pb2.DeleteRecipientRequest) -> notify_pb2.DeleteRecipientResponse:
        """Erases the contact, unsubscribe, preference and override rows (an erase
        compacts the old values out of every replica's files) and writes the X row:
        the erasure's own record; then tells the erasure hook the addresses it had.
        Idempotent: erasing again erases nothing more."""
        rid = validation.recipient_id(request.id)
        [contact] = await self._table.read(rid, [rows.contact_key(rid)])
        addresses = []
        if contact is not None:
            recipient = notify_pb2.Recipient.FromString(contact)
            addresses = [a for a in (recipient.email, recipient.phone) if a]
        found = [*await self._rows(rid, rows.preferences_prefix(rid)),
                 *await self._rows(rid, rows.rate_limits_prefix(rid)),
                 *await self._rows(rid, rows.devices_prefix(rid))]
        # Device tokens identify the person too: the hook hears of them as of addresses.
        addresses += [notify_pb2.Device.FromString(value).token for key, value in found
                      if key.startswith(rows.devices_prefix(rid))]
        for kind in (rows.INBOX_ITEM, rows.INBOX_UNACKED, rows.INBOX_UNREAD):  # rendered with their data
            found += await self._rows(rid, rows.inbox_prefix(kind, rid))
        erased = [*rows.recipient_rows_erased(rid), *(key for key, _ in found)]
        ms = now_ms()
        await self._table.write(rid, [*map(_erase, erased), _put(rows.erased_key(rid), f"{ms:013d}".encode())])
        told = await self._erasure_hook.erased(rid, addresses)
        log.info("recipient erased", extra=fields(recipient=rid, rows=len(erased), erased_ms=ms, hook_told=told))
        return notify_pb2.DeleteRecipientResponse()

    # -- devices ------------------------------------------------------------------

    async def add_device(self, request: notify_pb2.AddDeviceRequest) -> notify_pb2.Device:
        rid = validation.recipient_id(request.recipient)
        devices.check(request.device)  # bad input first, before the recipient is looked up
        await self._contact(rid)
        return await self._devices.add(rid, request.device)

    async def remove_device(self, request: notify_pb2.RemoveDeviceRequest) -> notify_pb2.RemoveDeviceResponse:
        rid = validation.recipient_id(request.recipient)
        platform = devices.platform(request.platform)
        if not await self._devices.remove(rid, platform, devices.token(platform, request.token)):
            raise errors.NotFound(f"recipient {rid!r} has no {platform} device with that token")
        return notify_pb2.RemoveDeviceResponse()

    async def list_devices(self, request: notify_pb2.ListDevicesRequest) -> notify_pb2.ListDevicesResponse:
        rid = validation.recipient_id(request.recipient)
        return notify_pb2.ListDevicesResponse(devices=await self._devices.list(rid))

    # -- preferences -------------------------------------------------------------

    async def get_preferences(self, request: notify_pb2.GetPreferencesRequest) -> notify_pb2.Preferences:
        return await self._preferences(validation.recipient_id(request.recipient))

    async def _preferences(self, rid: str) -> notify_pb2.Preferences:
        [unsubscribed] = await self._table.read(rid, [rows.unsubscribed_key(rid)])
        preferences = notify_pb2.Preferences(recipient=rid, unsubscribed=unsubscribed is not None and not (
            internal_pb2.PreferenceRow.FromString(unsubscribed).enabled))
        for key, value in await self._rows(rid, rows.preferences_prefix(rid)):
            parsed = rows.parse_preference_key(key)
            preferences.preferences.add(category=parsed.category, channel=parsed.channel,
                                        enabled=internal_pb2.PreferenceRow.FromString(value).enabled)
        for key, value in await self._rows(rid, rows.rate_limits_prefix(rid)):
            preferences.rate_limits.add(category=rows.parse_rate_limit_key(key)[1],
                                        rate_limit=internal_pb2.RateLimitRow.FromString(value).rate_limit)
        return preferences

    async def _known_category(self, name: str) -> None:
        if not name:
            raise errors.InvalidArgument("a rate limit override names its category")
        await self._catalog.category(name)

    async def update_preferences(self, request: notify_pb2.UpdatePreferencesRequest) -> notify_pb2.Preferences:
        """Writes the rows given, and only those: each is a whole row (category,
        channel) or (category), so nothing is read first."""
        rid = validation.recipient_id(request.recipient)
        given = len(request.preferences) + len(request.rate_limits)
        if given > MAX_PREFERENCES:
            raise errors.InvalidArgument(f"{given} preferences and rate limits; at most {MAX_PREFERENCES} in one call")
        ops = []
        for preference in request.preferences:
            if preference.category:
                await self._catalog.category(preference.category)
            if preference.channel and preference.channel not in CHANNEL_NAMES:
                raise errors.InvalidArgument(f"unknown channel {preference.channel[:40]!r}: one of "
                                             f"{', '.join(sorted(CHANNEL_NAMES))} (empty: every channel)")
            ops.append(_put(rows.preference_key(rid, preference.category, preference.channel),
                            internal_pb2.PreferenceRow(enabled=preference.enabled).SerializeToString()))
        for override in request.rate_limits:
            await self._known_category(override.category)
            limit = override.rate_limit
            key = rows.rate_limit_key(rid, override.category)
            if limit.limit == 0 and limit.period_seconds == 0:
                ops.append(_delete(key))
                continue
            if limit.limit < 0 or limit.period_seconds <= 0:
                raise errors.InvalidArgument(f"rate limit of {override.category!r}: a limit of 0 or more per a period "
                                             "of at least 1 s (0 per 0 s removes the override)")
            ops.append(_put(key, internal_pb2.RateLimitRow(rate_limit=limit).SerializeToString()))
        if request.HasField("unsubscribed"):
            ops.append(_put(rows.unsubscribed_key(rid),
                            internal_pb2.PreferenceRow(enabled=not request.unsubscribed).SerializeToString()))
        if ops:
            await self._table.write(rid, ops)
        return await self._preferences(rid)

    # -- categories, templates, providers: metadata's -----------------------------

    async def admin(self, method: str, request):
        """Metadata.<method>, which checks and keeps the record."""
        return await self._metadata.admin(method, request)

    async def provider(self, method: str, request) -> notify_pb2.Provider:
        return _without_secret(await self._metadata.admin(method, request))

    async def list_providers(self, request: notify_pb2.ListProvidersRequest) -> notify_pb2.ListProvidersResponse:
        listed = await self._metadata.admin("ListProviders", request)
        return notify_pb2.ListProvidersResponse(providers=[_without_secret(p) for p in listed.providers])

    async def provider_status(self, request: notify_pb2.GetProviderStatusRequest) -> notify_pb2.GetProviderStatusResponse:
        if request.channel:
            _channel(request.channel)
        return await self._mesh.provider_status(request.channel)

    async def preview_template(self, request: notify_pb2.PreviewTemplateRequest) -> notify_pb2.RenderedContent:
        channel = _channel(request.channel)
        data = _data(request.data)
        if request.locale:
            validation.locale(request.locale)
        template = await self._catalog.template(request.name, request.version)
        recipient = (await self._contact(request.recipient) if request.recipient
                     else notify_pb2.Recipient())
        return self._renderer.render(template, channel, request.locale or recipient.locale,
                                     self._context_of(recipient, data, "", ""))

    # -- audiences ----------------------------------------------------------------

    async def _audience(self, name: str) -> notify_pb2.Audience:
        validation.name("audience", name)
        [value] = await self._table.read(name, [rows.audience_key(name)])
        if value is None:
            raise errors.NotFound(f"audience {name!r} not found")
        return notify_pb2.Audience.FromString(value)

    async def create_audience(self, request: notify_pb2.CreateAudienceRequest) -> notify_pb2.Audience:
        audience = notify_pb2.Audience(name=validation.name("audience", request.audience.name),
                                       description=validation.description(request.audience.description))
        [existing] = await self._table.read(audience.name, [rows.audience_key(audience.name)])
        if existing is not None:
            raise errors.AlreadyExists(f"audience {audience.name!r} already exists")
        audience.create_time.FromMilliseconds(now_ms())
        await self._table.write(audience.name, [_put(rows.audience_key(audience.name), audience.SerializeToString())])
        return audience

    async def get_audience(self, request: notify_pb2.GetAudienceRequest) -> notify_pb2.Audience:
        return await self._audience(request.name)

    async def change_members(self, request: notify_pb2.AudienceMembersRequest,
                             add: bool) -> notify_pb2.AudienceMembersResponse:
        ids = _recipient_ids(request.recipients)
        await self._audience(request.audience)
        keys = [rows.member_key(request.audience, rid) for rid in ids]
        await self._table.write(request.audience, [_put(k, b"") if add else _delete(k) for k in keys])
        return notify_pb2.AudienceMembersResponse()

    async def list_audience_members(self, request: notify_pb2.ListAudienceMembersRequest
                                    ) -> notify_pb2.ListAudienceMembersResponse:
        size = validation.page_size(request.page_size, MEMBERS_PAGE, MEMBERS_PAGE)
        after = _members_after(request.audience, request.page_token)
        await self._audience(request.audience)
        page = await self._table.scan(request.audience, rows.members_prefix(request.audience),
                                      start_after=rows.member_key(request.audience, after) if after else b"",
                                      limit=size)
        members = [rows.parse_member_key(key)[1] for key in page.keys]
        return notify_pb2.ListAudienceMembersResponse(
            recipients=members, next_page_token=_members_token(request.audience, members[-1])
            if page.more and members else "")

    async def delete_audience(self, request: notify_pb2.DeleteAudienceRequest) -> notify_pb2.DeleteAudienceResponse:
        """The members first, a scan page at a time, then the audience: a deletion
        cut short leaves the audience in place, and deleting it again finishes."""
        name = request.name
        await self._audience(name)
        after = b""
        while True:
            page = await self._table.scan(name, rows.members_prefix(name), start_after=after, limit=SCAN_PAGE)
            if page.keys:
                await self._table.write(name, [_delete(key) for key in page.keys])
                after = page.keys[-1]
            if not page.more or not page.keys:
                break
        await self._table.write(name, [_delete(rows.audience_key(name))])
        return notify_pb2.DeleteAudienceResponse()

    # -- notify -------------------------------------------------------------------

    async def notify(self, request: notify_pb2.NotifyRequest) -> notify_pb2.NotifyResponse:
        """Checks what the fan-out needs (design step 1), then publishes the job."""
        if bool(request.recipients) == bool(request.audience):
            raise errors.InvalidArgument("name recipients or an audience (one of them)")
        if request.recipients:
            _recipient_ids(request.recipients)
        _data(request.data)
        channels = [_channel(c) for c in request.channels]
        if request.priority not in notify_pb2.Priority.values():
            raise errors.InvalidArgument(f"priority {request.priority}: NORMAL or HIGH")
        if len(request.idempotency_key.encode()) > validation.MAX_IDEMPOTENCY_KEY_BYTES:
            raise errors.InvalidArgument(f"idempotency key over {validation.MAX_IDEMPOTENCY_KEY_BYTES} bytes")
        if not request.category:
            raise errors.InvalidArgument("a notification names its category")
        if not request.template:
            raise errors.InvalidArgument("a notification names its template")
        template = await self._catalog.template(request.template, request.template_version)
        await self._catalog.category(request.category)
        if request.audience:
            await self._audience(request.audience)
        has = {content.channel for content in template.contents}
        if not has.intersection(channels or internal_topics.CHANNELS):
            wanted = ", ".join(internal_topics.channel_name(c) for c in channels) if channels else "any channel"
            raise errors.InvalidArgument(f"template {template.name!r} version {template.version} has no content "
                                         f"for {wanted}")
        job = internal_pb2.NotificationJob(request=request, template_version=template.version, accepted_ms=now_ms())
        message = pubsub_pb2.PubsubMessage(data=job.SerializeToString(), idempotency_key=request.idempotency_key)
        [notification_id] = await self._mesh.publish(internal_topics.NOTIFY_TOPIC, [message])
        return notify_pb2.NotifyResponse(notification_id=notification_id)

    # -- the notification log -----------------------------------------------------

    async def get_notification(self, request: notify_pb2.GetNotificationRequest) -> notify_pb2.Notification:
        if not request.id:
            raise errors.InvalidArgument("a notification id is required")
        size = validation.page_size(request.page_size, NOTIFICATION_SENDS_PAGE, NOTIFICATION_SENDS_PAGE)
        try:
            notification = await self._log.notification(request.id, size, request.page_token)
        except errors.NotFound:
            notification = None
        if notification is not None:
            return notification
        return await self._accepted(request.id)

    async def _accepted(self, notification_id: str) -> notify_pb2.Notification:
        """A notification the fan-out has not taken up yet: its job, as the notify
        topic keeps it, with no sends."""
        missing = errors.NotFound(f"notification {notification_id!r} not found")
        try:
            status = await self._mesh.message_status(notification_id)
        except (errors.NotFound, errors.InvalidArgument):
            raise missing from None
        if status.topic != internal_topics.NOTIFY_TOPIC:
            raise missing
        job = internal_pb2.NotificationJob.FromString(status.message.data)
        notification = notify_pb2.Notification(
            id=notification_id, template=job.request.template, template_version=job.template_version,
            category=job.request.category, priority=job.request.priority,
            recipient_count=len(job.request.recipients), audience=job.request.audience, trace_id=status.trace_id)
        notification.create_time.FromMilliseconds(job.accepted_ms)
        return notification

    async def list_notifications(self, request: notify_pb2.ListNotificationsRequest
                                 ) -> notify_pb2.ListNotificationsResponse:
        rid = validation.recipient_id(request.recipient)
        size = validation.page_size(request.page_size, NOTIFICATIONS_PAGE, MAX_NOTIFICATIONS_PAGE)
        start_ms = to_ms(request.start_time) if request.HasField("start_time") else 0
        end_ms = to_ms(request.end_time) if request.HasField("end_time") else now_ms()
        if end_ms < start_ms:
            raise errors.InvalidArgument("end_time is before start_time")
        return await self._log.by_recipient(rid, start_ms, end_ms, size, request.page_token)


class NotificationsServicer(notify_pb2_grpc.NotificationsServicer):
    def __init__(self, notifications: Notifications, inbox):
        """inbox: frontend.inbox.FrontendInbox (the in-app calls)."""
        self._n, self._inbox = notifications, inbox

    async def UpsertRecipient(self, request, context):
        return await self._n.upsert_recipient(request)

    async def UpsertRecipients(self, request, context):
        return await self._n.upsert_recipients(request)

    async def GetRecipient(self, request, context):
        return await self._n.get_recipient(request)

    async def DeleteRecipient(self, request, context):
        return await self._n.delete_recipient(request)

    async def GetPreferences(self, request, context):
        return await self._n.get_preferences(request)

    async def UpdatePreferences(self, request, context):
        return await self._n.update_preferences(request)

    async def CreateCategory(self, request, context):
        return await self._n.admin("CreateCategory", request)

    async def GetCategory(self, request, context):
        return await self._n.admin("GetCategory", request)

    async def ListCategories(self, request, context):
        return await self._n.admin("ListCategories", request)

    async def UpdateCategory(self, request, context):
        return await self._n.admin("UpdateCategory", request)

    async def DeleteCategory(self, request, context):
        return await self._n.admin("DeleteCategory", request)

    async def CreateTemplate(self, request, context):
        return await self._n.admin("CreateTemplate", request)

    async def GetTemplate(self, request, context):
        return await self._n.admin("GetTemplate", request)

    async def ListTemplates(self, request, context):
        return await self._n.admin("ListTemplates", request)

    async def DeleteTemplate(self, request, context):
        return await self._n.admin("DeleteTemplate", request)

    async def PreviewTemplate(self, request, context):
        return await self._n.preview_template(request)

    async def CreateAudience(self, request, context):
        return await self._n.create_audience(request)

    async def GetAudience(self, request, context):
        return await self._n.get_audience(request)

    async def DeleteAudience(self, request, context):
        return await self._n.delete_audience(request)

    async def AddAudienceMembers(self, request, context):
        return await self._n.change_members(request, add=True)

    async def RemoveAudienceMembers(self, request, context):
        return await self._n.change_members(request, add=False)

    async def ListAudienceMembers(self, request, context):
        return await self._n.list_audience_members(request)

    async def SetProvider(self, request, context):
        return await self._n.provider("SetProvider", request)

    async def GetProvider(self, request, context):
        return await self._n.provider("GetProvider", request)

    async def ListProviders(self, request, context):
        return await self._n.list_providers(request)

    async def DeleteProvider(self, request, context):
        return await self._n.admin("DeleteProvider", request)

    async def GetProviderStatus(self, request, context):
        return await self._n.provider_status(request)

    async def Notify(self, request, context):
        with tracing.notify_span(context, request.template):
            return await self._n.notify(request)

    async def GetNotification(self, request, context):
        return await self._n.get_notification(request)

    async def ListNotifications(self, request, context):
        return await self._n.list_notifications(request)

    async def AddDevice(self, request, context):
        return await self._n.add_device(request)

    async def RemoveDevice(self, request, context):
        return await self._n.remove_device(request)

    async def ListDevices(self, request, context):
        return await self._n.list_devices(request)

    async def SubscribeInbox(self, request, context):
        async for frame in self._inbox.subscribe(request):
            yield frame

    async def AckInbox(self, request, context):
        return await self._inbox.ack(request)

    async def MarkRead(self, request, context):
        return await self._inbox.mark_read(request)

    async def ListInbox(self, request, context):
        return await self._inbox.list(request)
