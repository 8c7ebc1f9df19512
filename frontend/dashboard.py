"""The operators' dashboard, served by the frontend's HTTP server (frontend/http.py)
under /dashboard: one static page (frontend/dashboard/, package data) that logs in
with an API key and then follows a server-sent event stream of snapshots.

  GET  /dashboard                      the page (no data in it)
  POST /dashboard/login                {"key": API key}: a session cookie, or 401/403
  POST /dashboard/logout               ends the browser's session (CSRF header)
  GET  /dashboard/api/session          who is logged in, the CSRF token, what they may do
  GET  /dashboard/api/snapshot         the latest snapshot, once
  GET  /dashboard/api/events           text/event-stream: a snapshot about every second
  GET  /dashboard/api/messages/{id}    a message's status: every delivery attempt, trace id
  GET  /dashboard/api/notifications/{id}  a notification's sends and their timelines, trace id
  POST /dashboard/api/subscriptions/{name}/redrive   redrive its dead letters (CSRF header)

The data comes from the same Gateway and Notifications logic the public RPCs use,
and each endpoint is allowed by the same rule of frontend/auth.py RULES as the RPC
it stands for (the page itself: GetClusterStatus's, read on the cluster: viewer or
admin; redrive: RedriveDeadLetters', subscribe on that subscription). The login
checks the key with the API's own Authenticator; the cookie holds a signed,
expiring session token naming the key's id (never the key), and every request
looks that key up again in the frontend's mirror of etcd, so a revoked key ends
its sessions at once. A logout ends its session on every frontend
(frontend/ended_sessions.py), not only in the browser. With auth off (config auth_enabled 0) every caller is the
anonymous admin, as on the API.

One snapshot is computed at a time for all viewers (SnapshotHub: single flight,
reused for SNAPSHOT_INTERVAL_S) and filtered per viewer by what their role may read;
at most MAX_STREAMS event streams are open per frontend.
"""

import asyncio
import collections
import contextlib
import hashlib
import hmac
import json
import logging
import secrets
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import AsyncIterator, Awaitable, Callable, Iterator, Protocol

import grpc
from aiohttp import web
from google.protobuf import json_format

from frontend.auth import ANONYMOUS, RULES, authorize
from gen.notifymesh.v1 import cluster_pb2, notify_pb2, pubsub_pb2
from notifymesh import errors
from notifymesh.clock import now_ms, to_ms
from notifymesh.log import fields
from notifymesh.server.internal_topics import RESERVED_PREFIX
from notifymesh.server.principal import KeyRecord, Principal
from notifymesh.server.status import status_of
from notifymesh.server.unsubscribe import InvalidToken, TokenSigner

log = logging.getLogger(__name__)

STATIC = Path(__file__).with_name("dashboard")  # index.html, app.js, style.css: package data
SESSION_COOKIE = "nm_dashboard"
SESSION_TTL_S = 8 * 3600
CSRF_HEADER = "X-Notifymesh-CSRF"
SNAPSHOT_INTERVAL_S = 1.0
MAX_STREAMS = 32  # event streams open at once on one frontend
MAX_VIEWS = 2 * MAX_STREAMS  # a snapshot's JSON kept per viewer's principal
HEARTBEAT_S = 15.0  # an SSE comment when nothing changed, so proxies keep the stream
MAX_TOPICS = 200  # described per snapshot (by name); the rest are counted, not shown
DESCRIBE_CONCURRENCY = 16
MAX_DEAD_LETTER_SUBSCRIPTIONS = 20  # those with the most dead letters
DEAD_LETTERS_SHOWN = 10  # per subscription, oldest first
PREVIEW_CHARS = 120  # of a dead letter's payload
RATE_SAMPLES = 6  # publish rate: over the last ~5 snapshots,
RATE_WINDOW_S = 10.0  # ... those of the last 10 s
RECENT_ERRORS = 100  # the ring of the frontend's last warnings and errors
NOTIFICATION_SENDS_SHOWN = 100
MAX_LOGIN_BYTES = 4096

