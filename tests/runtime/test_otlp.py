"""scoregraph's OTLP span encoding sends what OpenTelemetry's own encoder sends, over both exporters."""

import pytest
from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, SpanLimits, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import Link, SpanContext, SpanKind, Status, StatusCode, TraceFlags, TraceState

from services.runtime.otlp import OTLPGrpcSpanExporter, OTLPHttpSpanExporter, SpanEncoder
from services.runtime.spans import LeanTracerProvider
from services.stack.collector import TraceCollector

REMOTE_PARENT = SpanContext(
    trace_id=0x0AF7651916CD43DD8448EB211C80319C,
    span_id=0xB7AD6B7169203331,
    is_remote=True,
    trace_flags=TraceFlags(TraceFlags.SAMPLED),
    trace_state=TraceState([("vendor", "opaque"), ("other", "x")]),
)


def finished(provider: TracerProvider) -> InMemorySpanExporter:
    memory = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(memory))
    return memory


def varied_spans(make: type[TracerProvider] = TracerProvider) -> tuple[ReadableSpan, ...]:
    """Spans of two services, two tracers in one, of every kind, with every attribute type, a remote
    parent with a trace state, a status with and without a description, events, links and a span over its
    attribute limit, made by `make`'s tracers (the SDK's spans, or the services' LeanSpans)."""
    gateway = make(
        resource=Resource.create(
            {"service.name": "gateway"}, schema_url="https://opentelemetry.io/schemas/1.21.0"
        ),
        span_limits=SpanLimits(max_span_attributes=6),
    )
    features = make(resource=Resource.create({"service.name": "features", "replica": 2}))
    memory = InMemorySpanExporter()
    for provider in (gateway, features):
        provider.add_span_processor(SimpleSpanProcessor(memory))
    server = gateway.get_tracer("services.runtime.tracing", "1.0")
    other = gateway.get_tracer("services.runtime.resilience", schema_url="https://example.com/schema")
    with server.start_as_current_span(
        "scoregraph.gateway.v1.GatewayService/Score",
        context=trace.set_span_in_context(trace.NonRecordingSpan(REMOTE_PARENT)),
        kind=SpanKind.SERVER,
        attributes={"rpc.system": "grpc", "rpc.method": "Score", "server.port": 50051},
    ) as root:
        for hop, attempt in (("features", 1), ("features", 2), ("predict", 1)):
            with other.start_as_current_span(
                f"{hop} attempt",
                attributes={"scoregraph.hop": hop, "scoregraph.hedge.attempt": attempt, "ratio": 0.25},
            ) as span:
                span.set_attribute("scoregraph.hedge.outcome", "won" if attempt == 1 else "cancelled")
                span.set_attribute("flags", [True, False])
                span.set_attribute("counts", (1, 2, 3))
                span.set_attribute("names", ["a", "b"])
                span.set_attribute("scores", [0.5])
        with server.start_as_current_span("failing", kind=SpanKind.CLIENT) as failing:
            failing.set_status(Status(StatusCode.ERROR, "UNAVAILABLE"))
            failing.add_event("retry", {"attempt": 2})
        with server.start_as_current_span(
            "linked", kind=SpanKind.PRODUCER, links=[Link(REMOTE_PARENT, {"n": 1})]
        ):
            pass
        with server.start_as_current_span("over its limit", kind=SpanKind.CONSUMER) as crowded:
            crowded.set_attributes({f"attribute.{i}": i for i in range(9)})
        root.set_attribute("scoregraph.verdict", "NOT_FRAUD")
        root.set_attribute("scoregraph.degraded", False)
        root.set_status(Status(StatusCode.OK))
    with features.get_tracer("services.features.online").start_as_current_span("feast read") as read:
        read.set_attribute("db.system", "sqlite")
    with server.start_as_current_span("unicode name: é€𝄞"):
        pass
    return memory.get_finished_spans()


PROVIDERS = pytest.mark.parametrize("make", [TracerProvider, LeanTracerProvider], ids=["sdk", "lean"])


