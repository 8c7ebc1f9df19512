"""Traces of every service: OpenTelemetry's SDK (a TracerProvider on the resource
telemetry builds: service name notifymesh-<kind>, instance id, version).

Sampling is parent-based on a trace-id ratio (`--trace-sample-ratio`, default
0.01); ratio 0 turns tracing off: no sampler runs, no span is made, no hook does
any work. Spans go to an OTLP/gRPC collector when `--otlp-endpoint` is set
(`host:port` plaintext, `https://host:port` TLS, the exporter's own
OTEL_EXPORTER_OTLP_CERTIFICATE for a private CA), through a BatchSpanProcessor
whose queue holds at most SPAN_QUEUE spans (more are dropped, never waited for);
without an endpoint sampled spans are still made, so trace ids exist.

The W3C trace context travels in the message: a sampled message carries the
reserved attributes notifymesh.traceparent (and notifymesh.tracestate when there
is one), written and read here only (encode/parse). Unsampled messages carry
nothing, so they cost storage and the senders nothing but a substring test of
their bytes. Subscribers do not see the attributes unless they ask
(SubscribeRequest/PullRequest.trace_context): see received_for().
"""

import logging
import os
from contextlib import contextmanager, nullcontext
from typing import Iterable, Mapping, NamedTuple

from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, ParentBased, TraceIdRatioBased
from opentelemetry.trace import Link, NonRecordingSpan, SpanContext, SpanKind, TraceFlags, TraceState

from gen.notifymesh.v1 import pubsub_pb2
from notifymesh.server import telemetry

log = logging.getLogger(__name__)

TRACEPARENT = "notifymesh.traceparent"
TRACESTATE = "notifymesh.tracestate"
RESERVED = (TRACEPARENT, TRACESTATE)
MARK = TRACEPARENT.encode()  # in a serialized message exactly when it carries a context
TRACER_NAME = "notifymesh"
DEFAULT_RATIO = 0.01
# One export's bound: a collector that accepts connections and never answers held
# every export, and so the process's shutdown, for the exporter's default 10 s
# (measured); spans of an export that times out are dropped, as beyond SPAN_QUEUE.
EXPORT_TIMEOUT_S = 2
SPAN_QUEUE = 2048  # the BatchSpanProcessor's bound: spans waiting for export beyond it are dropped
EXPORT_BATCH = 512
EXPORT_DELAY_MS = 500
MAX_LINKS = 32  # links of one batch span (an append of many traces' messages)
MAX_TRACESTATE_BYTES = 512  # W3C: at most 32 members; a longer one is not stored

_provider: TracerProvider | None = None
_enabled = False
_tracer: trace.Tracer | None = None


class Settings(NamedTuple):
    ratio: float = DEFAULT_RATIO
    endpoint: str = ""  # OTLP/gRPC collector; "" exports nothing


def settings_of(args) -> Settings:
    """From the process flags, then OTEL_TRACES_SAMPLER_ARG / OTEL_EXPORTER_OTLP_ENDPOINT."""
    ratio = getattr(args, "trace_sample_ratio", None)
    if ratio is None:
        ratio = float(os.environ.get("OTEL_TRACES_SAMPLER_ARG") or DEFAULT_RATIO)
    if not 0 <= ratio <= 1:
        raise SystemExit(f"--trace-sample-ratio must be between 0 and 1, not {ratio}")
    endpoint = getattr(args, "otlp_endpoint", None) or os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT", "")
    return Settings(ratio, endpoint)


def add_arguments(p) -> None:
    p.add_argument("--trace-sample-ratio", type=float,
                   help=f"traces: share of new traces sampled, 0 to 1 (0: tracing off; default "
                        f"OTEL_TRACES_SAMPLER_ARG or {DEFAULT_RATIO}); a sampled parent is always followed")
    p.add_argument("--otlp-endpoint", help="traces: OTLP/gRPC collector host:port (https://host:port for TLS); "
                                           "default OTEL_EXPORTER_OTLP_ENDPOINT, else none")


def setup(kind: str, node_id: str, settings: Settings) -> None:
    """The process's TracerProvider; once per process."""
    global _provider, _enabled
    if _provider is not None:
        return
    sampler = ParentBased(TraceIdRatioBased(settings.ratio)) if settings.ratio > 0 else ALWAYS_OFF
    _provider = TracerProvider(resource=telemetry.resource(kind, node_id), sampler=sampler)
    if settings.endpoint:
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
        endpoint = settings.endpoint
        exporter = OTLPSpanExporter(endpoint=endpoint, insecure=not endpoint.startswith("https://"),
                                    timeout=EXPORT_TIMEOUT_S)
        _provider.add_span_processor(BatchSpanProcessor(exporter, max_queue_size=SPAN_QUEUE,
                                                        max_export_batch_size=EXPORT_BATCH,
                                                        schedule_delay_millis=EXPORT_DELAY_MS))
    trace.set_tracer_provider(_provider)
    _enabled = settings.ratio > 0