HTTP_STATUS = {grpc.StatusCode.INVALID_ARGUMENT: 400, grpc.StatusCode.NOT_FOUND: 404,
               grpc.StatusCode.UNAUTHENTICATED: 401, grpc.StatusCode.PERMISSION_DENIED: 403,
               grpc.StatusCode.FAILED_PRECONDITION: 409, grpc.StatusCode.ALREADY_EXISTS: 409,
               grpc.StatusCode.RESOURCE_EXHAUSTED: 429, grpc.StatusCode.UNAVAILABLE: 503,
               grpc.StatusCode.DEADLINE_EXCEEDED: 504}


# -- what a snapshot holds ----------------------------------------------------------

@dataclass(frozen=True)
class Member:
    kind: str
    node_id: str
    addr: str
    metrics_addr: str
    health: str  # "up": holds its lease in etcd; "down": a storage node in a replica set without one


@dataclass(frozen=True)
class Replica:
    node_id: str
    role: str
    end: int
    lag: int


@dataclass(frozen=True)
class Partition:
    topic: str
    partition: int
    leader: str  # "" during an election
    epoch: int
    commit: int
    lag: int  # the largest replica lag
    replicas: list[Replica]
    reported: bool  # the leader answered (commit and replicas are its word)


@dataclass(frozen=True)
class TopicView:
    name: str
    partitions: int
    publish_rate: float  # messages committed per second, over the last few snapshots
    backlog: int
    subscriptions: int


@dataclass(frozen=True)
class SubscriptionView:
    name: str
    topic: str
    backlog: int
    in_flight: int
    oldest_unacked_s: float | None
    delivery_rate: float
    dead_letters: int
    streams: int


@dataclass(frozen=True)
class DeadLetterView:
    subscription: str
    message_id: str
    attempts: int
    dead_letter_time_ms: int
    last_error: str
    preview: str


@dataclass(frozen=True)
class ErrorEntry:
    time_ms: int
    level: str
    logger: str
    message: str
    fields: dict


@dataclass(frozen=True)
class Snapshot:
    time_ms: int
    members: list[Member]
    partitions: list[Partition]
    topics: list[TopicView]
    subscriptions: list[SubscriptionView]
    dead_letters: list[DeadLetterView]
    errors: list[ErrorEntry]
    topics_not_shown: int = 0  # beyond MAX_TOPICS
    problems: list[str] = field(default_factory=list)  # parts that could not be read this time

    def seen_by(self, principal: Principal) -> dict:
        """As JSON for one viewer: the topics and subscriptions their role may read
        (DescribeTopic's and DescribeSubscription's rules), dead letters' contents
        only where they may list them (ListDeadLetters' rule)."""
        shown = asdict(self)
        shown["topics"] = [asdict(t) for t in self.topics if principal.allows("read", "topic", t.name)]
        shown["subscriptions"] = [asdict(s) for s in self.subscriptions
                                  if principal.allows("read", "subscription", s.name)]
        shown["dead_letters"] = [asdict(d) for d in self.dead_letters
                                 if principal.allows("subscribe", "subscription", d.subscription)]
        return shown


# -- the parts a snapshot is built from ---------------------------------------------

class RecentErrors(logging.Handler):
    """The last RECENT_ERRORS warnings and errors this process logged (a ring)."""

    def __init__(self, size: int = RECENT_ERRORS):
        super().__init__(logging.WARNING)
        self._ring: collections.deque[ErrorEntry] = collections.deque(maxlen=size)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            extra = {k: str(v)[:200] for k, v in getattr(record, "fields", {}).items()}
            self._ring.append(ErrorEntry(round(record.created * 1000), record.levelname.lower(), record.name,
                                         record.getMessage()[:500], extra))
        except Exception:  # a log call must never fail for this
            self.handleError(record)

    def entries(self) -> list[ErrorEntry]:
        """Newest first."""
        return list(reversed(self._ring))