@PROVIDERS
def test_a_batch_encodes_to_the_same_bytes_as_the_sdk_encoder(make):
    spans = varied_spans(make)
    encoder = SpanEncoder()

    assert encoder.encode(spans) == encode_spans(spans).SerializeToString()
    # The second time from its caches, as well.
    assert encoder.encode(spans) == encode_spans(spans).SerializeToString()
    assert encoder.encode(spans[2:5]) == encode_spans(spans[2:5]).SerializeToString()
    assert encoder.encode([]) == encode_spans([]).SerializeToString() == b""


@PROVIDERS
def test_attributes_beyond_a_full_cache_are_still_encoded(make):
    spans = varied_spans(make)
    encoder = SpanEncoder(attribute_cache_size=2)
    encoder.encode(spans)
    changed = []
    for value in range(50):
        provider = make()
        memory = finished(provider)
        with provider.get_tracer("t").start_as_current_span(
            "s", attributes={"value": value, "text": str(value)}
        ):
            pass
        changed += memory.get_finished_spans()

    assert encoder.encode(changed) == encode_spans(changed).SerializeToString()
    assert len(encoder._attributes) == 2
    assert len(encoder._tails) <= 2


def test_a_kept_encoding_is_never_given_to_an_equal_value_of_another_type_or_another_status():
    provider = LeanTracerProvider()
    memory = finished(provider)
    tracer = provider.get_tracer("t")
    values = (1, True, 1.0, "1", 0, False, 0.0, (1, 0), (True, False), (1.0, 0.0), ("1", "0"))
    for value in values:
        with tracer.start_as_current_span("s", attributes={"v": value}):
            pass
    for status in (Status(StatusCode.ERROR), Status(StatusCode.ERROR, "why"), Status(StatusCode.OK)):
        with tracer.start_as_current_span("s", attributes={"v": 1}) as span:
            span.set_status(status)
    with tracer.start_as_current_span("s"):
        pass
    spans = memory.get_finished_spans()
    encoder = SpanEncoder()

    assert encoder.encode(spans) == encode_spans(spans).SerializeToString()
    # Each alone, from the caches the others filled, in both orders.
    for span in (*spans, *reversed(spans)):
        assert encoder.encode([span]) == encode_spans([span]).SerializeToString()


def test_an_export_parses_as_the_request_the_sdk_would_build():
    spans = varied_spans()
    parsed = ExportTraceServiceRequest.FromString(SpanEncoder().encode(spans))

    assert parsed == encode_spans(spans)
    [gateway, features] = parsed.resource_spans
    assert [scope.scope.name for scope in gateway.scope_spans] == [
        "services.runtime.resilience",
        "services.runtime.tracing",
    ]
    root = gateway.scope_spans[1].spans[-2]
    assert root.parent_span_id == REMOTE_PARENT.span_id.to_bytes(8, "big")
    assert root.trace_state == "vendor=opaque,other=x"
    assert root.flags == 0x300  # the parent is remote, and that is known
    assert features.scope_spans[0].spans[0].flags == 0x100


class Captured(TraceCollector):
    def __init__(self) -> None:
        super().__init__()
        self.requests: list[ExportTraceServiceRequest] = []

    def receive(self, request: ExportTraceServiceRequest) -> None:
        self.requests.append(request)
        super().receive(request)


@pytest.mark.parametrize("protocol", ["http/protobuf", "grpc"])
def test_each_exporter_sends_the_sdks_request_to_a_receiver(protocol):
    spans = varied_spans()
    with Captured() as collector:
        if protocol == "grpc":
            exporter = OTLPGrpcSpanExporter(endpoint=collector.grpc_endpoint, insecure=True)
        else:
            exporter = OTLPHttpSpanExporter(endpoint=f"{collector.http_endpoint}/v1/traces")
        try:
            assert exporter.export(spans) is SpanExportResult.SUCCESS
        finally:
            exporter.shutdown()

        assert collector.requests == [encode_spans(spans)]
        assert exporter.export(spans) is SpanExportResult.FAILURE  # shut down


def test_an_exporter_reports_a_receiver_it_cannot_reach():
    exporter = OTLPHttpSpanExporter(endpoint="http://127.0.0.1:9/v1/traces", timeout=1)
    try:
        assert exporter.export(varied_spans()) is SpanExportResult.FAILURE
    finally:
        exporter.shutdown()
