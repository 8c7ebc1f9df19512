"""The trace context in the message (encode, parse, stamp, hide: one place,
notifymesh.server.tracing) and the rule that subscribers see it only when they ask."""

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanContext, TraceFlags, TraceState

from gen.notifymesh.v1 import pubsub_pb2
from notifymesh import errors
from notifymesh.server import tracing, validation
from notifymesh.server.config import Config

TRACE_ID, SPAN_ID = 0x4BF92F3577B34DA6A3CE929D0E0E4736, 0x00F067AA0BA902B7
PARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def test_encode_and_parse_are_w3c_traceparent_both_ways():
    context = SpanContext(TRACE_ID, SPAN_ID, is_remote=True, trace_flags=TraceFlags(1),
                          trace_state=TraceState([("vendor", "x1")]))
    assert tracing.encode(context) == PARENT
    parsed = tracing.parse(PARENT, "vendor=x1")
    assert (parsed.trace_id, parsed.span_id, parsed.trace_flags.sampled) == (TRACE_ID, SPAN_ID, True)
    assert parsed.is_remote and parsed.trace_state.to_header() == "vendor=x1"


@pytest.mark.parametrize("value", [
    "", "garbage", "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",  # unknown version
    "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",  # short trace id
    "00-00000000000000000000000000000000-00f067aa0ba902b7-01",  # zero trace id
    "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",  # zero span id
    "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902bz-01"])  # not hex
def test_a_malformed_traceparent_is_no_context(value):
    assert tracing.parse(value) is None


def test_stamp_reads_back_from_a_message_and_hide_removes_both_attributes():
    message = pubsub_pb2.PubsubMessage(data=b"x", attributes={"kind": "order"})
    tracing.stamp(message.attributes, tracing.parse(PARENT, "vendor=x1"))
    assert dict(message.attributes) == {"kind": "order", tracing.TRACEPARENT: PARENT,
                                        tracing.TRACESTATE: "vendor=x1"}
    assert tracing.trace_id_of(message) == f"{TRACE_ID:032x}"
    assert tracing.context_of(message.attributes).span_id == SPAN_ID
    tracing.hide(message.attributes)
    assert dict(message.attributes) == {"kind": "order"}
    assert tracing.trace_id_of(message) == ""


def test_the_mark_is_in_a_serialized_message_exactly_when_it_carries_a_context():
    message = pubsub_pb2.PubsubMessage(data=b"x")
    assert tracing.MARK not in message.SerializeToString()
    tracing.stamp(message.attributes, tracing.parse(PARENT))
    assert tracing.MARK in message.SerializeToString()


def test_clients_cannot_set_the_reserved_attributes():
    for key in tracing.RESERVED:
        with pytest.raises(errors.InvalidArgument, match="reserved"):
            validation.message(0, pubsub_pb2.PubsubMessage(data=b"x", attributes={key: PARENT}), Config())