class Source(Protocol):
    """What a snapshot reads: frontend.gateway.Gateway's methods behind the public RPCs
    GetClusterStatus, DescribeTopic and ListDeadLetters, and the topics' names."""

    async def cluster_status(self) -> cluster_pb2.ClusterStatus: ...

    async def describe_topic(self, name: str) -> pubsub_pb2.TopicStats: ...

    async def list_dead_letters(self, request: pubsub_pb2.ListDeadLettersRequest
                                ) -> pubsub_pb2.ListDeadLettersResponse: ...

    def topic_names(self) -> list[str]: ...


class PublishRates:
    """Messages committed per second per topic, from the partitions' commit positions
    (one log entry per message) in the last RATE_SAMPLES snapshots of RATE_WINDOW_S."""

    def __init__(self, samples: int = RATE_SAMPLES):
        self._samples: collections.deque[tuple[float, dict[tuple[str, int], int]]] = \
            collections.deque(maxlen=samples)

    def add(self, at_s: float, commits: dict[tuple[str, int], int]) -> dict[str, float]:
        """Records this snapshot's commits; the rate of each topic since the oldest kept."""
        rates: dict[str, float] = {}
        while self._samples and at_s - self._samples[0][0] > RATE_WINDOW_S:  # nobody watched a while
            self._samples.popleft()
        if self._samples:
            then, old = self._samples[0]
            elapsed = at_s - then
            if elapsed > 0:
                for shard, commit in commits.items():
                    if shard in old:  # a failover's new leader may know a lower commit a moment
                        rates[shard[0]] = rates.get(shard[0], 0.0) + max(0, commit - old[shard]) / elapsed
        self._samples.append((at_s, commits))
        return rates


def _problem(what: str, error: Exception) -> str:
    mapped = status_of(error)
    return f"{what}: {mapped[0].name}: {mapped[1]}" if mapped else f"{what}: {error!r}"


class SnapshotBuilder:
    def __init__(self, source: Source, recent: RecentErrors, clock: Callable[[], float] = time.monotonic):
        self._source, self._recent, self._clock = source, recent, clock
        self._rates = PublishRates()

    async def build(self) -> Snapshot:
        problems: list[str] = []
        try:
            status = await self._source.cluster_status()
        except Exception as e:
            problems.append(_problem("cluster status", e))
            status = cluster_pb2.ClusterStatus()
        partitions = sorted((_partition(shard) for shard in status.shards),
                            key=lambda p: (_ours(p.topic), p.topic, p.partition))
        rates = self._rates.add(self._clock(), {(p.topic, p.partition): p.commit for p in partitions if p.reported})
        names = sorted(self._source.topic_names(), key=lambda name: (_ours(name), name))
        topics, subscriptions = await self._topics(names[:MAX_TOPICS], rates, problems)
        dead_letters = await self._dead_letters(subscriptions, problems)
        return Snapshot(now_ms(), _members(status), partitions, topics, subscriptions, dead_letters,
                        self._recent.entries(), max(0, len(names) - MAX_TOPICS), problems)

    async def _topics(self, names: list[str], rates: dict[str, float], problems: list[str]
                      ) -> tuple[list[TopicView], list[SubscriptionView]]:
        gate = asyncio.Semaphore(DESCRIBE_CONCURRENCY)

        async def describe(name: str):
            async with gate:
                return await self._source.describe_topic(name)

        described = await asyncio.gather(*(describe(name) for name in names), return_exceptions=True)
        topics, subscriptions = [], []
        for name, stats in zip(names, described):
            if isinstance(stats, errors.NotFound) or (
                    isinstance(stats, grpc.aio.AioRpcError) and stats.code() == grpc.StatusCode.NOT_FOUND):
                continue  # deleted since its name was read
            if isinstance(stats, Exception):
                problems.append(_problem(f"topic {name}", stats))
                continue
            topics.append(TopicView(name, len(stats.partitions), round(rates.get(name, 0.0), 1),
                                    stats.total.backlog, len(stats.subscriptions)))
            for sub in stats.subscriptions:
                total = sub.total
                oldest = total.oldest_unacked_age.ToMilliseconds() / 1000 \
                    if total.HasField("oldest_unacked_age") else None
                subscriptions.append(SubscriptionView(sub.subscription, name, total.backlog, total.in_flight, oldest,
                                                      round(total.delivery_rate, 1), total.dead_letters,
                                                      sub.streams))
        return topics, subscriptions

    async def _dead_letters(self, subscriptions: list[SubscriptionView], problems: list[str]
                            ) -> list[DeadLetterView]:
        with_dead = sorted((s for s in subscriptions if s.dead_letters),
                           key=lambda s: (-s.dead_letters, s.name))[:MAX_DEAD_LETTER_SUBSCRIPTIONS]
        listed = await asyncio.gather(*(self._source.list_dead_letters(pubsub_pb2.ListDeadLettersRequest(
            subscription=s.name, page_size=DEAD_LETTERS_SHOWN)) for s in with_dead), return_exceptions=True)
        shown = []
        for sub, reply in zip(with_dead, listed):
            if isinstance(reply, Exception):
                problems.append(_problem(f"dead letters of {sub.name}", reply))
                continue
            for dead in reply.dead_letters:
                shown.append(DeadLetterView(sub.name, dead.message.message_id, dead.delivery_attempts,
                                            to_ms(dead.dead_letter_time), dead.last_error[:300],
                                            _preview(dead.message.data)))
        return shown


