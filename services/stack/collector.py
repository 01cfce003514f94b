"""A small OTLP trace receiver for the embedded stack and the tests, where there is no Jaeger.

It takes OTLP over gRPC and over HTTP (protobuf, as the Python SDK sends it, or JSON, which is all
tritonserver 2.51's exporter sends) on loopback,
keeps the most recent traces in memory, writes them as a file in Jaeger's JSON trace format (Jaeger UI,
Search page, "JSON File" tab opens it) and renders one trace as a per-hop waterfall in the terminal.

    python -m services.stack.collector        # receive until Ctrl-C, writing data/traces/*.json
"""

from __future__ import annotations

import base64
import gzip
import json
import sys
import threading
import time
import zlib
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.proto.common.v1 import common_pb2
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict
from rich.table import Table
from rich.text import Text

from services.runtime.settings import InvalidSettings, read_settings
from services.stack.topology import REPO

_KINDS = {0: "unspecified", 1: "internal", 2: "server", 3: "client", 4: "producer", 5: "consumer"}


class CollectorSettings(BaseSettings):
    """The local trace receiver `make up` runs when no OTLP endpoint is configured."""

    model_config = SettingsConfigDict(env_prefix="SCOREGRAPH_TRACES_", use_attribute_docstrings=True)

    collect: bool = True
    """Run a local OTLP receiver in `make up`/`make demo` and write the traces to `dir`; ignored (an external
    collector gets them) when OTEL_EXPORTER_OTLP_ENDPOINT is set."""
    dir: Path = REPO / "data" / "traces"
    """Folder of the Jaeger JSON trace files the local receiver writes, one per run."""
    grpc_port: int = Field(default=0, ge=0, lt=65536)
    """OTLP/gRPC port of the local receiver (loopback); 0 picks a free one."""
    http_port: int = Field(default=0, ge=0, lt=65536)
    """OTLP/HTTP port of the local receiver (loopback); 0 picks a free one."""
    max_traces: int = Field(default=2000, gt=0)
    """Most recent traces kept and written; older ones are dropped."""


def _value(value: common_pb2.AnyValue) -> Any:
    kind = value.WhichOneof("value")
    if kind == "array_value":
        return [_value(item) for item in value.array_value.values]
    if kind == "kvlist_value":
        return {item.key: _value(item.value) for item in value.kvlist_value.values}
    return None if kind is None else getattr(value, kind)


def _attributes(items: Iterable[common_pb2.KeyValue]) -> dict[str, Any]:
    return {item.key: _value(item.value) for item in items}


@dataclass(frozen=True)
class CollectedSpan:
    trace_id: str
    span_id: str
    parent_span_id: str
    """Empty for a root span."""
    name: str
    kind: str
    service: str
    start_ns: int
    end_ns: int
    attributes: dict[str, Any]
    status_code: int
    """0 unset, 1 ok, 2 error."""
    status_message: str
    events: tuple[tuple[str, int, dict[str, Any]], ...] = field(default=())
    """(name, time in ns, attributes)."""
    resource: dict[str, Any] = field(default_factory=dict)
    trace_state: str = ""
    """The W3C tracestate the span carried (vendor members, `key=value,...`)."""

    @property
    def duration_ms(self) -> float:
        return (self.end_ns - self.start_ns) / 1e6


def spans_of(request: trace_service_pb2.ExportTraceServiceRequest) -> list[CollectedSpan]:
    spans = []
    for resource_spans in request.resource_spans:
        resource = _attributes(resource_spans.resource.attributes)
        service = str(resource.get("service.name", "unknown"))
        for scope_spans in resource_spans.scope_spans:
            for span in scope_spans.spans:
                spans.append(
                    CollectedSpan(
                        trace_id=span.trace_id.hex(),
                        span_id=span.span_id.hex(),
                        parent_span_id=span.parent_span_id.hex(),
                        name=span.name,
                        kind=_KINDS.get(span.kind, "unspecified"),
                        service=service,
                        start_ns=span.start_time_unix_nano,
                        end_ns=span.end_time_unix_nano,
                        attributes=_attributes(span.attributes),
                        status_code=span.status.code,
                        status_message=span.status.message,
                        events=tuple(
                            (event.name, event.time_unix_nano, _attributes(event.attributes))
                            for event in span.events
                        ),
                        resource=resource,
                        trace_state=span.trace_state,
                    )
                )
    return spans