@pytest.fixture
def spans(monkeypatch):
    """Tracing on in this process, every span kept in memory."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    monkeypatch.setattr(tracing, "_enabled", True)
    monkeypatch.setattr(tracing, "tracer", lambda: provider.get_tracer("test"))
    return exporter


def named(exporter: InMemorySpanExporter, *names: str) -> list:
    finished = {span.name: span for span in exporter.get_finished_spans()}
    return [finished[name] for name in names]


def received(attempt: int = 1, traced: bool = True, data: bytes = b"hello") -> pubsub_pb2.ReceivedMessage:
    message = pubsub_pb2.PubsubMessage(data=data, message_id="m1", attributes={"kind": "order"})
    if traced:
        tracing.stamp(message.attributes, tracing.parse(PARENT, "vendor=x1"))
    return pubsub_pb2.ReceivedMessage(ack_id="a1", message=message, delivery_attempt=attempt)


def test_a_subscriber_that_did_not_ask_gets_no_context_but_the_delivery_is_traced(spans):
    delivered = {}
    raws = [received(attempt=2).SerializeToString()]
    [out] = tracing.received_for(raws, "sub", "stream", keep_context=False, delivered=delivered)
    assert dict(pubsub_pb2.ReceivedMessage.FromString(out).message.attributes) == {"kind": "order"}
    pull, deliver = named(spans, "notifymesh.sender.pull", "notifymesh.deliver.stream")
    assert pull.name == "notifymesh.sender.pull" and pull.parent.span_id == SPAN_ID
    assert deliver.name == "notifymesh.deliver.stream" and deliver.parent.span_id == pull.context.span_id
    assert deliver.context.trace_id == TRACE_ID and deliver.attributes["notifymesh.delivery.attempt"] == 2
    assert delivered["a1"].context.span_id == deliver.context.span_id


def test_a_subscriber_that_asked_gets_its_delivery_span_as_context(spans):
    [out] = tracing.received_for([received().SerializeToString()], "sub", "pull", keep_context=True)
    attributes = pubsub_pb2.ReceivedMessage.FromString(out).message.attributes
    [deliver] = named(spans, "notifymesh.deliver.pull")
    assert tracing.context_of(attributes).span_id == deliver.context.span_id
    assert attributes[tracing.TRACESTATE] == "vendor=x1" and attributes["kind"] == "order"


def test_untraced_messages_pass_as_they_are_with_no_span(spans):
    raws = [received(traced=False).SerializeToString(),
            received(traced=False, data=b"data naming " + tracing.MARK).SerializeToString()]
    assert tracing.received_for(raws, "sub", "stream", keep_context=False) is raws
    assert spans.get_finished_spans() == ()


def test_with_tracing_off_a_stamped_message_is_still_hidden_and_no_span_is_made(spans, monkeypatch):
    monkeypatch.setattr(tracing, "_enabled", False)
    [out] = tracing.received_for([received().SerializeToString()], "sub", "stream", keep_context=True)
    assert dict(pubsub_pb2.ReceivedMessage.FromString(out).message.attributes) == {"kind": "order"}
    assert spans.get_finished_spans() == ()


def test_a_push_keeps_the_pull_context_for_its_worker_whose_span_hides_it(spans):
    [out] = tracing.received_for([received().SerializeToString()], "sub", "push", keep_context=False)
    pushed = pubsub_pb2.ReceivedMessage.FromString(out)
    [pull] = spans.get_finished_spans()
    assert tracing.context_of(pushed.message.attributes).span_id == pull.context.span_id
    span = tracing.push_span("sub", pushed)
    assert dict(pushed.message.attributes) == {"kind": "order"}  # the body the endpoint gets
    tracing.end_push_span(span, "HTTP 500")
    deliver = spans.get_finished_spans()[-1]
    assert deliver.parent.span_id == pull.context.span_id and not deliver.status.is_ok


def test_a_message_status_shows_the_trace_id_not_the_attributes():
    status = pubsub_pb2.MessageStatus(message=received().message)
    tracing.status_with_trace_id(status)
    assert status.trace_id == f"{TRACE_ID:032x}" and dict(status.message.attributes) == {"kind": "order"}


def test_an_append_of_several_traces_is_a_child_of_the_first_linked_to_the_others(spans):
    other = "00-11111111111111111111111111111111-2222222222222222-01"
    messages = [pubsub_pb2.PubsubMessage(data=b"a"), pubsub_pb2.PubsubMessage(data=b"b"),
                pubsub_pb2.PubsubMessage(data=b"c")]
    tracing.stamp(messages[0].attributes, tracing.parse(PARENT))
    tracing.stamp(messages[1].attributes, tracing.parse(other))
    with tracing.append_span("t/0", messages):
        pass
    [append] = spans.get_finished_spans()
    assert append.parent.span_id == SPAN_ID
    assert [link.context.trace_id for link in append.links] == [int("1" * 32, 16)]
    # the parent's trace continues from the append; the other trace's message keeps its own context
    assert tracing.context_of(messages[0].attributes).span_id == append.context.span_id
    assert tracing.encode(tracing.context_of(messages[1].attributes)) == other
    assert tracing.MARK not in messages[2].SerializeToString()
