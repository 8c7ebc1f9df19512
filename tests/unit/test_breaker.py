"""The providers' circuit breaker (sender/breaker.py) and the failover of
sender/notifications.py ChannelProviders, on a fake clock and fake adapters."""

import asyncio
import re
import types

from gen.notifymesh.v1 import notify_pb2
from metadata.bootstrap import provider_unavailable_rule
from sender import breaker
from sender.breaker import Breaker
from sender.channel_worker import Failed, Outgoing, Sent
from sender.notifications import ChannelProviders
from sender.providers import PermanentSendError, SendResult, TransientSendError


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_opens_after_failures_in_a_row_then_half_opens_one_trial_and_closes_on_success():
    clock = Clock()
    b = Breaker(lambda: 3, lambda: 10.0, clock)
    for _ in range(2):
        b.failed(b.permit(), "HTTP 503")
    b.succeeded(b.permit())  # a success in between starts the count again
    for _ in range(2):
        b.failed(b.permit(), "HTTP 503")
    assert b.state == breaker.CLOSED
    b.failed(b.permit(), "HTTP 503")
    assert b.state == breaker.OPEN and b.permit() is None
    assert b.status().retry_in_s == 10.0 and b.status().last_error == "HTTP 503"
    clock.now += 9.9
    assert b.permit() is None
    clock.now += 0.1
    trial = b.permit()
    assert trial == breaker.Permit(True) and b.state == breaker.HALF_OPEN
    assert b.permit() is None  # one trial at a time
    b.succeeded(trial)
    assert b.state == breaker.CLOSED and b.permit() == breaker.Permit(False)
    assert b.status().failures == 0  # a fresh window: the old failures do not open it again


def test_a_failed_trial_opens_it_for_another_cool_down():
    clock = Clock()
    b = Breaker(lambda: 1, lambda: 5.0, clock)
    b.failed(b.permit(), "timeout")
    clock.now += 5
    trial = b.permit()
    b.failed(trial, "timeout again")
    assert b.state == breaker.OPEN and b.status().retry_in_s == 5.0
    clock.now += 5
    abandoned = b.permit()
    b.abandoned(abandoned)  # cancelled: the next send may try
    assert b.permit() == breaker.Permit(True)


def test_a_late_answer_of_a_send_from_before_it_opened_decides_nothing():
    clock = Clock()
    b = Breaker(lambda: 2, lambda: 5.0, clock)
    early = b.permit()
    b.failed(b.permit(), "x")
    b.failed(b.permit(), "x")
    assert b.state == breaker.OPEN
    b.succeeded(early)
    assert b.state == breaker.OPEN


def test_opens_on_the_error_rate_over_the_window_and_forgets_older_sends():
    clock = Clock()
    b = Breaker(lambda: 100, lambda: 30.0, clock)
    for i in range(breaker.MIN_SENDS - 2):  # alternating: never 2 in a row, half of them failed
        (b.failed(b.permit(), "503") if i % 2 else b.succeeded(b.permit()))
        clock.now += 0.1
    assert b.state == breaker.CLOSED and b.status().error_rate == 0.5
    clock.now += breaker.WINDOW_S  # those fell out of the window
    assert b.status().sends == 0
    for i in range(breaker.MIN_SENDS):
        (b.failed(b.permit(), "503") if i % 2 else b.succeeded(b.permit()))
    assert b.state == breaker.OPEN
    rate = Breaker(lambda: 100, lambda: 30.0, clock)
    for i in range(breaker.MIN_SENDS * 2):  # 1 in 3 failed: stays closed
        (rate.failed(rate.permit(), "503") if i % 3 == 0 else rate.succeeded(rate.permit()))
    assert rate.state == breaker.CLOSED


class FakeAdapter:
    def __init__(self, record):
        self.record, self.name, self.sent, self.closed = record, record.kind, [], False
        self.fail: Exception | None = None

    async def send(self, msg) -> SendResult:
        if self.fail is not None:
            raise self.fail
        self.sent.append(msg.to)
        return SendResult(self.name, f"{self.record.name}-{len(self.sent)}")

    async def close(self) -> None:
        self.closed = True


class Providers:
    """ChannelProviders over a fake mirror (groups by channel name) and fake adapters."""

    def __init__(self, *records):
        self.clock = Clock()
        self.mirror = types.SimpleNamespace(groups={})
        self.adapters: dict[str, FakeAdapter] = {}
        for record in records:
            self.set(record)
        config = types.SimpleNamespace(provider_breaker_failures=2, provider_breaker_cooldown_s=10.0)
        self.providers = ChannelProviders(types.SimpleNamespace(providers=self.mirror), config, self._make,
                                          self.clock)

    def set(self, record):
        self.mirror.groups.setdefault("sms", {})[f"sms/{record.name}"] = record

    def _make(self, record):
        adapter = self.adapters[record.name] = FakeAdapter(record)
        return adapter

    async def send(self, to="+41790000000"):
        return await self.providers.send(Outgoing(notify_pb2.SMS, to, text="hi"))


def sms(name, priority, kind="sms_http"):
    return notify_pb2.Provider(channel=notify_pb2.SMS, kind=kind, name=name, priority=priority)


