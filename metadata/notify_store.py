"""The notification layer's cluster metadata in etcd: categories, templates (a key
per version) and providers (with their secrets). Every process mirrors them
(Cluster.categories, .templates, .providers); only this service writes them.

Internal: Get and List return provider secrets (senders need them); the public
frontend strips them.
"""

import asyncio
import logging
import re
import urllib.parse

from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import load_pem_private_key

from gen.notifymesh.v1 import notify_pb2
from notifymesh import errors
from notifymesh.clock import now_ms, timestamp
from notifymesh.contracts import CATEGORIES, PROVIDERS, TEMPLATES, template_version_name, template_versions_prefix
from notifymesh.log import fields
from notifymesh.server import egress, sealing, templating, validation
from notifymesh.server.cluster import Cluster
from notifymesh.server.config import MAX_RATE_LIMIT, MAX_RATE_PERIOD_S
from notifymesh.server.internal_topics import CHANNELS, channel_name
from metadata.store import DEFAULT_PREVIOUS_SECRET_TTL_S, MAX_PREVIOUS_SECRET_TTL_S

log = logging.getLogger(__name__)

WRITE_TRIES = 3  # a write retries when another changed the record between its read and its transaction
MAX_DESCRIPTION_BYTES = 1024
# Categories and templates are listed whole and mirrored by every process: their
# counts and sizes are bounded so a listing fits a gRPC message (64 MiB) and the
# mirrors stay small.
MAX_CATEGORIES = 1000
MAX_TEMPLATES = 500
KEEP_VERSIONS = 20  # a template's latest versions kept; a create deletes older ones
MAX_FIELD_BYTES = 64 * 1024  # one subject, text, html or json_body
MAX_TEMPLATE_BYTES = 128 * 1024  # one version, every content together
MAX_CONTENTS = 100
LOCALE = re.compile(r"[A-Za-z]{2,8}([-_][A-Za-z0-9]{1,8})*")
DEFAULT_LOCALE = "en"
# What each channel's content has, and must have.
REQUIRED_FIELDS = {notify_pb2.EMAIL: ("subject", "text"), notify_pb2.SMS: ("text",),
                   notify_pb2.WEBHOOK: ("json_body",), notify_pb2.PUSH: ("text",),
                   notify_pb2.IN_APP: ("text",)}
# Providers: the kind each channel takes, the settings each kind knows (required first).
PROVIDER_KINDS = {notify_pb2.EMAIL: "smtp", notify_pb2.SMS: "sms_http", notify_pb2.WEBHOOK: "webhook"}
PUSH_KINDS = ("fcm", "apns")  # the push channel's: each sends to the devices of its platform
SINK = "sink"  # any channel's: accepts at once and sends nothing (load tests, dry runs)
REQUIRED_SETTINGS = {"smtp": ("host", "port", "from"), "sms_http": ("base_url", "account", "from"), "webhook": (),
                     SINK: (), "fcm": ("project_id", "client_email"), "apns": ("key_id", "team_id", "topic")}
OPTIONAL_SETTINGS = {"smtp": ("starttls", "use_tls", "username", "timeout_seconds"),
                     "sms_http": ("timeout_seconds",), "webhook": ("timeout_seconds",), SINK: (),
                     "fcm": ("token_url", "base_url", "timeout_seconds"), "apns": ("base_url", "timeout_seconds")}
SECRET_REQUIRED = {"fcm": "the service account's private key (PEM)", "apns": "the .p8 signing key (PEM)"}
MAX_SETTING_BYTES = 1024
MAX_SECRET_BYTES = 4096
DEFAULT_MAX_CONCURRENCY, MAX_CONCURRENCY = 32, 1000
# An APNs provider's sends are streams of one HTTP/2 connection (APNs takes up to
# 1,000 on one), not connections: at 32 in flight a push send cost the mesh
# 2.1-2.6 ms of CPU, at 256 and at 1,000 1.6 ms, storage's rounds carrying more
# rows each (bench/notify.py --mode push, docs/benchmarks.md 2026-12-01).
DEFAULT_MAX_CONCURRENCY_OF_KIND = {"apns": 256}
# Several providers per channel, tried by priority (lowest first) where a circuit
# breaker passes one over: a handful is what failover needs; each is an adapter
# (connections, a breaker) in every sender.
MAX_PROVIDERS_PER_CHANNEL = 10
MAX_PRIORITY = 1000
DEFAULT_PROVIDER = "default"  # the name of a provider set without one


