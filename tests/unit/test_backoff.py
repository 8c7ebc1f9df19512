"""The one retry backoff: growing jittered waits, a bounded retry window, and a
wait cut short when what it waited for may be ready."""

import asyncio
import time

import pytest

from notifymesh import errors
from notifymesh.backoff import Backoff, BackoffPolicy, retry


def test_waits_grow_to_the_cap_with_jitter_and_reset():
    backoff = Backoff(BackoffPolicy(first_s=0.1, max_s=0.8, jitter=0.5))
    waits = [backoff.next_s() for _ in range(6)]
    steps = [0.1, 0.2, 0.4, 0.8, 0.8, 0.8]
    assert all(step / 2 <= wait <= step for wait, step in zip(waits, steps))
    backoff.reset()
    assert backoff.next_s() <= 0.1


async def test_retry_stops_at_the_window_and_at_a_terminal_error():
    calls = []

    async def unavailable():
        calls.append(time.monotonic())
        raise errors.Unavailable("down")

    started = time.monotonic()
    with pytest.raises(errors.Unavailable):
        await retry(unavailable, lambda e: isinstance(e, errors.Unavailable), BackoffPolicy(0.01, 0.05), 0.3)
    assert 0.3 <= time.monotonic() - started < 1.0 and len(calls) > 3
    calls.clear()
    with pytest.raises(errors.Unavailable):
        await retry(unavailable, lambda e: False, BackoffPolicy(0.01, 0.05), 5)
    assert len(calls) == 1


async def test_a_wait_is_cut_short_when_its_event_is_set():
    backoff = Backoff(BackoffPolicy(first_s=10, max_s=10, jitter=0))
    ready = asyncio.Event()
    asyncio.get_running_loop().call_later(0.05, ready.set)
    started = time.monotonic()
    await backoff.sleep(cut_short=ready)
    assert time.monotonic() - started < 1


async def test_a_retry_tries_again_at_once_when_its_event_is_set():
    """A failover: the first try fails, the leader changes; the next try comes then,
    not after the (long) backoff."""
    changed = asyncio.Event()
    calls = []

    async def attempt():
        calls.append(time.monotonic())
        if len(calls) == 1:
            asyncio.get_running_loop().call_later(0.05, changed.set)
            raise errors.Unavailable("no leader")
        return "stored"

    started = time.monotonic()
    result = await retry(attempt, lambda e: True, BackoffPolicy(first_s=10, max_s=10, jitter=0), 30,
                         cut_short=lambda: changed)
    assert result == "stored" and len(calls) == 2 and time.monotonic() - started < 1