def shutdown() -> None:
    """Exports what is queued (at the end of the process)."""
    if _provider is not None:
        _provider.shutdown()


def enabled() -> bool:
    """False with ratio 0 (and before setup: unit tests): the hooks do nothing."""
    return _enabled


def tracer() -> trace.Tracer:
    global _tracer
    if _tracer is None:  # once: the version is read from the installed package's metadata (a file lookup)
        _tracer = trace.get_tracer(TRACER_NAME, telemetry.version())
    return _tracer


# -- the context in the message: encode and parse, here only ---------------------

def encode(context: SpanContext) -> str:
    """W3C traceparent of a span context."""
    return f"00-{context.trace_id:032x}-{context.span_id:016x}-{int(context.trace_flags):02x}"


def parse(traceparent: str, tracestate: str = "") -> SpanContext | None:
    """A remote span context from W3C traceparent (and tracestate), None if malformed."""
    parts = traceparent.split("-")
    if len(parts) != 4 or parts[0] != "00" or len(parts[1]) != 32 or len(parts[2]) != 16 or len(parts[3]) != 2:
        return None
    try:
        trace_id, span_id, flags = int(parts[1], 16), int(parts[2], 16), int(parts[3], 16)
    except ValueError:
        return None
    if not trace_id or not span_id:
        return None
    state = TraceState.from_header([tracestate]) if tracestate else None
    return SpanContext(trace_id, span_id, is_remote=True, trace_flags=TraceFlags(flags), trace_state=state)


def stamp(attributes, context: SpanContext) -> None:
    """Writes context into a message's attributes (a protobuf map or a dict)."""
    attributes[TRACEPARENT] = encode(context)
    state = context.trace_state.to_header() if context.trace_state else ""
    if state and len(state) <= MAX_TRACESTATE_BYTES:
        attributes[TRACESTATE] = state
    elif TRACESTATE in attributes:
        del attributes[TRACESTATE]


def context_of(attributes: Mapping[str, str]) -> SpanContext | None:
    """The context a message carries, None without one."""
    value = attributes.get(TRACEPARENT)
    return parse(value, attributes.get(TRACESTATE, "")) if value else None


def hide(attributes) -> None:
    """Removes the reserved attributes."""
    for key in RESERVED:
        if key in attributes:
            del attributes[key]


def trace_id_of(message: pubsub_pb2.PubsubMessage) -> str:
    """32 hex digits of the trace the message is part of, "" when untraced."""
    context = context_of(message.attributes)
    return f"{context.trace_id:032x}" if context is not None else ""


def _parent(context: SpanContext | None):
    return trace.set_span_in_context(NonRecordingSpan(context)) if context is not None else None


# -- spans of the publish path ----------------------------------------------------

def incoming(metadata: Iterable[tuple[str, str]] | None) -> SpanContext | None:
    """The W3C context of an incoming gRPC call's metadata (traceparent, tracestate)."""
    parent, state = "", ""
    for key, value in metadata or ():
        if key == "traceparent":
            parent = value
        elif key == "tracestate":
            state = value
    return parse(parent, state) if parent else None


@contextmanager
def publish_span(grpc_context, topic: str, count: int):
    """Frontend Publish: the current span while the call runs, a child of the
    caller's context if its metadata has one (stamp_current marks the messages)."""
    if not _enabled:
        yield None
        return
    with tracer().start_as_current_span(
            "notifymesh.publish", context=_parent(incoming(grpc_context.invocation_metadata())),
            kind=SpanKind.SERVER,
            attributes={"messaging.destination.name": topic, "messaging.batch.message_count": count}) as span:
        yield span


@contextmanager
def notify_span(grpc_context, template: str):
    """Frontend Notify: as publish_span; the job it publishes is stamped (Gateway.publish)."""
    if not _enabled:
        yield None
        return
    with tracer().start_as_current_span(
            "notifymesh.notify", context=_parent(incoming(grpc_context.invocation_metadata())),
            kind=SpanKind.SERVER, attributes={"notifymesh.template": template}) as span:
        yield span


@contextmanager
def handle_span(subscription: str, received: pubsub_pb2.ReceivedMessage):
    """A pipeline worker's handling of a traced message of an internal subscription
    (the fan-out's, a channel's): the current span while it runs, a child of the
    sender's pull; the reserved attributes are removed from the message."""
    span = begin_handle_span(subscription, received)
    try:
        with within(span):
            yield span
    finally:
        end(span)