def _ours(name: str) -> bool:
    """The mesh's own topics (notifymesh.*) are listed after the users'."""
    return name.startswith(RESERVED_PREFIX)


def _preview(data: bytes) -> str:
    try:
        text = data.decode()
    except UnicodeDecodeError:
        return f"({len(data)} bytes, not UTF-8)"
    return text if len(text) <= PREVIEW_CHARS else text[:PREVIEW_CHARS] + "…"


def _partition(shard: cluster_pb2.ShardStatus) -> Partition:
    replicas = [Replica(r.node_id, r.role, r.end, r.lag) for r in shard.replica_status]
    return Partition(shard.topic, shard.partition, shard.leader, shard.epoch, shard.commit,
                     max((r.lag for r in replicas), default=0), replicas, bool(replicas))


def _members(status: cluster_pb2.ClusterStatus) -> list[Member]:
    """The live members, and the storage nodes named in a replica set that hold no lease."""
    members = [Member(m.kind, m.node_id, m.addr, m.metrics_addr, "up") for m in status.members]
    live = {m.node_id for m in status.members if m.kind == "storage"}
    missing = sorted({node for shard in status.shards for node in shard.replicas} - live)
    return members + [Member("storage", node, "", "", "down") for node in missing]


class TooManyStreams(Exception):
    pass


class SnapshotHub:
    """Shares one snapshot among every viewer: a request within interval_s of the
    last computation's start gets it; one while a computation runs waits for it."""

    def __init__(self, build: Callable[[], Awaitable[Snapshot]], interval_s: float = SNAPSHOT_INTERVAL_S,
                 max_streams: int = MAX_STREAMS, clock: Callable[[], float] = time.monotonic):
        self._build, self.interval_s, self._max_streams, self._clock = build, interval_s, max_streams, clock
        self._latest: tuple[float, Snapshot] | None = None
        self._running: asyncio.Task | None = None
        self.streams = 0
        self.closing = asyncio.Event()
        # The latest snapshot as JSON per viewer: viewers with the same key share it.
        self._views: tuple[Snapshot | None, dict[Principal, str]] = (None, {})

    async def latest(self) -> Snapshot:
        if self._latest is not None and self._clock() - self._latest[0] < self.interval_s:
            return self._latest[1]
        if self._running is None:
            self._running = asyncio.create_task(self._compute())
        # Shielded: a viewer that leaves does not cancel the others' computation.
        return await asyncio.shield(self._running)

    async def _compute(self) -> Snapshot:
        started = self._clock()
        try:
            snapshot = await self._build()
            self._latest = (started, snapshot)
            return snapshot
        finally:
            self._running = None

    def view(self, snapshot: Snapshot, principal: Principal) -> str:
        """snapshot.seen_by(principal) as JSON, made once per snapshot and principal."""
        shown, views = self._views
        if shown is not snapshot or len(views) >= MAX_VIEWS:
            views = {}
            self._views = (snapshot, views)
        if principal not in views:
            views[principal] = json.dumps(snapshot.seen_by(principal), separators=(",", ":"))
        return views[principal]

    @contextlib.contextmanager
    def stream(self) -> Iterator[None]:
        """A place for one event stream; TooManyStreams when max_streams are open."""
        if self.streams >= self._max_streams:
            raise TooManyStreams(f"{self.streams} dashboard streams are open on this frontend, the most it serves")
        self.streams += 1
        try:
            yield
        finally:
            self.streams -= 1

    async def updates(self) -> AsyncIterator[Snapshot]:
        """A snapshot about every interval_s until close()."""
        while not self.closing.is_set():
            asked = self._clock()
            yield await self.latest()
            # Every interval_s from the last ask, not interval_s after the answer: a
            # snapshot that took long to build (a loaded mesh) does not slow the cadence.
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self.closing.wait(), max(0.0, self.interval_s - (self._clock() - asked)))

    def close(self) -> None:
        self.closing.set()


