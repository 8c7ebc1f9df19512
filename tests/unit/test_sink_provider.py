"""The sink provider (load tests, dry runs): every message accepted at once, each
with a provider message id of its own."""

from gen.notifymesh.v1 import notify_pb2
from sender.providers import OutgoingMessage, provider_for


async def test_the_sink_accepts_at_once_with_distinct_ids():
    sinks = [provider_for(notify_pb2.Provider(channel=notify_pb2.SMS, kind="sink")) for _ in range(2)]
    message = OutgoingMessage(notify_pb2.SMS, "+14155550100", text="hi")
    ids = [(await sink.send(message)) for sink in sinks for _ in range(3)]
    assert {result.provider for result in ids} == {"sink"}
    assert len({result.provider_message_id for result in ids}) == 6
    for sink in sinks:
        await sink.close()
