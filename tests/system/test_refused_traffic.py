"""Refused requests cost nothing once answered: the frontend keeps no memory
for them."""

import asyncio

import pytest
from helpers import unique

from notifymesh import errors

BATCH = 100
REFUSED_MESSAGES = 20_000
PAYLOAD = b"r" * 1024
# Before the fix each refused 1 KiB message kept about 2 KiB (44 MiB for these
# 20,000); after it the frontend grew by under 2 MiB (see the report figures).
MAX_GROWTH_MIB = 30


def rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmRSS for process {pid}")


async def publish_refused(client, topic: str, messages: int) -> None:
    batch = [PAYLOAD] * BATCH

    async def one():
        with pytest.raises(errors.NotFound):
            await client.publish(topic, batch)

    for _ in range(0, messages, BATCH * 4):
        await asyncio.gather(*(one() for _ in range(4)))


async def test_publishes_to_a_missing_topic_leave_the_frontend_as_it_was(mesh, client):
    pid = mesh.processes[mesh.frontend_names()[0]].popen.pid
    topic = unique("never-created")
    await publish_refused(client, topic, 2_000)  # the first calls' own buffers and caches
    start = rss_mib(pid)
    await publish_refused(client, topic, REFUSED_MESSAGES)
    await asyncio.sleep(0.5)
    grown = rss_mib(pid) - start
    print(f"frontend RSS {start:.1f} MiB, grown by {grown:.1f} MiB after {REFUSED_MESSAGES} refused messages")
    assert grown < MAX_GROWTH_MIB, f"the frontend kept {grown:.1f} MiB for {REFUSED_MESSAGES} refused messages"