# -- sessions ------------------------------------------------------------------------

class KeyCheck(Protocol):
    """frontend.auth.Authenticator: the API's caller from a call's metadata."""

    async def principal(self, context) -> Principal: ...


class _LoginCredential:
    """The key a login form gave, shaped as the call context Authenticator reads."""

    def __init__(self, key: str):
        self._metadata = (("authorization", f"Bearer {key}"),)

    def invocation_metadata(self):
        return self._metadata

    def auth_context(self) -> dict:
        return {}  # no client certificate: a browser logs in with a key


def refused(error: Exception) -> web.HTTPException:
    """The HTTP answer for an error of the API's family (or a failed internal call)."""
    code, details = status_of(error) or (grpc.StatusCode.INTERNAL, "internal error")
    status = HTTP_STATUS.get(code, 500)
    body = json.dumps({"error": details, "code": code.name})
    return _HTTP[status](text=body, content_type="application/json")


_HTTP = {400: web.HTTPBadRequest, 401: web.HTTPUnauthorized, 403: web.HTTPForbidden, 404: web.HTTPNotFound,
         409: web.HTTPConflict, 429: web.HTTPTooManyRequests, 500: web.HTTPInternalServerError,
         503: web.HTTPServiceUnavailable, 504: web.HTTPGatewayTimeout}


class Ended(Protocol):
    """frontend.ended_sessions.EndedSessions: the sessions logged out, on every frontend."""

    def __contains__(self, nonce: str) -> bool: ...

    async def end(self, nonce: str, key_id: str, remaining_s: float) -> None: ...


