"""Traces end to end: a mesh sampling every trace exports its spans to a real
OTLP/gRPC receiver started here, and one publish is one trace from the frontend
through storage (leader and follower) and the sender to each delivery and ack."""

import asyncio
import json
import threading
import time
from concurrent import futures
from typing import NamedTuple

import grpc
import pytest
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

from deploy.local import tracing_args
from helpers import Receiver, cli, new_mesh, unique
from gen.notifymesh.v1 import notify_pb2
from notifymesh.client import Client, Message

pytestmark = pytest.mark.timeout(240)


class Span(NamedTuple):
    service: str
    instance: str
    name: str
    trace_id: str
    span_id: str
    parent: str
    attributes: dict


class Collector(trace_service_pb2_grpc.TraceServiceServicer):
    """An OTLP/gRPC trace receiver keeping every span it is sent."""

    def __init__(self):
        self.spans: list[Span] = []
        self._lock = threading.Lock()
        self.server = grpc.server(futures.ThreadPoolExecutor(4))
        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(self, self.server)
        self.port = self.server.add_insecure_port("127.0.0.1:0")
        self.server.start()

    def Export(self, request, context):
        with self._lock:
            for resource_spans in request.resource_spans:
                resource = {a.key: a.value.string_value for a in resource_spans.resource.attributes}
                for scope in resource_spans.scope_spans:
                    for span in scope.spans:
                        attributes = {a.key: (a.value.string_value or a.value.int_value) for a in span.attributes}
                        self.spans.append(Span(resource["service.name"], resource["service.instance.id"], span.name,
                                               span.trace_id.hex(), span.span_id.hex(), span.parent_span_id.hex(),
                                               attributes))
        return trace_service_pb2.ExportTraceServiceResponse()

    def trace(self, trace_id: str) -> list[Span]:
        with self._lock:
            return [s for s in self.spans if s.trace_id == trace_id]


@pytest.fixture
def collector():
    made = Collector()
    yield made
    made.server.stop(0)


@pytest.fixture
def traced_mesh(tmp_path, collector):
    mesh = new_mesh(tmp_path / "mesh", tracing=tracing_args(1, f"127.0.0.1:{collector.port}"))
    yield mesh
    mesh.stop()


async def spans_of(collector: Collector, trace_id: str, done, timeout: float = 30) -> list[Span]:
    """The trace's spans once done(spans) holds (export runs every 0.5 s)."""
    deadline = time.monotonic() + timeout
    while not done(spans := collector.trace(trace_id)) and time.monotonic() < deadline:
        await asyncio.sleep(0.2)
    return spans


def one(spans: list[Span], name: str, **attributes) -> Span:
    found = [s for s in spans if s.name == name and all(s.attributes.get(k) == v for k, v in attributes.items())]
    assert len(found) == 1, (name, attributes, [(s.service, s.name, s.attributes) for s in spans])
    return found[0]


