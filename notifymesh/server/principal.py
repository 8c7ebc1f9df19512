"""Who a caller is (Principal) and what it may do (Principal.allows), API keys and
how they are stored.

A caller of a public RPC is one of:
- an API key `nm_<key_id>_<secret>` (key_id 12 lowercase hex, readable without a
  lookup for logs and limits; secret 32 random bytes, url-safe base64), sent as
  `authorization: Bearer <key>`: Principal id `key:<key_id>`;
- a client certificate signed by the cluster CA whose subject CN is mapped to a
  role and patterns (`auth cert map`): id `cert:<CN>`;
- an end user's token (`nmr_...`, minted by a publisher or admin for one recipient,
  short-lived, signed with a cluster key): id `recipient:<rid>`.

How a servicer gets its caller: the frontend's AuthInterceptor (frontend/auth.py)
checks every public call against frontend/auth.py RULES before the handler runs and
sets the caller for the call's task: `principal.current()` (None for internal RPCs).

Keys are stored only as a salted hash: SHA-256(salt || secret) with 16 random bytes
of salt. A slow password hash (bcrypt, argon2) is for guessable secrets; these have
256 random bits, so no guess succeeds whatever the hash's cost, and the frontends
check one on every call (cached per key id, compared in constant time).
"""

import base64
import contextvars
import fnmatch
import hashlib
import hmac
import json
import re
import secrets
from dataclasses import dataclass, field

from notifymesh import errors
from notifymesh.server.internal_topics import RESERVED_PREFIX

ROLES = ("admin", "publisher", "subscriber", "viewer")
RECIPIENT_ROLE = "recipient"  # an end user's token: its own inbox, devices and preferences
KEY_PREFIX = "nm_"
KEY_RE = re.compile(r"^nm_([0-9a-f]{12})_([A-Za-z0-9_-]{43})$")
SALT_BYTES = 16
MAX_PATTERNS, MAX_PATTERN_BYTES = 32, 256

# What each role may do: (action, kind of name). "admin" may do everything. Patterns
# restrict the names of kinds topic, subscription, category; "cluster" has no name.
GRANTS: dict[str, frozenset[tuple[str, str]]] = {
    "publisher": frozenset({("publish", "topic"), ("read", "topic"), ("notify", "category"),
                            ("read", "category"), ("mint", "recipient")}),
    "subscriber": frozenset({("subscribe", "subscription"), ("read", "subscription"),
                             ("manage", "subscription"), ("read", "topic")}),
    "viewer": frozenset({("read", kind) for kind in ("topic", "subscription", "category", "recipient",
                                                     "cluster")}),
    RECIPIENT_ROLE: frozenset({("self", "recipient")}),
}
PATTERNED = ("topic", "subscription", "category")


@dataclass(frozen=True)
class Principal:
    id: str                      # key:<key_id>, cert:<CN>, recipient:<rid>
    name: str                    # the key's name, the CN, the recipient id
    role: str
    topics: tuple[str, ...] = ()
    subscriptions: tuple[str, ...] = ()
    categories: tuple[str, ...] = ()
    personal_data: bool = False  # may read recipients' email, phone and device tokens
    limits: dict = field(default_factory=dict, compare=False, hash=False)  # per-key rate limit overrides

    def allows(self, action: str, kind: str, name: str | None) -> bool:
        """Whether this caller may do action on the named kind; name None: on any."""
        if self.role == "admin":
            return True
        if (action, kind) not in GRANTS.get(self.role, ()):
            return False
        if kind == "recipient" and self.role == RECIPIENT_ROLE:
            return name == self.name
        if kind not in PATTERNED or name is None:
            return True
        return matches(self.patterns(kind), name)

    def patterns(self, kind: str) -> tuple[str, ...]:
        return {"topic": self.topics, "subscription": self.subscriptions, "category": self.categories}[kind]

    def sees_personal_data(self) -> bool:
        return self.role == "admin" or self.personal_data

    def describe(self) -> str:
        """For messages: `key billing-svc (publisher)`."""
        kind = self.id.partition(":")[0]
        return f"{kind} {self.name} ({self.role})"


def matches(patterns: tuple[str, ...], name: str) -> bool:
    """Glob patterns on names (fnmatchcase: * ? [..]; case-sensitive, '*' spans dots).
    The mesh's own names (notifymesh.*, e.g. the audit topic) match only patterns
    that name them so, never a bare '*'."""
    reserved = name.startswith(RESERVED_PREFIX)
    return any(fnmatch.fnmatchcase(name, pattern) for pattern in patterns
               if not reserved or pattern.startswith(RESERVED_PREFIX))


_current: contextvars.ContextVar[Principal | None] = contextvars.ContextVar("principal", default=None)


def current() -> Principal | None:
    """The caller of the public RPC being served (set by frontend/auth.py)."""
    return _current.get()


def set_current(principal: Principal | None) -> None:
    _current.set(principal)


# -- API keys -------------------------------------------------------------------

def new_key() -> tuple[str, str, str]:
    """(key id, secret, the key as given to the caller)."""
    key_id, secret = secrets.token_hex(6), base64.urlsafe_b64encode(secrets.token_bytes(32)).rstrip(b"=").decode()
    return key_id, secret, f"{KEY_PREFIX}{key_id}_{secret}"


def parse_key(key: str) -> tuple[str, str]:
    """(key id, secret); Unauthenticated for anything not shaped as a key."""
    found = KEY_RE.match(key)
    if not found:
        raise errors.Unauthenticated("malformed API key: expected nm_<key id>_<secret>")
    return found.group(1), found.group(2)


def hash_secret(salt: bytes, secret: str) -> bytes:
    return hashlib.sha256(salt + secret.encode()).digest()


@dataclass(frozen=True)
class KeyRecord:
    """An API key as stored in etcd (contracts.API_KEYS + key id): never the secret."""
    key_id: str
    name: str
    role: str
    salt: str          # hex
    hash: str          # hex of hash_secret(salt, secret)
    created_ms: int
    expires_ms: int = 0  # 0: never
    revoked_ms: int = 0  # 0: live
    topics: tuple[str, ...] = ()
    subscriptions: tuple[str, ...] = ()
    categories: tuple[str, ...] = ()
    personal_data: bool = False
    limits: dict = field(default_factory=dict, compare=False, hash=False)

    def encode(self) -> bytes:
        return json.dumps({k: list(v) if isinstance(v, tuple) else v for k, v in self.__dict__.items()}).encode()

    @staticmethod
    def decode(raw: bytes) -> "KeyRecord":
        values = json.loads(raw)
        for kind in ("topics", "subscriptions", "categories"):
            values[kind] = tuple(values.get(kind, ()))
        return KeyRecord(**values)

    def verifies(self, secret: str) -> bool:
        return hmac.compare_digest(hash_secret(bytes.fromhex(self.salt), secret), bytes.fromhex(self.hash))

    def principal(self) -> Principal:
        return Principal(f"key:{self.key_id}", self.name, self.role, self.topics, self.subscriptions,
                         self.categories, self.personal_data, self.limits)


def check_patterns(kind: str, patterns) -> tuple[str, ...]:
    patterns = tuple(patterns)
    if len(patterns) > MAX_PATTERNS:
        raise errors.InvalidArgument(f"at most {MAX_PATTERNS} {kind} patterns")
    for pattern in patterns:
        if not pattern or len(pattern.encode()) > MAX_PATTERN_BYTES or not pattern.isprintable():
            raise errors.InvalidArgument(f"{kind} pattern {pattern!r}: 1 to {MAX_PATTERN_BYTES} printable bytes")
    return patterns