class Sessions:
    """Logins with an API key and the signed session tokens the cookie holds:
    (key id, nonce) with the time issued, good for SESSION_TTL_S or until logged out."""

    def __init__(self, key: bytes, keys: Callable[[str], KeyRecord | None], check: KeyCheck,
                 enabled: Callable[[], bool], ended: Ended, ttl_s: float = SESSION_TTL_S):
        """key: the cluster's key for dashboard sessions (every frontend has it, so a
        session works on each); keys(key id): the frontend's mirror of the API keys;
        enabled(): config auth_enabled; ended: the sessions logged out."""
        self._signer = TokenSigner(key).derived("dashboard-session")
        self._csrf_key = hmac.new(key, b"dashboard-csrf", hashlib.sha256).digest()
        self._keys, self._check, self._enabled, self.ttl_s = keys, check, enabled, ttl_s
        self._ended = ended

    async def login(self, key: str) -> tuple[Principal, str]:
        """The key's principal and a session token; Unauthenticated or PermissionDenied."""
        if not key:
            raise errors.Unauthenticated("give an API key (nm_<key id>_<secret>)")
        principal = await self._check.principal(_LoginCredential(key))
        _viewer(principal)
        if not principal.id.startswith("key:"):
            raise errors.PermissionDenied(f"{principal.describe()}: the dashboard takes API keys")
        # A nonce: each login its own token, so its own CSRF token.
        return principal, self._signer.sign((principal.id.partition(":")[2], secrets.token_hex(8)))

    def principal(self, token: str | None) -> Principal:
        """Whose session token this is, checked against the key as it is now."""
        if not self._enabled():
            return ANONYMOUS
        if not token:
            raise errors.Unauthenticated("not logged in: POST /dashboard/login with an API key")
        (key_id, nonce), _ = self._open(token)
        if nonce in self._ended:
            raise errors.Unauthenticated("this session was logged out; log in again")
        record = self._keys(key_id)
        if record is None:
            raise errors.Unauthenticated(f"API key {key_id} of this session no longer exists; log in again")
        if record.revoked_ms:
            raise errors.Unauthenticated(f"API key {key_id} ({record.name}) was revoked")
        if record.expires_ms and now_ms() > record.expires_ms:
            raise errors.Unauthenticated(f"API key {key_id} ({record.name}) has expired")
        return record.principal()

    def _open(self, token: str) -> tuple[tuple[str, str], float]:
        """((key id, nonce), time issued) of a session token signed here and not expired."""
        try:
            return self._signer.open(token, (2,), max_age_s=self.ttl_s, what="a dashboard session")
        except InvalidToken as e:
            raise errors.Unauthenticated(f"session refused: {e}; log in again") from None

    async def end(self, token: str | None) -> None:
        """Logs the session out on every frontend (an expired or foreign token has nothing to end)."""
        if not self._enabled() or not token:
            return
        try:
            (key_id, nonce), issued = self._open(token)
        except errors.Unauthenticated:
            return
        await self._ended.end(nonce, key_id, issued + self.ttl_s - time.time())

    def csrf(self, token: str) -> str:
        """The token the page sends in CSRF_HEADER with every POST: a MAC of its session,
        which another site can neither read nor make."""
        return hmac.new(self._csrf_key, token.encode(), hashlib.sha256).hexdigest()

    def check_csrf(self, token: str | None, sent: str) -> None:
        if not self._enabled():
            return
        if not sent or not hmac.compare_digest(sent, self.csrf(token or "")):
            raise errors.PermissionDenied(f"missing or wrong {CSRF_HEADER} header: reload the dashboard")


def _viewer(principal: Principal) -> None:
    """The page shows the cluster: GetClusterStatus's rule (viewer or admin role)."""
    authorize(principal, RULES["/notifymesh.v1.ClusterAdmin/GetClusterStatus"], cluster_pb2.GetClusterStatusRequest())


# -- the endpoints -----------------------------------------------------------------

class Lookups(Protocol):
    """Gateway.message_status, Notifications.get_notification, Gateway.redrive_dead_letters."""

    async def message_status(self, message_id: str) -> pubsub_pb2.MessageStatus: ...

    async def get_notification(self, request: notify_pb2.GetNotificationRequest) -> notify_pb2.Notification: ...

    async def redrive_dead_letters(self, subscription: str) -> int: ...


def _json(message) -> dict:
    return json_format.MessageToDict(message, preserving_proto_field_name=True)