def _json_field(document: dict[str, Any], camel: str, snake: str, default: Any = None) -> Any:
    """OTLP/JSON names fields in lowerCamelCase; protobuf's JSON parsers also take the proto names."""
    value = document.get(camel)
    return document.get(snake, default) if value is None else value


def _json_value(value: dict[str, Any]) -> Any:
    for camel, snake in (("stringValue", "string_value"), ("boolValue", "bool_value")):
        if (found := _json_field(value, camel, snake)) is not None:
            return found
    if (found := _json_field(value, "intValue", "int_value")) is not None:
        return int(found)  # a string in OTLP/JSON, as every 64-bit integer
    if (found := _json_field(value, "doubleValue", "double_value")) is not None:
        return float(found)
    if (found := _json_field(value, "arrayValue", "array_value")) is not None:
        return [_json_value(item) for item in found.get("values", ())]
    if (found := _json_field(value, "kvlistValue", "kvlist_value")) is not None:
        return _json_attributes(found.get("values", ()))
    if (found := _json_field(value, "bytesValue", "bytes_value")) is not None:
        return base64.b64decode(found)
    return None


def _json_attributes(items: Iterable[dict[str, Any]]) -> dict[str, Any]:
    return {item["key"]: _json_value(item.get("value") or {}) for item in items}


def _json_kind(kind: int | str | None) -> str:
    if isinstance(kind, str):  # the enum's name, SPAN_KIND_SERVER
        return kind.removeprefix("SPAN_KIND_").lower() if kind.startswith("SPAN_KIND_") else "unspecified"
    return _KINDS.get(kind or 0, "unspecified")


_STATUS_CODES = {"STATUS_CODE_UNSET": 0, "STATUS_CODE_OK": 1, "STATUS_CODE_ERROR": 2}


def _json_status_code(code: int | str | None) -> int:
    return _STATUS_CODES.get(code, 0) if isinstance(code, str) else int(code or 0)


def spans_of_json(document: dict[str, Any]) -> list[CollectedSpan]:
    """The spans of an OTLP/JSON export (ids in hex, 64-bit integers as strings), read straight from the
    parsed document: going through protobuf's JSON parser cost 150 us a span, 15 times this."""
    spans = []
    for resource_spans in _json_field(document, "resourceSpans", "resource_spans", ()):
        resource = _json_attributes((resource_spans.get("resource") or {}).get("attributes", ()))
        service = str(resource.get("service.name", "unknown"))
        for scope_spans in _json_field(resource_spans, "scopeSpans", "scope_spans", ()):
            for span in scope_spans.get("spans", ()):
                status = span.get("status") or {}
                spans.append(
                    CollectedSpan(
                        trace_id=_json_field(span, "traceId", "trace_id", "").lower(),
                        span_id=_json_field(span, "spanId", "span_id", "").lower(),
                        parent_span_id=_json_field(span, "parentSpanId", "parent_span_id", "").lower(),
                        name=span.get("name", ""),
                        kind=_json_kind(span.get("kind")),
                        service=service,
                        start_ns=int(_json_field(span, "startTimeUnixNano", "start_time_unix_nano", 0)),
                        end_ns=int(_json_field(span, "endTimeUnixNano", "end_time_unix_nano", 0)),
                        attributes=_json_attributes(span.get("attributes", ())),
                        status_code=_json_status_code(status.get("code")),
                        status_message=status.get("message", ""),
                        events=tuple(
                            (
                                event.get("name", ""),
                                int(_json_field(event, "timeUnixNano", "time_unix_nano", 0)),
                                _json_attributes(event.get("attributes", ())),
                            )
                            for event in span.get("events", ())
                        ),
                        resource=resource,
                        trace_state=_json_field(span, "traceState", "trace_state", ""),
                    )
                )
    return spans


def span_counts(request: trace_service_pb2.ExportTraceServiceRequest) -> Counter[str]:
    """Spans by service name in an OTLP export, counted without reading the spans."""
    counts: Counter[str] = Counter()
    for resource_spans in request.resource_spans:
        service = _attributes(resource_spans.resource.attributes).get("service.name", "unknown")
        counts[str(service)] += sum(len(scope_spans.spans) for scope_spans in resource_spans.scope_spans)
    return counts


