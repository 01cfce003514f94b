"""The local collector's Jaeger file: what `make up` and `make demo` leave for Jaeger UI to open."""

import base64
import json
import urllib.error
import urllib.request

import pytest
from google.protobuf import json_format
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2
from opentelemetry.proto.common.v1 import common_pb2
from opentelemetry.proto.resource.v1 import resource_pb2
from opentelemetry.proto.trace.v1 import trace_pb2

from services.stack.collector import (
    TraceCollector,
    jaeger_document,
    span_counts,
    span_counts_json,
    spans_of,
    spans_of_json,
)


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


def rich_export() -> trace_service_pb2.ExportTraceServiceRequest:
    """Two services' spans with every kind of attribute value, events, a status and span kinds."""
    request = export("scoregraph-triton", (7, 1, 0), (7, 2, 1))
    request.MergeFrom(export("scoregraph-gateway", (8, 3, 0)))
    first = request.resource_spans[0].scope_spans[0].spans[0]
    first.kind = trace_pb2.Span.SPAN_KIND_SERVER
    first.status.code = trace_pb2.Status.STATUS_CODE_ERROR
    first.status.message = "failed"
    values = {
        "s": common_pb2.AnyValue(string_value="text"),
        "b": common_pb2.AnyValue(bool_value=True),
        "i": common_pb2.AnyValue(int_value=2**62 + 1),  # past a double's precision: must stay exact
        "d": common_pb2.AnyValue(double_value=0.25),
        "y": common_pb2.AnyValue(bytes_value=b"\x00\xff"),
        "a": common_pb2.AnyValue(
            array_value=common_pb2.ArrayValue(values=[common_pb2.AnyValue(string_value="x")])
        ),
        "k": common_pb2.AnyValue(
            kvlist_value=common_pb2.KeyValueList(
                values=[common_pb2.KeyValue(key="n", value=common_pb2.AnyValue(int_value=3))]
            )
        ),
    }
    first.attributes.extend(common_pb2.KeyValue(key=key, value=value) for key, value in values.items())
    first.events.add(name="QUEUE_START", time_unix_nano=1_795_293_298_341_290_867).attributes.add(
        key="queue", value=common_pb2.AnyValue(int_value=4)
    )
    request.resource_spans[0].scope_spans[0].spans[1].kind = trace_pb2.Span.SPAN_KIND_CLIENT
    return request


def otlp_json(request: trace_service_pb2.ExportTraceServiceRequest, *, enum_names: bool) -> dict:
    """`request` as OTLP/JSON, as tritonserver sends it: lowerCamelCase names, ids in hex (protobuf's own
    JSON mapping writes them in base64), 64-bit integers as strings."""
    document = json_format.MessageToDict(request, use_integers_for_enums=not enum_names)

    def hex_ids(node):
        if isinstance(node, dict):
            return {
                key: base64.b64decode(value).hex()
                if key in {"traceId", "spanId", "parentSpanId"}
                else hex_ids(value)
                for key, value in node.items()
            }
        return [hex_ids(item) for item in node] if isinstance(node, list) else node

    return hex_ids(document)


@pytest.mark.parametrize("enum_names", [False, True], ids=["enums as numbers", "enums as names"])
def test_an_otlp_json_export_reads_as_its_protobuf_twin(enum_names) -> None:
    request = rich_export()
    document = otlp_json(request, enum_names=enum_names)

    spans = spans_of_json(document)

    assert spans == spans_of(request)
    assert [span.kind for span in spans] == ["server", "client", "unspecified"]
    assert spans[0].attributes["i"] == 2**62 + 1 and spans[0].attributes["y"] == b"\x00\xff"
    assert spans[0].events == (("QUEUE_START", 1_795_293_298_341_290_867, {"queue": 4}),)
    assert (
        span_counts_json(document)
        == span_counts(request)
        == {"scoregraph-triton": 2, "scoregraph-gateway": 1}
    )


def test_the_http_receiver_takes_json_and_protobuf_and_refuses_garbage() -> None:
    request = rich_export()
    with TraceCollector() as collector:

        def post(body: bytes, content_type: str) -> int:
            http = urllib.request.Request(
                f"{collector.http_endpoint}/v1/traces", data=body, headers={"Content-Type": content_type}
            )
            try:
                with urllib.request.urlopen(http, timeout=10) as answer:
                    return answer.status
            except urllib.error.HTTPError as error:
                return error.code

        assert post(json.dumps(otlp_json(request, enum_names=False)).encode(), "application/json") == 200
        assert post(b'{"resourceSpans": [', "application/json") == 400
        assert post(b"\xff\x00garbage", "application/x-protobuf") == 400
        assert collector.received == 3
        request.resource_spans[0].scope_spans[0].spans[0].name = "over protobuf"
        assert post(request.SerializeToString(), "application/x-protobuf") == 200

        assert collector.received == 6
        names = sorted(span.name for span in collector.trace((7).to_bytes(16, "big").hex()))
        assert names == ["over protobuf", "span 1", "span 2", "span 2"]