def begin_handle_span(subscription: str, received: pubsub_pb2.ReceivedMessage) -> trace.Span | None:
    """handle_span's span, started, not made current: for a message handled in a
    batch with others (sender/channel_worker.py), whose handler makes it current
    around each of the message's steps (within) and ends it (end). None when the
    message is not traced; the reserved attributes are removed from the message."""
    attributes = received.message.attributes
    if TRACEPARENT not in attributes:
        return None
    context = context_of(attributes)
    hide(attributes)  # also with tracing off here: a message stamped elsewhere, or before
    if context is None or not _enabled:
        return None
    return tracer().start_span(
        f"notifymesh.handle {subscription}", context=_parent(context), kind=SpanKind.CONSUMER,
        attributes={"messaging.destination.subscription.name": subscription,
                    "messaging.message.id": received.message.message_id,
                    "notifymesh.delivery.attempt": received.delivery_attempt})


# What within and child_span give when nothing is traced: one, reused (a nullcontext
# keeps no state), and no generator made per call: child_span as a @contextmanager
# took 1.3 us a call untraced against 0.4 now, twice a send (docs/benchmarks.md).
_UNTRACED = nullcontext()


def within(span: trace.Span | None):
    """span (from begin_handle_span) as the current span while the block runs."""
    return _UNTRACED if span is None else trace.use_span(span, end_on_exit=False)


def end(span: trace.Span | None) -> None:
    if span is not None:
        span.end()


def child_span(name: str, **attributes):
    """A step of the current traced work (a fan-out page, a render, a provider
    call), made current while the block runs (`with ... as span`); span None when
    the current span is not recorded."""
    if not _enabled or not trace.get_current_span().is_recording():
        return _UNTRACED
    return tracer().start_as_current_span(name, attributes=attributes)


def current_trace_id() -> str:
    """The current span's trace id when it is sampled, else ""."""
    context = trace.get_current_span().get_span_context()
    return f"{context.trace_id:032x}" if _enabled and context.trace_flags.sampled else ""


def stamp_current(messages) -> None:
    """Stamps the current span's context into each message, if it is sampled (after
    the messages were checked: the reserved attributes are not the client's)."""
    if not _enabled:
        return
    context = trace.get_current_span().get_span_context()
    if context.trace_flags.sampled:
        for message in messages:
            stamp(message.attributes, context)


@contextmanager
def append_span(shard: str, messages):
    """Storage leader Append of a group-committed batch: a child of its first sampled
    message's context, linked to the other traces' (at most MAX_LINKS). The messages
    of the parent's trace are stamped with the append's context, so their
    replication and deliveries are its children."""
    # `in` first: a third of a get's cost on a message without the attribute (the usual one)
    sampled = [] if not _enabled else [(m, c) for m in messages
                                       if TRACEPARENT in m.attributes and (c := context_of(m.attributes)) is not None]
    if not sampled:
        yield None
        return
    first = sampled[0][1]
    links, seen = [], {first.trace_id}
    for _, context in sampled:
        if context.trace_id not in seen and len(links) < MAX_LINKS:
            seen.add(context.trace_id)
            links.append(Link(context))
    with tracer().start_as_current_span("notifymesh.storage.append", context=_parent(first), kind=SpanKind.SERVER,
                                        links=links, attributes={"notifymesh.shard": shard,
                                                                 "messaging.batch.message_count": len(messages)}) as span:
        own = span.get_span_context()
        if own.trace_flags.sampled:
            for message, context in sampled:
                if context.trace_id == own.trace_id:
                    stamp(message.attributes, own)
        yield span


def contexts_in(raws: Iterable[bytes], message_of) -> list[SpanContext]:
    """The contexts of those serialized entries that carry one (message_of: the
    entry's PubsubMessage, parsed only for those)."""
    if not _enabled:
        return []
    found = []
    for raw in raws:
        if MARK in raw and (context := context_of(message_of(raw).attributes)) is not None:
            found.append(context)
    return found


def replicate_span(shard: str, contexts: list[SpanContext], entries: int):
    """A follower's write of a leader's entries that carry contexts: a child of the
    first (the leader's append), linked to the others'. A plain span: the caller ends it."""
    first = contexts[0]
    links = [Link(c) for c in {c.span_id: c for c in contexts[1:MAX_LINKS + 1]}.values() if c.span_id != first.span_id]
    return tracer().start_span("notifymesh.storage.replicate", context=_parent(first), links=links,
                               attributes={"notifymesh.shard": shard, "notifymesh.entries": entries})