class Dashboard:
    def __init__(self, sessions: Sessions, hub: SnapshotHub, lookups: Lookups,
                 secure: Callable[[web.Request], bool] = lambda request: request.secure):
        """secure(request): whether the browser reached us over https (the cookie is Secure then)."""
        self._sessions, self._hub, self._lookups, self._secure = sessions, hub, lookups, secure

    def add_routes(self, app: web.Application) -> None:
        r = app.router
        r.add_get("/dashboard", self.page)
        r.add_post("/dashboard/login", self.login)
        r.add_post("/dashboard/logout", self.logout)
        r.add_get("/dashboard/api/session", self.session)
        r.add_get("/dashboard/api/snapshot", self.snapshot)
        r.add_get("/dashboard/api/events", self.events)
        r.add_get("/dashboard/api/messages/{id}", self.message)
        r.add_get("/dashboard/api/notifications/{id}", self.notification)
        r.add_post("/dashboard/api/subscriptions/{name}/redrive", self.redrive)
        for name in ("app.js", "style.css"):
            r.add_get(f"/dashboard/{name}", self._static(name))

    @staticmethod
    def _static(name: str):
        kind = {"js": "text/javascript", "css": "text/css"}[name.rpartition(".")[2]]

        async def serve(request: web.Request) -> web.Response:
            return web.Response(body=(STATIC / name).read_bytes(), content_type=kind,
                                headers={"Cache-Control": "no-cache"})
        return serve

    async def page(self, request: web.Request) -> web.Response:
        return web.Response(body=(STATIC / "index.html").read_bytes(), content_type="text/html",
                            headers={"Cache-Control": "no-cache", "X-Frame-Options": "DENY",
                                     "Content-Security-Policy": "default-src 'self'; frame-ancestors 'none'"})

    def _who(self, request: web.Request) -> Principal:
        """The viewer of a read endpoint: 401 without a valid session, 403 without the viewer's rights."""
        try:
            principal = self._sessions.principal(request.cookies.get(SESSION_COOKIE))
            _viewer(principal)
        except errors.NotifymeshError as e:
            raise refused(e) from None
        return principal

    async def login(self, request: web.Request) -> web.Response:
        if (request.content_length or 0) > MAX_LOGIN_BYTES:
            raise web.HTTPRequestEntityTooLarge(MAX_LOGIN_BYTES, request.content_length)
        if request.content_type == "application/json":
            try:
                key = str((await request.json()).get("key", ""))
            except (ValueError, AttributeError):
                raise web.HTTPBadRequest(text=json.dumps({"error": "expected JSON {\"key\": ...}"}),
                                         content_type="application/json") from None
        else:
            key = str((await request.post()).get("key", ""))
        try:
            principal, token = await self._sessions.login(key.strip())
        except errors.NotifymeshError as e:
            log.warning("dashboard login refused", extra=fields(remote=request.remote, reason=str(e.details)))
            raise refused(e) from None
        log.info("dashboard login", extra=fields(principal=principal.id, remote=request.remote))
        response = web.json_response(self._session_of(principal, token))
        response.set_cookie(SESSION_COOKIE, token, max_age=int(self._sessions.ttl_s), path="/dashboard",
                            httponly=True, samesite="Strict", secure=self._secure(request))
        return response

    def _session_of(self, principal: Principal, token: str) -> dict:
        return {"principal": principal.id, "name": principal.name, "role": principal.role,
                "csrf": self._sessions.csrf(token), "interval_s": self._hub.interval_s}

    async def logout(self, request: web.Request) -> web.Response:
        token = request.cookies.get(SESSION_COOKIE)
        try:
            self._sessions.check_csrf(token, request.headers.get(CSRF_HEADER, ""))
            await self._sessions.end(token)  # UNAVAILABLE (etcd): the cookie stays, to try again
        except errors.ResourceExhausted as e:  # ended in this browser only: it says so
            response = web.json_response({"logged_out": True, "everywhere": False, "error": e.details}, status=429)
        except errors.NotifymeshError as e:
            raise refused(e) from None
        else:
            response = web.json_response({"logged_out": True, "everywhere": True})
        response.del_cookie(SESSION_COOKIE, path="/dashboard")
        return response

    async def session(self, request: web.Request) -> web.Response:
        principal = self._who(request)
        return web.json_response(self._session_of(principal, request.cookies.get(SESSION_COOKIE, "")))

    async def snapshot(self, request: web.Request) -> web.Response:
        principal = self._who(request)
        return web.Response(text=self._hub.view(await self._hub.latest(), principal), content_type="application/json")

    async def events(self, request: web.Request) -> web.StreamResponse:
        principal = self._who(request)
        token = request.cookies.get(SESSION_COOKIE)
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-store",
                                               "X-Accel-Buffering": "no"})
        with contextlib.ExitStack() as slot:
            try:
                slot.enter_context(self._hub.stream())
            except TooManyStreams as e:
                raise web.HTTPServiceUnavailable(text=json.dumps({"error": str(e)}), content_type="application/json",
                                                 headers={"Retry-After": "10"}) from None
            await response.prepare(request)
            try:
                await self._follow(response, principal, token)
            except ConnectionResetError:
                pass  # the viewer went away
        return response

    async def _follow(self, response: web.StreamResponse, principal: Principal, token: str | None) -> None:
        sent, quiet_since = "", time.monotonic()
        async for snapshot in self._hub.updates():
            try:  # a key revoked meanwhile ends the stream
                principal = self._sessions.principal(token)
                _viewer(principal)
            except errors.NotifymeshError as e:
                await response.write(_event("logout", {"error": str(e.details)}))
                return
            data = self._hub.view(snapshot, principal)
            if data != sent:
                await response.write(f"event: snapshot\ndata: {data}\n\n".encode())
                sent, quiet_since = data, time.monotonic()
            elif time.monotonic() - quiet_since > HEARTBEAT_S:
                await response.write(b": still here\n\n")
                quiet_since = time.monotonic()

    async def message(self, request: web.Request) -> web.Response:
        principal = self._who(request)
        request_ = pubsub_pb2.GetMessageStatusRequest(message_id=request.match_info["id"])
        status = await self._call(principal, "/notifymesh.v1.Publisher/GetMessageStatus", request_,
                                  lambda: self._lookups.message_status(request_.message_id))
        return web.json_response(_json(status))

    async def notification(self, request: web.Request) -> web.Response:
        principal = self._who(request)
        request_ = notify_pb2.GetNotificationRequest(id=request.match_info["id"], page_size=NOTIFICATION_SENDS_SHOWN)
        found = await self._call(principal, "/notifymesh.v1.Notifications/GetNotification", request_,
                                 lambda: self._lookups.get_notification(request_))
        return web.json_response(_json(found))

    async def redrive(self, request: web.Request) -> web.Response:
        principal = self._who(request)
        name = request.match_info["name"]
        try:
            self._sessions.check_csrf(request.cookies.get(SESSION_COOKIE), request.headers.get(CSRF_HEADER, ""))
        except errors.NotifymeshError as e:
            raise refused(e) from None
        request_ = pubsub_pb2.RedriveDeadLettersRequest(subscription=name)
        redriven = await self._call(principal, "/notifymesh.v1.Subscriber/RedriveDeadLetters", request_,
                                    lambda: self._lookups.redrive_dead_letters(name))
        log.info("dashboard redrive", extra=fields(principal=principal.id, subscription=name, messages=redriven))
        return web.json_response({"subscription": name, "redriven": redriven})

    async def _call(self, principal: Principal, method: str, request, call: Callable[[], Awaitable]):
        """call(), allowed by the RPC's rule; its errors as HTTP statuses."""
        try:
            authorize(principal, RULES[method], request)
            return await call()
        except (errors.NotifymeshError, grpc.aio.AioRpcError) as e:
            raise refused(e) from None