def provider_key(channel: int, name: str) -> bytes:
    """providers/<channel>/<name>. Before providers had names a channel had one, at
    providers/<channel> (legacy_provider_key): read as "default", replaced by the
    next write of "default"."""
    return PROVIDERS + f"{channel_name(channel)}/{name}".encode()


def legacy_provider_key(channel: int) -> bytes:
    return PROVIDERS + channel_name(channel).encode()


def _named(record: notify_pb2.Provider) -> notify_pb2.Provider:
    record.name = record.name or DEFAULT_PROVIDER
    return record


def _bytes_at_most(what: str, text: str, most: int) -> None:
    if len(text.encode()) > most:
        raise errors.InvalidArgument(f"{what} is {len(text.encode()):,} bytes; at most {most:,}")


def _channel(channel: int, what: str) -> str:
    if channel not in CHANNELS:
        raise errors.InvalidArgument(f"{what}: unknown channel {channel}; the channels: "
                                     f"{', '.join(channel_name(c) for c in CHANNELS)}")
    return channel_name(channel)


def _locale(what: str, locale: str) -> str:
    if not LOCALE.fullmatch(locale):
        raise errors.InvalidArgument(f"{what} {locale!r} is not a locale such as 'en' or 'de-CH'")
    return locale


def check_category(category: notify_pb2.Category) -> notify_pb2.Category:
    """A copy to store: checked, the policy explicit, a period without a limit dropped."""
    record = notify_pb2.Category()
    record.CopyFrom(category)
    validation.name("category", record.name)
    _bytes_at_most("description", record.description, MAX_DESCRIPTION_BYTES)
    limit, period = record.rate_limit.limit, record.rate_limit.period_seconds
    validation.count_between("rate limit", limit, 0, MAX_RATE_LIMIT)
    if limit:
        if not 1 <= period <= MAX_RATE_PERIOD_S:
            raise errors.InvalidArgument(f"rate limit period {period}s out of range: 1s to "
                                         f"{MAX_RATE_PERIOD_S:,.0f}s (30 days)")
    else:
        record.ClearField("rate_limit")  # 0: no limit, whatever the period
    if record.over_limit not in notify_pb2.OverLimitPolicy.values():
        raise errors.InvalidArgument(f"unknown over-limit policy {record.over_limit}; DROP or DELAY")
    record.over_limit = record.over_limit or notify_pb2.DROP
    return record


def check_template(template: notify_pb2.Template) -> notify_pb2.Template:
    """A copy to store (default locale filled in), or INVALID_ARGUMENT naming what is wrong."""
    record = notify_pb2.Template()
    record.CopyFrom(template)
    record.ClearField("create_time")
    record.version = 0
    validation.name("template", record.name)
    _bytes_at_most("description", record.description, MAX_DESCRIPTION_BYTES)
    record.default_locale = _locale("default locale", record.default_locale or DEFAULT_LOCALE)
    if not record.contents:
        raise errors.InvalidArgument(f"template {record.name!r} has no content; give at least one channel's")
    if len(record.contents) > MAX_CONTENTS:
        raise errors.InvalidArgument(f"{len(record.contents)} contents; at most {MAX_CONTENTS}")
    seen = set()
    for content in record.contents:
        channel = _channel(content.channel, "template content")
        if content.locale:
            _locale(f"{channel} content locale", content.locale)
        label = f"{channel}/{content.locale or 'default'}"
        if (content.channel, content.locale.lower()) in seen:
            raise errors.InvalidArgument(f"two {label} contents; at most one per channel and locale")
        seen.add((content.channel, content.locale.lower()))
        allowed = templating.FIELDS[content.channel]
        for field in ("subject", "text", "html", "json_body"):
            value = getattr(content, field)
            if value and field not in allowed:
                raise errors.InvalidArgument(f"{label}: a {channel} content has no {field} "
                                             f"(it has {', '.join(allowed)})")
            _bytes_at_most(f"{label} {field}", value, MAX_FIELD_BYTES)
        for field in REQUIRED_FIELDS[content.channel]:
            if not getattr(content, field):
                raise errors.InvalidArgument(f"{label}: a {channel} content needs {field}")
    if record.ByteSize() > MAX_TEMPLATE_BYTES:
        raise errors.InvalidArgument(f"template {record.name!r} is {record.ByteSize():,} bytes; "
                                     f"at most {MAX_TEMPLATE_BYTES:,} together")
    templating.check(record)
    return record


