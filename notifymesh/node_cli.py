"""The `notifymesh node` commands: graceful scale-in of a storage node.

`node drain storage-2` records the drain, then waits (progress lines on stderr,
bounded by --timeout) until the node holds and leads no partition, and prints a
JSON summary; it is then safe to stop. `node undrain` ends a drain."""

import asyncio
import json
import sys
import time

from notifymesh.client import Client

COMMANDS = ("node",)
POLL_S = 0.5
PROGRESS_EVERY_S = 5.0  # a progress line at least this often, and whenever the counts change
DEFAULT_TIMEOUT_S = 600.0


def _record(drain) -> dict:
    return {"node_id": drain.node_id, "draining": drain.draining, "replicas": drain.replicas,
            "leading": drain.leading, "since": drain.since.ToJsonString() if drain.draining else ""}


def _fail(message: str):
    raise SystemExit(f"error: {message}")


async def _drain(args, client: Client) -> None:
    started = time.monotonic()
    first = drain = await client.drain_node(args.node_id)
    shown, shown_at = None, 0.0
    while not args.no_wait and (drain.replicas or drain.leading):
        elapsed = time.monotonic() - started
        if elapsed > args.timeout:
            _fail(f"{drain.node_id} still holds {drain.replicas} replica(s) and leads {drain.leading} partition(s) "
                  f"after {args.timeout:g}s; it stays draining (`notifymesh node undrain {drain.node_id}` ends it)")
        if (drain.replicas, drain.leading) != shown or time.monotonic() - shown_at >= PROGRESS_EVERY_S:
            shown, shown_at = (drain.replicas, drain.leading), time.monotonic()
            print(json.dumps({"node_id": drain.node_id, "replicas": drain.replicas, "leading": drain.leading,
                              "elapsed_s": round(elapsed, 1)}), file=sys.stderr, flush=True)
        await asyncio.sleep(POLL_S)
        drain = await client.drain_node(args.node_id)
    args.out.record({**_record(drain), "drained": not (drain.replicas or drain.leading),
                     "moved_replicas": first.replicas - drain.replicas,
                     "handed_over": first.leading - drain.leading,
                     "seconds": round(time.monotonic() - started, 1)})


async def run(args, client: Client) -> int:
    if args.action == "drain":
        await _drain(args, client)
    else:
        args.out.record(_record(await client.drain_node(args.node_id, undrain=True)))
    return 0


def add_commands(commands, duration) -> None:
    node = commands.add_parser("node", help="graceful scale-in of storage nodes: drain, undrain")
    actions = node.add_subparsers(dest="action", required=True)
    drain = actions.add_parser("drain", help="move a storage node's replicas and leaderships to the others, wait "
                                             "until it holds none, print a summary; then stop it")
    drain.add_argument("node_id", help="the storage node, e.g. storage-2 (as cluster status lists it)")
    drain.add_argument("--timeout", type=duration, default=DEFAULT_TIMEOUT_S,
                       help="give up waiting after this long, exit 1; the node stays draining (default 10m)")
    drain.add_argument("--no-wait", action="store_true", help="record the drain and print where it is, at once")
    actions.add_parser("undrain", help="end a drain: the node is given replicas again").add_argument(
        "node_id", help="the storage node")
