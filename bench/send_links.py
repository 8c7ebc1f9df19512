#!/usr/bin/env python3
"""The sender's signed links for one recipient of bench/notify.py's sink mode, in
this process: an email's unsubscribe URL and tracked HTML (its open pixel), and
an SMS status callback (sender.notifications.TemplateRendering, three tokens),
over a cluster of seven members. Run it with PYTHONPATH at the tree to measure
(the script only needs the modules it imports). Prints one JSON line of
microseconds per recipient (the best of --rounds).

    PYTHONPATH=<tree> .venv/bin/python bench/send_links.py --calls 20000
"""

import argparse
import json
import time
from types import SimpleNamespace

from gen.notifymesh.v1 import notify_pb2
from notifymesh.server.unsubscribe import TokenSigner
from sender.notifications import TemplateRendering

HTML = "<p>Invoice <b>42</b>: 10 EUR</p>"  # bench/notify.py's email, rendered


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--calls", type=int, default=20_000)
    p.add_argument("--rounds", type=int, default=5)
    args = p.parse_args()
    members = {f"{kind}/{kind}-{i}": f"127.0.0.1:{50051 + n}" for n, (kind, i) in enumerate(
        [("frontend", 1), ("metadata", 1), ("storage", 1), ("storage", 2), ("storage", 3), ("sender", 1),
         ("frontend", 2)])}

    def live(kind: str) -> dict[str, str]:  # as cluster.Cluster.live walks its members
        prefix = kind + "/"
        return {name[len(prefix):]: addr for name, addr in members.items() if name.startswith(prefix)}

    config = SimpleNamespace(public_base_url="", frontend_http_port_offset=25, email_tracking=1)
    cluster = SimpleNamespace(live=live, members=SimpleNamespace(on_change=lambda _listener: None))
    rendering = TemplateRendering(SimpleNamespace(config=config, cluster=cluster), TokenSigner(bytes(32)))
    recipients = [f"recipient-{i:06d}" for i in range(args.calls)]

    def links():
        for rid in recipients:
            rendering.unsubscribe_url(rid, "bench", "email", "01JDX3V6Q9E6W5YB2ZQ8H4K7NM", 1_764_600_000_000)
            rendering.track_html(HTML, "01JDX3V6Q9E6W5YB2ZQ8H4K7NM", rid, 1_764_600_000_000)
            rendering.status_callback_url("01JDX3V6Q9E6W5YB2ZQ8H4K7NM", rid, notify_pb2.SMS, 1_764_600_000_000)

    best = float("inf")
    for _ in range(args.rounds):
        started = time.perf_counter()
        links()
        best = min(best, time.perf_counter() - started)
    print(json.dumps({"bench": "send_links", "calls": args.calls, "rounds": args.rounds,
                      "us_per_recipient": round(best / args.calls * 1e6, 2)}))


if __name__ == "__main__":
    main()