def check_provider(provider: notify_pb2.Provider) -> notify_pb2.Provider:
    """A copy to store (max_concurrency filled in, secret_set from secret)."""
    record = notify_pb2.Provider()
    record.CopyFrom(provider)
    channel = _channel(record.channel, "provider")
    if record.channel == notify_pb2.IN_APP:
        raise errors.InvalidArgument("the in_app channel has no provider to set: notifymesh delivers to the inbox")
    if record.channel == notify_pb2.PUSH:
        if record.kind not in (*PUSH_KINDS, SINK):
            raise errors.InvalidArgument(f"provider kind {record.kind!r}: the push channel's kinds are "
                                         f"{', '.join(map(repr, PUSH_KINDS))} (or {SINK!r})")
        kind = record.kind
    else:
        kind = record.kind if record.kind == SINK else PROVIDER_KINDS[record.channel]
    if record.kind != kind:
        raise errors.InvalidArgument(f"provider kind {record.kind!r}: the {channel} channel's kind is {kind!r} "
                                     f"(or {SINK!r})")
    known = REQUIRED_SETTINGS[kind] + OPTIONAL_SETTINGS[kind]
    for key, value in record.settings.items():
        if key not in known:
            raise errors.InvalidArgument(f"{kind} provider: unknown setting {key!r}; the settings: {', '.join(known)}")
        _bytes_at_most(f"setting {key}", value, MAX_SETTING_BYTES)
    missing = [key for key in REQUIRED_SETTINGS[kind] if not record.settings.get(key)]
    if missing:
        raise errors.InvalidArgument(f"{kind} provider: missing setting(s) {', '.join(missing)}")
    settings = record.settings
    if "port" in settings:
        _integer_setting("port", settings["port"], 1, 65535)
    if "timeout_seconds" in settings:
        _integer_setting("timeout_seconds", settings["timeout_seconds"], 1, 300)
    for flag in ("starttls", "use_tls"):
        if settings.get(flag, "false") not in ("true", "false"):
            raise errors.InvalidArgument(f"setting {flag} {settings[flag]!r}: 'true' or 'false'")
    for key in ("base_url", "token_url"):
        if key in settings:
            url = urllib.parse.urlsplit(settings[key])
            if url.scheme not in ("http", "https") or not url.hostname:
                raise errors.InvalidArgument(f"setting {key} {settings[key]!r} is not an http(s) URL")
    _bytes_at_most("secret", record.secret, MAX_SECRET_BYTES)
    if kind in SECRET_REQUIRED and record.secret:  # none given: SetProvider may keep the stored one
        _signing_key(kind, record.secret)
    record.max_concurrency = record.max_concurrency or DEFAULT_MAX_CONCURRENCY_OF_KIND.get(record.kind,
                                                                                        DEFAULT_MAX_CONCURRENCY)
    validation.count_between("max concurrency", record.max_concurrency, 1, MAX_CONCURRENCY)
    validation.name("provider", _named(record).name)
    validation.count_between("provider priority", record.priority, 0, MAX_PRIORITY)
    record.secret_set = bool(record.secret)
    record.ClearField("previous_secret")  # only SetProvider's change of the key sets these
    record.ClearField("previous_secret_expire_time")
    return record


