"""The `notifymesh auth` and `notifymesh audit` commands: API keys (create prints
the key once), certificate principals, end users' tokens, and the audit log."""

import datetime
import json
import time

from gen.notifymesh.v1 import auth_pb2
from notifymesh import errors
from notifymesh.client import Client

COMMANDS = ("auth", "audit")
AUDIT_TOPIC = "notifymesh.audit"  # internal_topics.AUDIT_TOPIC (the client imports no server code)
AUDIT_PAGE = 500


def _stamp(ts) -> str:
    return ts.ToDatetime(datetime.timezone.utc).isoformat() if ts.seconds else ""


def key_record(key: auth_pb2.ApiKey) -> dict:
    grants = key.grants
    return {"key_id": key.key_id, "name": key.name, "role": grants.role, "topics": list(grants.topics),
            "subscriptions": list(grants.subscriptions), "categories": list(grants.categories),
            "personal_data": grants.personal_data, "created": _stamp(key.create_time),
            "expires": _stamp(key.expire_time), "revoked": _stamp(key.revoke_time),
            "limits": {f.name: v for f, v in key.limits.ListFields()}}


async def _auth(args, client: Client) -> None:
    if args.what == "key":
        if args.action == "create":
            made = await client.create_api_key(args.name, args.role, args.topics, args.subscriptions,
                                               args.categories, args.personal_data, args.expires)
            args.out.record({**key_record(made.key), "key": made.secret_key})
        elif args.action == "revoke":
            args.out.record(key_record(await client.revoke_api_key(args.key_id)))
        elif args.action == "list":
            for key in await client.list_api_keys():
                args.out.record(key_record(key))
        elif args.action == "limits":
            limits = {name: value for name, value in (
                ("publish_messages_per_s", args.messages_per_s), ("publish_bytes_per_s", args.bytes_per_s),
                ("admin_calls_per_s", args.admin_calls_per_s), ("max_streams", args.max_streams)) if value}
            args.out.record(key_record(await client.set_api_key_limits(args.key_id, **limits)))
    elif args.what == "cert":
        mapped = await client.map_certificate(args.common_name, args.role or "", remove=args.action == "unmap",
                                              **({} if args.action == "unmap" else dict(
                                                  topics=args.topics, subscriptions=args.subscriptions,
                                                  categories=args.categories, personal_data=args.personal_data)))
        args.out.record({"common_name": mapped.common_name, "role": mapped.grants.role,
                         "removed": args.action == "unmap"})
    elif args.what == "token":
        token = await client.create_recipient_token(args.recipient, args.ttl)
        args.out.record({"recipient": args.recipient, "token": token.token, "expires": _stamp(token.expire_time)})


async def _audit_tail(args, client: Client) -> None:
    """The entries since --since through a subscription of the audit topic (made on
    first use, kept: tails pick up where the last one stopped unless --since)."""
    try:
        await client.create_subscription(args.subscription, AUDIT_TOPIC)
    except errors.AlreadyExists:
        pass
    if args.since:
        await client.seek(args.subscription, datetime.datetime.now(datetime.timezone.utc)
                          - datetime.timedelta(seconds=args.since))
    quiet_until = time.monotonic() + args.wait
    while args.follow or time.monotonic() < quiet_until:
        received = await client.pull(args.subscription, AUDIT_PAGE, wait_s=1)
        for message in sorted(received, key=lambda m: m.message.publish_time.ToNanoseconds()):
            args.out.record(json.loads(message.message.data))
        args.out.flush()
        if received:
            await client.acknowledge(args.subscription, [m.ack_id for m in received])
            quiet_until = time.monotonic() + args.wait


async def run(args, client: Client) -> int:
    if args.command == "auth":
        await _auth(args, client)
    else:
        await _audit_tail(args, client)
    return 0


def _grants(p, role_required: bool = True) -> None:
    p.add_argument("--role", required=role_required, choices=("admin", "publisher", "subscriber", "viewer"),
                   help="admin: everything; publisher: publish to and read its topics, notify its categories; "
                        "subscriber: consume its subscriptions; viewer: read only")
    p.add_argument("--topics", nargs="+", default=[], metavar="GLOB", help="topic name patterns, e.g. 'billing.*'")
    p.add_argument("--subscriptions", nargs="+", default=[], metavar="GLOB", help="subscription name patterns")
    p.add_argument("--categories", nargs="+", default=[], metavar="GLOB", help="notification category patterns")
    p.add_argument("--personal-data", action="store_true",
                   help="may read recipients' email, phone and device tokens (admin keys always may)")


def add_commands(commands, duration) -> None:
    auth = commands.add_parser("auth", help="API keys, certificate principals and end users' tokens")
    what = auth.add_subparsers(dest="what", required=True)
    key = what.add_parser("key", help="create, revoke or list API keys; set a key's rate limits")
    actions = key.add_subparsers(dest="action", required=True)
    create = actions.add_parser("create", help="a new key: printed this once, stored only as a salted hash")
    create.add_argument("--name", required=True, help="what the key is for, e.g. billing-svc")
    _grants(create)
    create.add_argument("--expires", type=duration, help="expires after this long, e.g. 30d (default never)")
    actions.add_parser("revoke", help="refused by every frontend within 2 seconds").add_argument(
        "key_id", help="the key's id (nm_<key id>_...)")
    actions.add_parser("list", help="every key, without secrets")
    limits = actions.add_parser("limits", help="the key's own rate limits (unset: the cluster's auth_* settings)")
    limits.add_argument("key_id", help="the key's id")
    limits.add_argument("--messages-per-s", type=float, help="publish: messages a second")
    limits.add_argument("--bytes-per-s", type=float, help="publish: bytes a second")
    limits.add_argument("--admin-calls-per-s", type=float, help="admin calls a second")
    limits.add_argument("--max-streams", type=int, help="concurrent streams")
    cert = what.add_parser("cert", help="map a client certificate's subject CN to a role")
    cert_actions = cert.add_subparsers(dest="action", required=True)
    mapping = cert_actions.add_parser("map", help="callers with this certificate CN act as the role")
    mapping.add_argument("common_name", help="the certificate's subject CN")
    _grants(mapping)
    cert_actions.add_parser("unmap", help="remove a mapping").add_argument(
        "common_name", help="the certificate's subject CN")
    token = what.add_parser("token", help="a short-lived token for one end user: their inbox, devices and "
                                          "preferences, nothing else")
    token.add_argument("--recipient", required=True, help="the end user's recipient id")
    token.add_argument("--ttl", type=duration, help="1m to 24h (default 1h)")
    audit = commands.add_parser("audit", help="the audit log: admin calls and refused calls")
    tail = audit.add_subparsers(dest="action", required=True).add_parser(
        "tail", help="print audit entries as JSON lines, oldest first")
    tail.add_argument("--since", type=duration, default=3600.0, help="from this long ago (default 1h; 0: from "
                                                                     "where the last tail stopped)")
    tail.add_argument("--follow", action="store_true", help="keep printing new entries")
    tail.add_argument("--wait", type=duration, default=2.0, help="without --follow: stop after this long quiet")
    tail.add_argument("--subscription", default="audit-tail", help="the subscription read (default audit-tail)")
