"""The stats consumer's counts over a fake table: each message of the events
topic counted once however often it is delivered, per node without lost
updates, summed by the reader per template and category from an hour on."""

import asyncio
from collections import Counter

import pytest

from gen.notifymesh.v1 import events_pb2, notify_pb2
from notify_fakes import FakeTable
from notifymesh.clock import timestamp
from notifymesh.server import rows
from notifymesh.server.event_stats import HOUR_MS, EventCounter, StatsReader, counts

H0 = 1_700_000_000_000 // HOUR_MS * HOUR_MS


def events(*specs) -> events_pb2.NotificationEvents:
    """specs: (template, category, state, ms)"""
    return events_pb2.NotificationEvents(events=[
        events_pb2.NotificationEvent(notification_id="n", recipient=f"r{i}", channel=notify_pb2.EMAIL, template=t,
                                     category=c, event=notify_pb2.SendEvent(state=s, time=timestamp(ms)))
        for i, (t, c, s, ms) in enumerate(specs)])


SENT, OPENED, CLICKED = notify_pb2.SEND_SENT, notify_pb2.SEND_OPENED, notify_pb2.SEND_CLICKED


def test_counts_group_by_hour_template_category_and_state_and_skip_steps():
    found = counts(events(("a", "x", SENT, H0 + 5), ("a", "x", SENT, H0 + HOUR_MS - 1),
                          ("a", "x", SENT, H0 + HOUR_MS), ("a", "x", notify_pb2.SEND_RENDERED, H0)))
    assert found == Counter({(H0, "a", "x", SENT): 2, (H0 + HOUR_MS, "a", "x", SENT): 1})


async def test_a_message_delivered_again_is_not_counted_again():
    table = FakeTable()
    counter = EventCounter(table, "s1", clock=lambda: H0)
    message = events(("a", "x", SENT, H0), ("a", "x", SENT, H0 + 1), ("a", "x", OPENED, H0 + 2))
    await counter.count(0, "m1", message)
    await counter.count(0, "m1", message)  # redelivered
    await counter.count(0, "m2", events(("a", "x", SENT, H0 + 3)))
    key = rows.stats_count_key(0, H0, "a", "x", SENT, "s1")
    assert table.get(rows.stats_partition_key(0), key) == b"3"
    stats = await StatsReader(table, clock=lambda: H0 + 10).stats(4, H0 + 10)
    assert (stats.sent, stats.opened, stats.open_rate) == (3, 1, pytest.approx(1 / 3))


class SlowTable(FakeTable):
    """Reads and writes that yield, as the real ones do: concurrent read-add-writes interleave."""

    async def read(self, partition_key, keys):
        await asyncio.sleep(0)
        return await super().read(partition_key, keys)

    async def write(self, partition_key, ops):
        await asyncio.sleep(0)
        await super().write(partition_key, ops)


async def test_concurrent_messages_of_a_partition_lose_no_update_and_nodes_add_up():
    table = SlowTable()
    one, two = EventCounter(table, "s1"), EventCounter(table, "s2")  # ownership of partition 1 moved
    await asyncio.gather(*(one.count(1, f"m{i}", events(("a", "x", SENT, H0))) for i in range(50)),
                         *(two.count(1, f"k{i}", events(("a", "x", SENT, H0))) for i in range(7)))
    stats = await StatsReader(table, clock=lambda: H0).stats(4, H0)
    assert stats.sent == 57


async def test_the_reader_filters_by_template_and_category_and_starts_at_an_hour():
    table = FakeTable()
    counter = EventCounter(table, "s1")
    await counter.count(0, "m1", events(("a", "x", SENT, H0 - HOUR_MS), ("a", "x", SENT, H0 + 1),
                                        ("a", "y", SENT, H0 + 2), ("b", "x", SENT, H0 + 3),
                                        ("a", "x", CLICKED, H0 + 4), ("a", "x", notify_pb2.SEND_FAILED, H0 + 5),
                                        ("a", "x", notify_pb2.SUPPRESSED_OPTED_OUT, H0 + 6)))
    await counter.count(3, "m2", events(("a", "x", notify_pb2.SEND_DELIVERED, H0 + 7)))
    reader = StatsReader(table)
    every = await reader.stats(4, H0 + 30 * 60 * 1000)  # rounded down to H0
    assert every.start_time.ToMilliseconds() == H0
    assert (every.sent, every.clicked, every.failed, every.delivered, every.suppressed) == (3, 1, 1, 1, 1)
    a_x = await reader.stats(4, H0, template="a", category="x")
    assert (a_x.sent, a_x.delivery_rate, a_x.click_rate, a_x.failure_rate) == (1, 1.0, 1.0, 0.5)
    assert (await reader.stats(4, H0 - HOUR_MS, template="a", category="x")).sent == 2
    assert (await reader.stats(4, H0, category="y")).sent == 1
    assert (await reader.stats(4, H0, template="none")).sent == 0