async def _check_endpoints(record: notify_pb2.Provider, allowed: tuple) -> None:
    """INVALID_ARGUMENT for a provider whose URLs or SMTP host are (or resolve to) an
    address the mesh may not connect to; the providers check again at each connection."""
    settings = record.settings
    for key in ("base_url", "token_url"):
        if settings.get(key):
            await egress.check_url(f"{record.kind} provider setting {key}", settings[key], allowed)
    if record.kind == "smtp":
        host = settings["host"]
        await egress.check_url("smtp provider host", f"smtp://{f'[{host}]' if ':' in host else host}:{settings['port']}",
                               allowed)


def _previous_signing_key(current: notify_pb2.Provider, record: notify_pb2.Provider, ttl_s: float) -> None:
    """record replaces current: a webhook's replaced signing key signs beside the new
    one for ttl_s (taking the place of an earlier one); an unchanged key keeps a
    previous one while it lasts. At most two keys sign."""
    webhook = PROVIDER_KINDS[notify_pb2.WEBHOOK]
    if record.kind != webhook or current.kind != webhook:
        return
    if current.secret and record.secret != current.secret:
        if ttl_s > 0:
            record.previous_secret = current.secret
            record.previous_secret_expire_time.CopyFrom(timestamp(now_ms() + round(ttl_s * 1000)))
    elif current.previous_secret and current.previous_secret_expire_time.ToMilliseconds() > now_ms():
        record.previous_secret = current.previous_secret
        record.previous_secret_expire_time.CopyFrom(current.previous_secret_expire_time)


def _signing_key(kind: str, secret: str) -> None:
    """The fcm provider's RSA or the apns provider's EC private key, as PEM: a key that
    does not load is refused here, not at the first send."""
    wanted = rsa.RSAPrivateKey if kind == "fcm" else ec.EllipticCurvePrivateKey
    try:
        key = load_pem_private_key(secret.encode(), password=None)
    except (ValueError, TypeError):
        key = None
    if not isinstance(key, wanted):
        raise errors.InvalidArgument(f"{kind} provider: the secret must be {SECRET_REQUIRED[kind]}")


def _integer_setting(key: str, text: str, low: int, high: int) -> None:
    if not text.isdigit() or not low <= int(text) <= high:
        raise errors.InvalidArgument(f"setting {key} {text!r}: a whole number from {low} to {high}")