def span_counts_json(document: dict[str, Any]) -> Counter[str]:
    """Spans by service name in an OTLP/JSON export, counted without reading the spans."""
    counts: Counter[str] = Counter()
    for resource_spans in _json_field(document, "resourceSpans", "resource_spans", ()):
        resource = _json_attributes((resource_spans.get("resource") or {}).get("attributes", ()))
        scopes = _json_field(resource_spans, "scopeSpans", "scope_spans", ())
        counts[str(resource.get("service.name", "unknown"))] += sum(
            len(scope_spans.get("spans", ())) for scope_spans in scopes
        )
    return counts


class _TraceService(trace_service_pb2_grpc.TraceServiceServicer):
    def __init__(self, receive: Callable[[trace_service_pb2.ExportTraceServiceRequest], None]) -> None:
        self._receive = receive

    def Export(self, request, context):  # noqa: N802 (generated name)
        self._receive(request)
        return trace_service_pb2.ExportTraceServiceResponse()


def _http_handler(
    receive: Callable[[trace_service_pb2.ExportTraceServiceRequest], None],
    receive_json: Callable[[dict[str, Any]], None],
) -> type:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:  # noqa: N802 (http.server's name)
            if self.path.rstrip("/") != "/v1/traces":
                self._answer(404, b"")
                return
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            encoding = (self.headers.get("Content-Encoding") or "").lower()
            if encoding == "gzip":
                body = gzip.decompress(body)
            elif encoding == "deflate":
                body = zlib.decompress(body)
            try:
                if "json" in (self.headers.get("Content-Type") or ""):
                    receive_json(json.loads(body))
                else:
                    receive(trace_service_pb2.ExportTraceServiceRequest.FromString(body))
            except Exception:
                self._answer(400, b"")
                return
            self._answer(200, trace_service_pb2.ExportTraceServiceResponse().SerializeToString())

        def _answer(self, status: int, body: bytes) -> None:
            self.send_response(status)
            self.send_header("Content-Type", "application/x-protobuf")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    return Handler


