"""An OTLP/gRPC trace receiver for the benchmarks, on a free loopback port: it
counts every span the mesh's services export to it and keeps the first `keep`
(bench/tracing_ab.py counts; bench/latency_breakdown.py reads the spans)."""

import threading
from concurrent import futures
from typing import NamedTuple

import grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc


class Span(NamedTuple):
    process: str  # the exporting service's instance id (its node id)
    name: str
    trace_ids: tuple[str, ...]  # its own trace and the traces it links (a batch's append)
    start_ns: int
    end_ns: int


class SpanReceiver(trace_service_pb2_grpc.TraceServiceServicer):
    def __init__(self, keep: int = 0):
        self.count, self.spans, self._keep = 0, [], keep
        self._lock = threading.Lock()
        self.server = grpc.server(futures.ThreadPoolExecutor(2))
        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(self, self.server)
        self.port = self.server.add_insecure_port("127.0.0.1:0")
        self.server.start()

    def Export(self, request, context):
        with self._lock:
            for resource_spans in request.resource_spans:
                resource = {a.key: a.value.string_value for a in resource_spans.resource.attributes}
                process = resource.get("service.instance.id") or resource.get("service.name", "?")
                for scope in resource_spans.scope_spans:
                    self.count += len(scope.spans)
                    for span in scope.spans[:max(0, self._keep - len(self.spans))]:
                        traces = (span.trace_id.hex(), *(link.trace_id.hex() for link in span.links))
                        self.spans.append(Span(process, span.name, traces, span.start_time_unix_nano,
                                               span.end_time_unix_nano))
        return trace_service_pb2.ExportTraceServiceResponse()

    def stop(self) -> None:
        self.server.stop(1)