async def test_one_publish_is_one_trace_through_storage_sender_and_both_deliveries(traced_mesh, collector):
    receiver = Receiver()
    try:
        topic, pushed, streamed, pulled = (unique("traced"), unique("traced-push"), unique("traced-stream"),
                                           unique("traced-pull"))
        async with Client(traced_mesh.frontend_addr) as client:
            await client.create_topic(topic, replication_factor=3)
            await client.create_subscription(pushed, topic, push_endpoint=receiver.url)
            await client.create_subscription(streamed, topic)
            await client.create_subscription(pulled, topic)
            [message_id] = await client.publish(topic, [Message(b"traced order", {"kind": "order"})])
            got = []

            async def stream():
                async for frame in client.subscribe_frames(streamed):
                    got.extend(frame)
                    await client.acknowledge(streamed, [m.ack_id for m in frame])
                    return
            await asyncio.wait_for(stream(), 30)
            [asked] = await client.pull(pulled, wait_s=20, trace_context=True)  # a subscriber that asks
            await client.acknowledge(pulled, [asked.ack_id])
        deadline = time.monotonic() + 30
        while not receiver.requests and time.monotonic() < deadline:
            await asyncio.sleep(0.1)

        status = cli(traced_mesh, "message", "status", message_id)
        assert status.returncode == 0, status.stderr
        trace_id = json.loads(status.stdout)["trace_id"]
        assert len(trace_id) == 32 and int(trace_id, 16)
        table = cli(traced_mesh, "--output", "table", "message", "status", message_id).stdout.decode()
        assert "TRACE_ID" in table and trace_id in table

        # Subscribers see no trace context unless they ask; the push endpoint gets
        # its attempt's context as the traceparent header.
        assert [m.message.message_id for m in got] == [message_id]
        assert dict(got[0].message.attributes) == {"kind": "order"}
        [(_, headers, body)] = receiver.requests
        assert json.loads(body)["attributes"] == {"kind": "order"}

        def complete(spans):  # every process exports on its own schedule: wait for each span asserted on
            return sum(s.name.startswith("notifymesh.ack") for s in spans) >= 3 and \
                {"notifymesh.publish", "notifymesh.storage.append", "notifymesh.storage.replicate",
                 "notifymesh.deliver.pull"} <= {s.name for s in spans}
        spans = await spans_of(collector, trace_id, complete)
        by_id = {s.span_id: s for s in spans}
        publish = one(spans, "notifymesh.publish")
        assert publish.service == "notifymesh-frontend" and publish.parent == ""
        append = one(spans, "notifymesh.storage.append")
        assert append.service == "notifymesh-storage" and append.parent == publish.span_id
        replicas = [s for s in spans if s.name == "notifymesh.storage.replicate"]
        assert replicas and all(s.parent == append.span_id and s.service == "notifymesh-storage"
                                and s.instance != append.instance for s in replicas)
        for subscription, mode in ((pushed, "push"), (streamed, "stream")):
            pull = one(spans, "notifymesh.sender.pull", **{"messaging.destination.subscription.name": subscription})
            assert pull.service == "notifymesh-sender" and pull.parent == append.span_id
            deliver = one(spans, f"notifymesh.deliver.{mode}",
                          **{"messaging.destination.subscription.name": subscription})
            assert deliver.parent == pull.span_id
            assert deliver.attributes["notifymesh.delivery.attempt"] == 1
            assert deliver.attributes["messaging.message.id"] == message_id
            ack = one(spans, "notifymesh.ack", **{"messaging.destination.subscription.name": subscription})
            assert ack.parent == deliver.span_id and ack.service == "notifymesh-sender"
            if mode == "push":
                parent = headers["traceparent"].split("-")
                assert parent[:3] == ["00", trace_id, deliver.span_id] and int(parent[3], 16) & 1  # sampled
        # the one that asked has its delivery's context, for its own spans to continue
        deliver = one(spans, "notifymesh.deliver.pull", **{"messaging.destination.subscription.name": pulled})
        assert asked.message.attributes["notifymesh.traceparent"].split("-")[1:3] == [trace_id, deliver.span_id]
        ack = one(spans, "notifymesh.ack", **{"messaging.destination.subscription.name": pulled})  # a unary Pull's too
        assert ack.parent == deliver.span_id and ack.service == "notifymesh-sender"
        assert all(s.parent in by_id for s in spans if s is not publish)  # one tree
    finally:
        receiver.close()


async def test_a_notify_is_one_trace_of_fan_out_renders_and_provider_calls(traced_mesh, collector):
    template, category = unique("traced-invoice"), unique("traced-billing")
    people = [unique("traced-p") for _ in range(2)]
    async with Client(traced_mesh.frontend_addr) as client:
        await client.create_template(notify_pb2.Template(name=template, contents=[
            notify_pb2.TemplateContent(channel=notify_pb2.EMAIL, subject="Invoice {{ data.invoice }}",
                                       text="Hello {{ recipient.id }}")]))
        await client.create_category(category)
        await client.upsert_recipients([notify_pb2.Recipient(id=rid, email=f"{rid}@example.com") for rid in people])
        nid = await client.notify(template, category, people, data={"invoice": 3})
        deadline = time.monotonic() + 60
        while True:
            notification = await client.get_notification(nid)
            if len(notification.sends) == 2 and all(s.state == notify_pb2.SEND_SENT for s in notification.sends):
                break
            assert time.monotonic() < deadline, notification
            await asyncio.sleep(0.2)
    status = cli(traced_mesh, "notification", "status", nid)
    assert status.returncode == 0, status.stderr
    trace_id = json.loads(status.stdout.splitlines()[0])["trace_id"]
    assert trace_id == notification.trace_id and len(trace_id) == 32
    table = cli(traced_mesh, "--output", "table", "notification", "status", nid).stdout.decode()
    assert f"trace_id: {trace_id}" in table

    spans = await spans_of(collector, trace_id,
                           lambda spans: sum(s.name == "notifymesh.provider.send" for s in spans) >= 2)
    by_id = {s.span_id: s for s in spans}

    def ancestors(span: Span) -> list[str]:
        names = []
        while span.parent:
            span = by_id[span.parent]  # a missing parent: not one tree
            names.append(span.name)
        return names
    notify = one(spans, "notifymesh.notify")
    assert notify.service == "notifymesh-frontend" and notify.parent == ""
    page = one(spans, "notifymesh.fanout.page")
    assert page.service == "notifymesh-sender" and ancestors(page)[-1] == "notifymesh.notify"
    for rid in people:
        send = one(spans, "notifymesh.provider.send", **{"notifymesh.recipient": rid})
        chain = ancestors(send)
        # the send's handling is a child of the channel task's pull, whose append is the page's child
        assert chain[0].startswith("notifymesh.handle ") and "notifymesh.fanout.page" in chain
        assert chain[-1] == "notifymesh.notify"
        assert send.attributes["notifymesh.outcome"] == "sent"
        # a channel task's handling covers its recipients: each render names its own
        renders = [s for s in spans if s.name == "notifymesh.render" and s.parent == send.parent
                   and s.attributes.get("notifymesh.recipient") == rid]
        assert len(renders) == 1