class NotifyMetadataStore:
    def __init__(self, cluster: Cluster, allowed: egress.Allowed = lambda: ()):
        """allowed(): the non-public networks a provider may connect to (egress.py)."""
        self._cluster, self._etcd, self._txn = cluster, cluster.etcd, cluster.etcd.transactions
        self._allowed = allowed

    # -- categories ----------------------------------------------------------------------

    async def create_category(self, category: notify_pb2.Category) -> notify_pb2.Category:
        record = check_category(category)
        if len(self._cluster.categories.items) >= MAX_CATEGORIES:  # the mirror: a bound, not an exact count
            raise errors.ResourceExhausted(f"{MAX_CATEGORIES} categories exist; delete one first")
        record.create_time.CopyFrom(timestamp(now_ms()))
        key = CATEGORIES + record.name.encode()
        created, _ = await self._etcd.transaction(compare=[self._txn.create(key) == 0],
                                                  success=[self._txn.put(key, record.SerializeToString())],
                                                  failure=[])
        if not created:
            raise errors.AlreadyExists(f"category {record.name!r} already exists")
        log.info("category created", extra=fields(category=record.name))
        return record

    async def get_category(self, name: str) -> notify_pb2.Category:
        kv = await self._etcd.get(CATEGORIES + validation.name("category", name).encode())
        if kv is None:
            raise errors.NotFound(f"category {name!r} not found")
        return notify_pb2.Category.FromString(kv.value)

    async def list_categories(self) -> list[notify_pb2.Category]:
        return [notify_pb2.Category.FromString(kv.value) for kv in await self._etcd.get_prefix(CATEGORIES)]

    async def update_category(self, category: notify_pb2.Category) -> notify_pb2.Category:
        """Replaces every field but the name and create time."""
        record = check_category(category)
        key = CATEGORIES + record.name.encode()
        for _ in range(WRITE_TRIES):
            kv = await self._etcd.get(key)
            if kv is None:
                raise errors.NotFound(f"category {record.name!r} not found")
            record.create_time.CopyFrom(notify_pb2.Category.FromString(kv.value).create_time)
            updated, _ = await self._etcd.transaction(compare=[self._txn.mod(key) == kv.mod_revision],
                                                      success=[self._txn.put(key, record.SerializeToString())],
                                                      failure=[])
            if updated:
                log.info("category updated", extra=fields(category=record.name))
                return record
        raise errors.Aborted(f"category {record.name!r} changed meanwhile; try again")

    async def delete_category(self, name: str) -> None:
        if not await self._etcd.delete(CATEGORIES + validation.name("category", name).encode()):
            raise errors.NotFound(f"category {name!r} not found")
        log.info("category deleted", extra=fields(category=name))

    # -- templates -----------------------------------------------------------------------

    async def _versions(self, name: str) -> list:
        """The stored versions' kvs, oldest first (their keys sort by version)."""
        return list(await self._etcd.get_prefix(template_versions_prefix(name)))

    async def create_template(self, template: notify_pb2.Template) -> notify_pb2.Template:
        """Stores the next version (1 for a new name) and deletes those beyond the
        latest KEEP_VERSIONS, in one transaction that fails if another version was
        written or the template deleted since the versions were read."""
        record = check_template(template)
        name = record.name
        for _ in range(WRITE_TRIES):
            versions = await self._versions(name)
            if not versions and len(self._cluster.templates.groups) >= MAX_TEMPLATES:
                raise errors.ResourceExhausted(f"{MAX_TEMPLATES} templates exist; delete one first")
            latest = notify_pb2.Template.FromString(versions[-1].value).version if versions else 0
            record.version = latest + 1
            record.create_time.CopyFrom(timestamp(now_ms()))
            key = TEMPLATES + template_version_name(name, record.version).encode()
            compare = [self._txn.create(key) == 0]
            if versions:
                compare.append(self._txn.mod(versions[-1].key) == versions[-1].mod_revision)
            old = versions[:max(0, len(versions) + 1 - KEEP_VERSIONS)]
            created, _ = await self._etcd.transaction(
                compare=compare, success=[self._txn.put(key, record.SerializeToString()),
                                          *(self._txn.delete(kv.key) for kv in old)], failure=[])
            if created:
                log.info("template version created", extra=fields(template=name, version=record.version,
                                                                  versions_dropped=len(old)))
                return record
        raise errors.Aborted(f"template {name!r} changed meanwhile; try again")

    async def get_template(self, name: str, version: int = 0) -> notify_pb2.Template:
        validation.name("template", name)
        if version < 0:
            raise errors.InvalidArgument(f"template version {version}: 1 or more (0: the latest)")
        if version:
            kv = await self._etcd.get(TEMPLATES + template_version_name(name, version).encode())
            if kv is None:
                raise errors.NotFound(f"template {name!r} version {version} not found")
            return notify_pb2.Template.FromString(kv.value)
        versions = await self._versions(name)
        if not versions:
            raise errors.NotFound(f"template {name!r} not found")
        return notify_pb2.Template.FromString(versions[-1].value)

    async def list_templates(self) -> list[notify_pb2.Template]:
        """The latest version of each template, by name: the keys first (every
        version's), then the latest value of each."""
        latest: dict[str, bytes] = {}
        for kv in await self._etcd.get_prefix(TEMPLATES, keys_only=True):
            name = kv.key[len(TEMPLATES):].decode().rpartition("/")[0]
            latest[name] = max(latest.get(name, b""), kv.key)
        kvs = await asyncio.gather(*(self._etcd.get(key) for key in latest.values()))
        return [notify_pb2.Template.FromString(kv.value) for kv in kvs if kv is not None]

    async def delete_template(self, name: str) -> None:
        """Deletes every version (a template made again later starts at version 1)."""
        validation.name("template", name)
        deleted = await self._etcd.delete_prefix(template_versions_prefix(name))
        if not deleted.deleted:
            raise errors.NotFound(f"template {name!r} not found")
        log.info("template deleted", extra=fields(template=name, versions=deleted.deleted))

    # -- providers -----------------------------------------------------------------------

    async def set_provider(self, provider: notify_pb2.Provider, keep_secret: bool,
                           previous_ttl_s: float | None = None) -> notify_pb2.Provider:
        """Adds the channel's provider of that name or replaces it; with keep_secret and
        no secret given, the stored secret stays. A webhook provider's replaced signing
        key keeps signing beside the new one for previous_ttl_s (None: a day; 0: not
        at all). A compare-and-swap on the record read (and, for "default", on the
        legacy key it replaces)."""
        record = check_provider(provider)
        await _check_endpoints(record, self._allowed())
        ttl_s = DEFAULT_PREVIOUS_SECRET_TTL_S if previous_ttl_s is None else validation.seconds_between(
            "previous secret ttl", previous_ttl_s, 0, MAX_PREVIOUS_SECRET_TTL_S)
        channel, name = channel_name(record.channel), record.name
        key, legacy = provider_key(record.channel, name), legacy_provider_key(record.channel)
        for _ in range(WRITE_TRIES):
            kvs = {k: await self._etcd.get(k) for k in ((key, legacy) if name == DEFAULT_PROVIDER else (key,))}
            stored = kvs[key] or kvs.get(legacy)
            # The mirror: a bound, not an exact count (as for categories).
            if stored is None and len(self._cluster.providers.groups.get(channel, {})) >= MAX_PROVIDERS_PER_CHANNEL:
                raise errors.ResourceExhausted(f"the {channel} channel has {MAX_PROVIDERS_PER_CHANNEL} providers; "
                                               "delete one first")
            current = sealing.parse_provider(stored.value) if stored is not None else None
            if keep_secret and not record.secret and current is not None:
                record.secret = current.secret
            record.secret_set = bool(record.secret)
            if current is not None:
                _previous_signing_key(current, record, ttl_s)
            compare = [self._txn.mod(k) == kv.mod_revision if kv else self._txn.version(k) == 0
                       for k, kv in kvs.items()]
            success = [self._txn.put(key, sealing.provider_value(record))]
            if kvs.get(legacy) is not None:
                success.append(self._txn.delete(legacy))
            written, _ = await self._etcd.transaction(compare=compare, success=success, failure=[])
            if written:
                log.info("provider set", extra=fields(channel=channel, provider=name, kind=record.kind,
                                                      priority=record.priority, secret_set=record.secret_set))
                return record
        raise errors.Aborted(f"the {channel} provider {name!r} changed meanwhile; try again")

    async def get_provider(self, channel: int, name: str = "") -> notify_pb2.Provider:
        channel_text, name = _channel(channel, "provider"), name or DEFAULT_PROVIDER
        kv = await self._etcd.get(provider_key(channel, name))
        if kv is None and name == DEFAULT_PROVIDER:
            kv = await self._etcd.get(legacy_provider_key(channel))
        if kv is None:
            raise errors.NotFound(f"no provider {name!r} set for the {channel_text} channel")
        return _named(sealing.parse_provider(kv.value))

    async def list_providers(self) -> list[notify_pb2.Provider]:
        """By channel, then priority, then name (the order senders try them in)."""
        found = [_named(sealing.parse_provider(kv.value)) for kv in await self._etcd.get_prefix(PROVIDERS)]
        return sorted(found, key=lambda p: (p.channel, p.priority, p.name))

    async def delete_provider(self, channel: int, name: str = "") -> None:
        channel_text, name = _channel(channel, "provider"), name or DEFAULT_PROVIDER
        deleted = await self._etcd.delete(provider_key(channel, name))
        if name == DEFAULT_PROVIDER:
            deleted = await self._etcd.delete(legacy_provider_key(channel)) or deleted
        if not deleted:
            raise errors.NotFound(f"no provider {name!r} set for the {channel_text} channel")
        log.info("provider deleted", extra=fields(channel=channel_text, provider=name))