class TraceCollector:
    """OTLP/gRPC and OTLP/HTTP receivers on `host`, keeping the `max_traces` most recent traces.

    `grpc_endpoint` and `http_endpoint` are what OTEL_EXPORTER_OTLP_ENDPOINT takes for each protocol.
    """

    def __init__(
        self, host: str = "127.0.0.1", *, grpc_port: int = 0, http_port: int = 0, max_traces: int = 2000
    ) -> None:
        self._host = host
        self._grpc_port = grpc_port
        self._http_port = http_port
        self._max_traces = max_traces
        self._traces: OrderedDict[str, list[CollectedSpan]] = OrderedDict()
        self._lock = threading.Condition()
        self._received = 0
        self._grpc: grpc.Server | None = None
        self._http: ThreadingHTTPServer | None = None

    @property
    def grpc_endpoint(self) -> str:
        return f"http://{self._host}:{self._grpc_port}"

    @property
    def http_endpoint(self) -> str:
        return f"http://{self._host}:{self._http_port}"

    @property
    def received(self) -> int:
        """Spans received so far, dropped ones included."""
        return self._received

    def start(self) -> TraceCollector:
        self._grpc = grpc.server(ThreadPoolExecutor(4, thread_name_prefix="otlp-grpc"))
        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(_TraceService(self.receive), self._grpc)
        self._grpc_port = self._grpc.add_insecure_port(f"{self._host}:{self._grpc_port}")
        self._grpc.start()
        handler = _http_handler(self.receive, self.receive_json)
        self._http = ThreadingHTTPServer((self._host, self._http_port), handler)
        self._http.daemon_threads = True
        self._http_port = self._http.server_address[1]
        threading.Thread(target=self._http.serve_forever, name="otlp-http", daemon=True).start()
        return self

    def stop(self) -> None:
        if self._grpc is not None:
            self._grpc.stop(0)
            self._grpc = None
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
            self._http = None

    def __enter__(self) -> TraceCollector:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def receive(self, request: trace_service_pb2.ExportTraceServiceRequest) -> None:
        """An OTLP export, over gRPC or HTTP/protobuf."""
        self._keep(spans_of(request))

    def receive_json(self, document: dict[str, Any]) -> None:
        """An OTLP/JSON export (tritonserver's)."""
        self._keep(spans_of_json(document))

    def _keep(self, spans: list[CollectedSpan]) -> None:
        with self._lock:
            for span in spans:
                self._traces.setdefault(span.trace_id, []).append(span)
                self._traces.move_to_end(span.trace_id)
            while len(self._traces) > self._max_traces:
                self._traces.popitem(last=False)
            self._received += len(spans)
            self._lock.notify_all()

    def spans(self) -> list[CollectedSpan]:
        with self._lock:
            return [span for spans in self._traces.values() for span in spans]

    def trace(self, trace_id: str) -> list[CollectedSpan]:
        with self._lock:
            return list(self._traces.get(trace_id, ()))

    def trace_ids(self) -> list[str]:
        with self._lock:
            return list(self._traces)

    def wait_for(self, done: Callable[[TraceCollector], bool], timeout_s: float) -> bool:
        """Wait until `done(self)` holds (checked on each arrival), at most `timeout_s`."""
        deadline = time.monotonic() + timeout_s
        with self._lock:
            while not done(self):
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._lock.wait(min(left, 0.25))
        return True

    def write_jaeger(self, path: Path, encoded: dict[tuple[str, int], str] | None = None) -> Path:
        """Write every trace kept to `path` as one Jaeger JSON document.

        `encoded` caches each trace's JSON by trace id and span count across calls, so a file rewritten
        while calls go on encodes only the traces that changed since (each rewrite used to encode all
        2,000, the better part of a core under load)."""
        with self._lock:
            traces = [(trace_id, list(spans)) for trace_id, spans in self._traces.items() if spans]
        cache = {} if encoded is None else encoded
        parts = []
        for trace_id, spans in traces:
            key = (trace_id, len(spans))
            if key not in cache:
                cache[key] = json.dumps(jaeger_trace(spans))
            parts.append(cache[key])
        if encoded is not None:
            kept = {(trace_id, len(spans)) for trace_id, spans in traces}
            for stale in encoded.keys() - kept:
                del encoded[stale]
        # {"data": [<the traces>], "total": 0, ...}, without decoding what the cache holds.
        document = '{"data": [' + ", ".join(parts) + "], " + json.dumps(_JAEGER_ENVELOPE)[1:]
        path.parent.mkdir(parents=True, exist_ok=True)
        staged = path.with_suffix(".tmp")
        staged.write_text(document)
        staged.replace(path)
        return path


def _tag(key: str, value: Any) -> dict[str, Any]:
    if isinstance(value, bool):
        return {"key": key, "type": "bool", "value": value}
    if isinstance(value, int):
        return {"key": key, "type": "int64", "value": value}
    if isinstance(value, float):
        return {"key": key, "type": "float64", "value": value}
    return {"key": key, "type": "string", "value": value if isinstance(value, str) else json.dumps(value)}


def jaeger_document(traces: Iterable[list[CollectedSpan]]) -> dict[str, Any]:
    """Traces in the JSON format of Jaeger's query API, which Jaeger UI's "JSON File" upload opens."""
    return {"data": [jaeger_trace(spans) for spans in traces if spans], **_JAEGER_ENVELOPE}


#: What surrounds the traces in a Jaeger query API answer.
_JAEGER_ENVELOPE: dict[str, Any] = {"total": 0, "limit": 0, "offset": 0, "errors": None}