async def test_sends_go_to_the_first_by_priority_and_move_on_while_its_breaker_is_open():
    p = Providers(sms("sms-b", 2), sms("sms-a", 1))
    assert await p.send() == Sent("sms-a", "sms-a-1")
    p.adapters["sms-a"].fail = TransientSendError("HTTP 503: down")
    assert await p.send() == Failed(True, "HTTP 503: down", "sms-a", None)  # counted, still closed
    assert await p.send() == Failed(True, "HTTP 503: down", "sms-a", None)  # opens
    assert await p.send() == Sent("sms-b", "sms-b-1")
    status = {s.name: s for s in p.providers.status()}
    assert status["sms-a"].state == notify_pb2.BREAKER_OPEN and status["sms-a"].error_rate == 2 / 3
    assert status["sms-a"].last_error == "HTTP 503: down" and status["sms-a"].HasField("retry_time")
    assert status["sms-b"].state == notify_pb2.BREAKER_CLOSED
    p.clock.now += 10  # half-open: one trial goes to sms-a, and it recovered
    p.adapters["sms-a"].fail = None
    assert await p.send() == Sent("sms-a", "sms-a-2")
    assert await p.send() == Sent("sms-a", "sms-a-3")


async def test_a_failed_half_open_trial_passes_its_send_on_to_the_next_provider_and_returns_the_failure():
    p = Providers(sms("sms-a", 1), sms("sms-b", 2))
    await p.send()
    p.adapters["sms-a"].fail = TransientSendError("connection refused")
    await p.send()
    await p.send()  # opens
    for _ in range(3):  # the lone straggler that is the trial each time it comes back
        p.clock.now += 10
        assert await p.send() == Sent("sms-b", f"sms-b-{_ + 1}",
                                      trials_failed=(Failed(True, "connection refused", "sms-a"),))
        assert p.providers.providers(notify_pb2.SMS)[0].breaker.state == breaker.OPEN
    p.adapters["sms-b"].fail = TransientSendError("HTTP 503")  # the next fails too: both failures come back
    p.clock.now += 10
    failed = await p.send()
    assert failed[:3] == (True, "HTTP 503", "sms-b")
    assert failed.trials_failed == (Failed(True, "connection refused", "sms-a"),)
    p.adapters["sms-a"].fail = PermanentSendError("HTTP 400: not a mobile number")  # a trial the provider answered
    p.clock.now += 10
    assert await p.send() == Failed(False, "HTTP 400: not a mobile number", "sms-a")


async def test_every_breaker_open_fails_transiently_naming_them_until_the_first_half_opens():
    p = Providers(sms("sms-a", 1), sms("sms-b", 2))
    await p.send()
    await p.send()  # both made
    for adapter in p.adapters.values():
        adapter.fail = TransientSendError("connection refused")
    for _ in range(4):
        await p.send()
    failed = await p.send()
    assert failed.transient and failed.provider == "" and failed.retry_after_s == 10.0
    assert failed.reason.startswith("provider unavailable: no sms provider takes sends now")
    assert re.search(provider_unavailable_rule().reason, failed.reason)  # channel subscriptions redrive it
    assert "sms-a: circuit open (connection refused)" in failed.reason and "sms-b" in failed.reason
    p.clock.now += 4
    assert (await p.send()).retry_after_s == 6.0


async def test_a_permanent_failure_is_the_message_s_and_keeps_the_breaker_closed():
    p = Providers(sms("sms-a", 1), sms("sms-b", 2))
    await p.send()
    p.adapters["sms-a"].fail = PermanentSendError("HTTP 400: not a mobile number")
    for _ in range(5):
        assert await p.send() == Failed(False, "HTTP 400: not a mobile number", "sms-a")
    assert p.providers.providers(notify_pb2.SMS)[0].breaker.state == breaker.CLOSED


async def test_a_changed_record_gets_a_new_adapter_and_a_deleted_one_is_closed():
    p = Providers(sms("sms-a", 1), sms("sms-b", 2))
    await p.send()
    first = p.adapters["sms-a"]
    p.set(sms("sms-a", 3))  # now after sms-b
    assert (await p.send()).provider == "sms-b"
    del p.mirror.groups["sms"]["sms/sms-b"]
    old_b = p.adapters["sms-b"]
    assert (await p.send()).provider == "sms-a"
    await asyncio.sleep(0)
    assert first.closed and old_b.closed
    legacy = notify_pb2.Provider(channel=notify_pb2.SMS, kind="sms_http")  # stored before names: "default"
    p.mirror.groups["sms"] = {"sms": legacy}
    assert (await p.send()).provider == "default"
    p.mirror.groups.clear()
    assert await p.send() == Failed(True, "no sms provider is set")


async def test_a_push_goes_to_a_provider_of_its_devices_platform():
    p = Providers()
    for record in (notify_pb2.Provider(channel=notify_pb2.PUSH, kind="fcm", name="fcm", priority=1),
                   notify_pb2.Provider(channel=notify_pb2.PUSH, kind="apns", name="apns", priority=2)):
        p.mirror.groups.setdefault("push", {})[f"push/{record.name}"] = record

    async def push(platform):
        return await p.providers.send(Outgoing(notify_pb2.PUSH, "token", text="hi", platform=platform))
    assert await push("apns") == Sent("apns", "apns-1")  # not the first by priority: it cannot reach the device
    assert await push("fcm") == Sent("fcm", "fcm-1")
    del p.mirror.groups["push"]["push/apns"]
    assert await push("apns") == Failed(False, "no push provider sends to apns devices")