def _event(name: str, data: dict) -> bytes:
    return f"event: {name}\ndata: {json.dumps(data)}\n\n".encode()


class GatewaySource:
    """Source over the frontend's Gateway and its cluster mirror of topics."""

    def __init__(self, gateway, topics: Callable[[], list[str]]):
        self._gateway, self._topics = gateway, topics

    async def cluster_status(self) -> cluster_pb2.ClusterStatus:
        return await self._gateway.cluster_status()

    async def describe_topic(self, name: str) -> pubsub_pb2.TopicStats:
        return await self._gateway.describe_topic(name)

    async def list_dead_letters(self, request):
        return await self._gateway.list_dead_letters(request)

    def topic_names(self) -> list[str]:
        return self._topics()


class GatewayLookups:
    """Lookups over the Gateway and Notifications, as the public servicers call them."""

    def __init__(self, gateway, notifications):
        self._gateway, self._notifications = gateway, notifications

    async def message_status(self, message_id: str) -> pubsub_pb2.MessageStatus:
        return await self._gateway.message_status(message_id)

    async def get_notification(self, request: notify_pb2.GetNotificationRequest) -> notify_pb2.Notification:
        return await self._notifications.get_notification(request)

    async def redrive_dead_letters(self, subscription: str) -> int:
        return await self._gateway.redrive_dead_letters(subscription)