def jaeger_trace(spans: list[CollectedSpan]) -> dict[str, Any]:
    """One trace (its spans, at least one) as an element of a Jaeger document's `data`."""
    processes: dict[str, dict[str, Any]] = {}
    process_ids: dict[str, str] = {}
    jaeger_spans = []
    for span in sorted(spans, key=lambda s: s.start_ns):
        key = json.dumps(span.resource, sort_keys=True, default=str)
        if key not in process_ids:
            process_ids[key] = f"p{len(process_ids) + 1}"
            processes[process_ids[key]] = {
                "serviceName": span.service,
                "tags": [_tag(k, v) for k, v in span.resource.items() if k != "service.name"],
            }
        tags = [_tag(k, v) for k, v in span.attributes.items()]
        tags.append(_tag("span.kind", span.kind))
        if span.status_code == 2:
            tags.append(_tag("error", True))
            tags.append(_tag("otel.status_code", "ERROR"))
        jaeger_spans.append(
            {
                "traceID": span.trace_id,
                "spanID": span.span_id,
                "operationName": span.name,
                "references": [
                    {"refType": "CHILD_OF", "traceID": span.trace_id, "spanID": span.parent_span_id}
                ]
                if span.parent_span_id
                else [],
                "startTime": span.start_ns // 1000,
                "duration": max((span.end_ns - span.start_ns) // 1000, 0),
                "tags": tags,
                "logs": [
                    {
                        "timestamp": at // 1000,
                        "fields": [_tag("event", name), *(_tag(k, v) for k, v in attrs.items())],
                    }
                    for name, at, attrs in span.events
                ],
                "processID": process_ids[key],
                "warnings": None,
                "flags": 1,
            }
        )
    return {"traceID": spans[0].trace_id, "spans": jaeger_spans, "processes": processes, "warnings": None}


def waterfall(spans: list[CollectedSpan], width: int = 48) -> Table:
    """One trace as a table: each span under its parent, with a bar where its time falls in the trace."""
    by_parent: dict[str, list[CollectedSpan]] = {}
    ids = {span.span_id for span in spans}
    for span in sorted(spans, key=lambda s: s.start_ns):
        parent = span.parent_span_id if span.parent_span_id in ids else ""
        by_parent.setdefault(parent, []).append(span)
    start = min(span.start_ns for span in spans)
    total = max(max(span.end_ns for span in spans) - start, 1)
    trace_id = spans[0].trace_id
    table = Table(title=f"trace {trace_id} ({total / 1e6:.2f} ms)", title_justify="left")
    table.add_column("span")
    table.add_column("service")
    table.add_column("ms", justify="right")
    table.add_column("timeline", no_wrap=True)
    colours = {}
    palette = ["cyan", "green", "yellow", "magenta", "blue", "red"]

    def add(span: CollectedSpan, depth: int) -> None:
        colour = colours.setdefault(span.service, palette[len(colours) % len(palette)])
        left = round((span.start_ns - start) / total * width)
        length = max(round((span.end_ns - span.start_ns) / total * width), 1)
        left = min(left, width - 1)
        bar = Text(" " * left) + Text("█" * min(length, width - left), style=colour)
        name = Text("  " * depth + span.name)
        outcome = span.attributes.get("scoregraph.hedge.outcome")
        if outcome:
            name.append(f" [{outcome}]", style="dim")
        if span.status_code == 2:
            name.stylize("red")
        table.add_row(name, Text(span.service, style=colour), f"{span.duration_ms:.2f}", bar)
        for child in by_parent.get(span.span_id, []):
            add(child, depth + 1)

    for root in by_parent.get("", []):
        add(root, 0)
    return table


def trace_file(directory: Path) -> Path:
    return directory / f"scoregraph-{datetime.now(UTC):%Y%m%dT%H%M%SZ}.json"


class TraceFileWriter:
    """Rewrites `path` from the collector every `interval_s` while new spans arrive, and once at the end."""

    def __init__(self, collector: TraceCollector, path: Path, interval_s: float = 2.0) -> None:
        self._collector = collector
        self.path = path
        self._interval_s = interval_s
        self._stop = threading.Event()
        self._written = 0
        self._encoded: dict[tuple[str, int], str] = {}
        self._thread = threading.Thread(target=self._loop, name="trace-file", daemon=True)

    def start(self) -> TraceFileWriter:
        self._thread.start()
        return self

    def _write_if_new(self) -> None:
        received = self._collector.received
        if received != self._written:
            self._collector.write_jaeger(self.path, self._encoded)
            self._written = received

    def _loop(self) -> None:
        while not self._stop.wait(self._interval_s):
            self._write_if_new()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
        self._write_if_new()


def main() -> int:
    try:
        settings = read_settings(CollectorSettings)
    except InvalidSettings as error:
        print(error, file=sys.stderr)
        return 2
    collector = TraceCollector(
        grpc_port=settings.grpc_port, http_port=settings.http_port, max_traces=settings.max_traces
    ).start()
    writer = TraceFileWriter(collector, trace_file(settings.dir)).start()
    print(
        f"OTLP receiver: gRPC {collector.grpc_endpoint}, HTTP {collector.http_endpoint}; "
        f"traces to {writer.path}. Ctrl-C stops.",
        flush=True,
    )
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        pass
    finally:
        writer.stop()
        collector.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
