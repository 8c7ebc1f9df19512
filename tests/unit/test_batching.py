"""Coalescer: concurrent requests for one key share calls; results and errors reach each caller."""

import asyncio

import pytest

from notifymesh.batching import Coalescer


async def test_requests_arriving_during_a_call_go_together_in_the_next():
    calls = []
    gate = asyncio.Event()

    async def send(key, items):
        calls.append((key, list(items)))
        await gate.wait()
        return [f"{key}:{item}" for item in items]

    coalescer = Coalescer(send, max_items=4)
    first = asyncio.create_task(coalescer.submit("t", [1]))
    await asyncio.sleep(0)
    rest = [asyncio.create_task(coalescer.submit("t", [i, i + 10])) for i in (2, 3, 4)]
    other = asyncio.create_task(coalescer.submit("u", [9]))
    await asyncio.sleep(0.01)
    gate.set()
    assert await first == ["t:1"]
    assert [await r for r in rest] == [["t:2", "t:12"], ["t:3", "t:13"], ["t:4", "t:14"]]
    assert await other == ["u:9"]
    # idle key: sent at once; then whole requests up to max_items per call
    assert calls == [("t", [1]), ("u", [9]), ("t", [2, 12, 3, 13]), ("t", [4, 14])]


async def test_an_error_fails_every_request_of_the_merged_call_only():
    gate = asyncio.Event()
    sent = []

    async def send(key, items):
        sent.append(list(items))
        await gate.wait()
        if "bad" in items:
            raise ValueError("refused")
        return None

    coalescer = Coalescer(send)
    first = asyncio.create_task(coalescer.submit("k", ["ok"]))
    await asyncio.sleep(0)
    merged = [asyncio.create_task(coalescer.submit("k", [x])) for x in ("bad", "also")]
    await asyncio.sleep(0.01)
    gate.set()
    assert await first is None
    for task in merged:
        with pytest.raises(ValueError):
            await task
    assert await coalescer.submit("k", ["later"]) is None
    assert sent == [["ok"], ["bad", "also"], ["later"]]


async def test_max_bytes_splits_but_always_sends_one_request():
    sizes = []

    async def send(key, items):
        sizes.append(sum(len(i) for i in items))
        await asyncio.sleep(0.01)

    coalescer = Coalescer(send, max_bytes=10, size_of=len)
    await asyncio.gather(*(coalescer.submit("k", [b"x" * n]) for n in (1, 6, 6, 30)))
    assert sizes == [7, 6, 30]  # all four waiting when the drain starts


async def test_a_call_cancelled_from_inside_fails_its_batch_and_the_waiting_requests_go_on():
    """A gRPC call cancelled by another caller's failure raises CancelledError in a
    drain nobody cancelled: the requests queued behind it must still be sent."""
    from notifymesh import errors
    calls = []

    async def send(key, items):
        calls.append(items)
        await asyncio.sleep(0.01)
        if len(calls) == 1:
            raise asyncio.CancelledError()
        return items

    coalescer = Coalescer(send)
    first = asyncio.create_task(coalescer.submit("k", [1]))
    await asyncio.sleep(0)
    second = asyncio.create_task(coalescer.submit("k", [2]))
    assert await asyncio.wait_for(second, 1) == [2]
    with pytest.raises(errors.Unavailable, match="cancelled"):
        await first


async def test_the_running_loop_is_looked_up_once_while_it_runs(monkeypatch):
    """asyncio.get_running_loop() makes a system call in Python 3.11: a busy sender's
    every submit paid for it."""
    looked_up = []
    running_loop = asyncio.get_running_loop
    monkeypatch.setattr(asyncio, "get_running_loop", lambda: looked_up.append(1) or running_loop())

    async def send(key, items):
        return items

    coalescer = Coalescer(send)
    for i in range(5):
        assert await coalescer.submit("k", [i]) == [i]
    assert len(looked_up) == 1


def test_a_coalescer_serves_one_loop_after_another():
    async def send(key, items):
        await asyncio.sleep(0)
        return items

    coalescer = Coalescer(send)
    assert asyncio.run(coalescer.submit("k", [1])) == [1]
    assert asyncio.run(coalescer.submit("k", [2])) == [2]


async def test_a_linger_has_an_idle_keys_first_call_wait_for_the_requests_after_it():
    calls = []

    async def send(key, items):
        calls.append(list(items))

    coalescer = Coalescer(send, linger_s=0.05)
    first = asyncio.create_task(coalescer.submit("t", [1]))
    await asyncio.sleep(0.01)  # a timer due before the linger's: within it
    second = asyncio.create_task(coalescer.submit("t", [2]))
    await asyncio.gather(first, second)
    assert calls == [[1, 2]]
    # Cancelled while it lingers (the loop stopping), it leaves no caller waiting.
    waiting = asyncio.create_task(coalescer.submit("t", [3]))
    await asyncio.sleep(0.01)
    for drain in list(coalescer._drains):
        drain.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(waiting, 1)
    assert calls == [[1, 2]]
