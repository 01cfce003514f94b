"""The local collector's Jaeger file: what `make up` and `make demo` leave for Jaeger UI to open."""

import json

from opentelemetry.proto.collector.trace.v1 import trace_service_pb2
from opentelemetry.proto.common.v1 import common_pb2
from opentelemetry.proto.resource.v1 import resource_pb2
from opentelemetry.proto.trace.v1 import trace_pb2

from services.stack.collector import TraceCollector, jaeger_document


def export(service: str, *spans: tuple[int, int, int]) -> trace_service_pb2.ExportTraceServiceRequest:
    """An OTLP export of `service`'s spans, each (trace, span, parent) as small integers (0: no parent)."""
    resource = resource_pb2.Resource(
        attributes=[common_pb2.KeyValue(key="service.name", value=common_pb2.AnyValue(string_value=service))]
    )
    return trace_service_pb2.ExportTraceServiceRequest(
        resource_spans=[
            trace_pb2.ResourceSpans(
                resource=resource,
                scope_spans=[
                    trace_pb2.ScopeSpans(
                        spans=[
                            trace_pb2.Span(
                                trace_id=trace.to_bytes(16, "big"),
                                span_id=span.to_bytes(8, "big"),
                                parent_span_id=parent.to_bytes(8, "big") if parent else b"",
                                name=f"span {span}",
                                start_time_unix_nano=1_000_000 * span,
                                end_time_unix_nano=1_000_000 * span + 500_000,
                            )
                            for trace, span, parent in spans
                        ]
                    )
                ],
            )
        ]
    )


def test_a_rewritten_file_holds_every_traces_latest_spans(tmp_path) -> None:
    collector = TraceCollector()
    encoded: dict[tuple[str, int], str] = {}
    path = tmp_path / "traces.json"
    collector.receive(export("scoregraph-gateway", (1, 1, 0), (2, 5, 0)))
    collector.write_jaeger(path, encoded)

    # Spans of trace 1 arrive from another service after the first write, and trace 3 is new.
    collector.receive(export("scoregraph-features", (1, 2, 1), (3, 9, 0)))
    collector.write_jaeger(path, encoded)

    written = json.loads(path.read_text())
    assert written == jaeger_document(collector.trace(t) for t in collector.trace_ids())
    spans = {t["traceID"][-1]: sorted(s["spanID"][-1] for s in t["spans"]) for t in written["data"]}
    assert spans == {"1": ["1", "2"], "2": ["5"], "3": ["9"]}
    # The cache keeps only what the file holds.
    assert len(encoded) == 3


def test_only_the_most_recent_traces_are_kept(tmp_path) -> None:
    collector = TraceCollector(max_traces=2)
    for trace in (1, 2, 3):
        collector.receive(export("scoregraph-gateway", (trace, trace, 0)))

    written = json.loads(collector.write_jaeger(tmp_path / "traces.json").read_text())

    assert [t["traceID"][-1] for t in written["data"]] == ["2", "3"]
