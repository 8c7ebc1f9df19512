#!/usr/bin/env python3
"""Rendering in this process, as a channel worker renders each task
(sender/channel_worker.py: Renderer.render_lazily, making the recipient's context
and the task's data from JSON only if a field is to be rendered): bench/notify.py's
template on email and SMS, and a newsletter (an HTML body of about 6 KB looping
over 20 items in data, a subject of data, a text of the recipient's name) on
email. Each twice: once as a preview renders (no notification: every field
rendered per recipient) and once as tasks of one notification (the fields of its
data alone rendered once). Run it with PYTHONPATH at the tree to measure. Prints
one JSON line of microseconds per recipient (the best of --rounds).

    PYTHONPATH=<tree> .venv/bin/python bench/render.py --recipients 20000
"""

import argparse
import json
import platform
import time
from datetime import datetime, timezone

from gen.notifymesh.v1 import notify_pb2
from notifymesh.server import templating

INVOICE = notify_pb2.Template(name="invoice", version=1, default_locale="en", contents=[  # bench/notify.py's
    notify_pb2.TemplateContent(channel=notify_pb2.EMAIL, subject="Invoice {{ data.invoice }} is due",
                               text="Hello {{ recipient.attributes.name }}, invoice {{ data.invoice }}: "
                                    "{{ data.amount }}.",
                               html="<p>Invoice <b>{{ data.invoice }}</b>: {{ data.amount }}</p>"),
    notify_pb2.TemplateContent(channel=notify_pb2.SMS, text="Invoice {{ data.invoice }} is due: {{ data.amount }}.")])
INVOICE_DATA = json.dumps({"invoice": 42, "amount": "10 EUR"})
NEWSLETTER = notify_pb2.Template(name="newsletter", version=1, default_locale="en", contents=[
    notify_pb2.TemplateContent(
        channel=notify_pb2.EMAIL, subject="{{ data.title }}", text="Hello {{ recipient.attributes.name }}",
        html="<html><body><h1>{{ data.title }}</h1>{% for item in data['items'] %}<div class='item'>"
             "<h2>{{ item.name }}</h2><p>{{ item.text }}</p><a href='{{ item.url }}'>more</a></div>"
             "{% endfor %}</body></html>")])
NEWSLETTER_DATA = json.dumps({"title": "This week", "items": [
    {"name": f"Story {i}", "text": "lorem ipsum " * 20, "url": f"https://example.com/{i}"} for i in range(20)]})
NOTIFICATION_ID = "01JDX3V6Q9E6W5YB2ZQ8H4K7NM"


def per_recipient_us(template: notify_pb2.Template, data: str, channels: list[int], recipients: int,
                     rounds: int, notification_id: str) -> float:
    people = [notify_pb2.Recipient(id=f"recipient-{i:06d}", attributes={"name": f"Name {i}"})
              for i in range(recipients)]
    best = float("inf")
    for _ in range(rounds):
        renderer = templating.Renderer()  # each round from nothing rendered
        started = time.perf_counter()
        for recipient in people:
            def values(recipient=recipient) -> dict:
                return templating.context(recipient, json.loads(data), NOTIFICATION_ID, "bench")

            for channel in channels:
                renderer.render_lazily(template, channel, "", values, notification_id)
        best = min(best, time.perf_counter() - started)
    return round(best / recipients * 1e6, 1)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--recipients", type=int, default=20_000)
    p.add_argument("--rounds", type=int, default=5)
    args = p.parse_args()
    line = {"bench": "render", "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "machine": {"python": platform.python_version(), "system": f"{platform.system()} {platform.release()}"},
            "recipients": args.recipients, "rounds": args.rounds}
    for name, template, data, channels in (("invoice_email_sms", INVOICE, INVOICE_DATA, [notify_pb2.EMAIL,
                                                                                       notify_pb2.SMS]),
                                           ("newsletter_email", NEWSLETTER, NEWSLETTER_DATA, [notify_pb2.EMAIL])):
        line[f"{name}_us"] = {mode: per_recipient_us(template, data, channels, args.recipients, args.rounds, nid)
                              for mode, nid in (("each_recipient", ""), ("once_a_notification", NOTIFICATION_ID))}
    print(json.dumps(line))


if __name__ == "__main__":
    main()