# -- spans of delivery ------------------------------------------------------------

class Delivered(NamedTuple):
    """A traced delivery: the span context the ack span is a child of."""
    context: SpanContext


def pulled_span(subscription: str, received: pubsub_pb2.ReceivedMessage, context: SpanContext, mode: str):
    """The sender's pull of one traced message for a subscription (a child of its
    context); ended by the caller."""
    return tracer().start_span("notifymesh.sender.pull", context=_parent(context), kind=SpanKind.CONSUMER,
                               attributes=_delivery_attributes(subscription, received, mode))


def deliver_span(subscription: str, received: pubsub_pb2.ReceivedMessage, parent: SpanContext, mode: str):
    """One delivery attempt (push, stream or pull), a child of the pull; ended by the caller."""
    return tracer().start_span(f"notifymesh.deliver.{mode}", context=_parent(parent), kind=SpanKind.PRODUCER,
                               attributes=_delivery_attributes(subscription, received, mode))


def _delivery_attributes(subscription: str, received: pubsub_pb2.ReceivedMessage, mode: str) -> dict:
    return {"messaging.destination.subscription.name": subscription,
            "messaging.message.id": received.message.message_id,
            "notifymesh.delivery.attempt": received.delivery_attempt, "notifymesh.delivery.mode": mode}


def push_span(subscription: str, received: pubsub_pb2.ReceivedMessage):
    """A push attempt of a traced message (a child of the sender's pull, whose
    context hand-out left in it), with the reserved attributes removed; None when
    untraced. Ended by end_push_span."""
    if TRACEPARENT not in received.message.attributes:
        return None
    context = context_of(received.message.attributes)
    hide(received.message.attributes)  # also with tracing off here: a message stamped elsewhere, or before
    if context is None or not _enabled:
        return None
    span = deliver_span(subscription, received, context, "push")
    return span if span.get_span_context().trace_flags.sampled else None


def end_push_span(span, error: str) -> None:
    if error:
        span.set_status(trace.Status(trace.StatusCode.ERROR, error))
    span.end()


def ack_span(subscription: str, delivered: Delivered, outcome: str) -> None:
    """The answer to a traced delivery (ack, nack), a child of it."""
    tracer().start_span(f"notifymesh.{outcome}", context=_parent(delivered.context),
                        attributes={"messaging.destination.subscription.name": subscription}).end()


def any_traced(raws: list[bytes]) -> bool:
    """Whether a serialized message of raws may carry a trace context."""
    return any(MARK in raw for raw in raws)


def received_for(raws: list[bytes], subscription: str, mode: str, keep_context: bool,
                 delivered: dict[str, Delivered] | None = None) -> list[bytes]:
    """Serialized ReceivedMessages as a subscriber gets them: each traced one gets a
    pull and a delivery span (attempt as attribute), and its reserved attributes
    removed, or, when the subscriber asked (keep_context), set to the delivery's
    context. mode "push": the pull span only, its context kept for the push worker
    (which makes the delivery span and hides the attributes). delivered: where each traced delivery's context is kept by ack id
    (the caller bounds it). Untraced messages pass as they are."""
    if not any_traced(raws):  # the usual batch
        return raws
    out = raws
    for index, raw in enumerate(raws):
        if MARK not in raw:
            continue
        received = pubsub_pb2.ReceivedMessage.FromString(raw)
        context = context_of(received.message.attributes)
        if context is None:  # the mark was in the data
            continue
        if not _enabled:  # stamped elsewhere, or before tracing was turned off here: hidden all the same
            if mode != "push":
                hide(received.message.attributes)
                out = list(out) if out is raws else out
                out[index] = received.SerializeToString()
            continue
        pull = pulled_span(subscription, received, context, mode)
        if mode == "push":  # the push worker's delivery span covers its request: a child of the pull
            own = pull.get_span_context()
        else:
            span = deliver_span(subscription, received, pull.get_span_context(), mode)
            own = span.get_span_context()
            span.end()
        pull.end()
        if (keep_context or mode == "push") and own.trace_flags.sampled:
            stamp(received.message.attributes, own)
        else:
            hide(received.message.attributes)
        if delivered is not None and mode != "push" and own.trace_flags.sampled:
            delivered[received.ack_id] = Delivered(own)
        if out is raws:
            out = list(raws)
        out[index] = received.SerializeToString()
    return out


def status_with_trace_id(status: pubsub_pb2.MessageStatus) -> pubsub_pb2.MessageStatus:
    """MessageStatus.trace_id from the stored context; the reserved attributes not shown."""
    status.trace_id = trace_id_of(status.message)
    hide(status.message.attributes)
    return status
