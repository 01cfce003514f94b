"""OTLP export of finished spans with a cheaper encoder than OpenTelemetry's own.

The stock OTLP exporters build a protobuf message object per span, attribute and value, then serialize
the lot: 50-70 us a span for scoregraph's spans, most of what exporting every call cost (a Score call makes
7 spans in the Python services). `SpanEncoder.encode` writes the same bytes directly, in 12-17 us a span:
each attribute's encoding is kept once made (a service's attributes take few distinct values: method
names, hops, verdicts, ports), and a span's own fields are a few byte strings joined. A span with events or
links, and an attribute value outside the cache (sequences, or any once the cache is full), is encoded by
the SDK's own functions, so the output is what the SDK would send, byte for byte (tests compare the two).
A `LeanSpan` that never had an event or a link is read from its own fields, without the copies the SDK
span's properties make, and the bytes after its times (attributes, dropped count, status) are kept whole
for each distinct set, as its name and kind are: a gateway call's four spans took 5.7 us a span on a quiet
machine, 4.1-4.7 so; in a loaded postprocess server the span processor's thread spent 10-11 us a span
instead of 14.

`OTLPHttpSpanExporter` and `OTLPGrpcSpanExporter` are the stock exporters, configured by the same
`OTEL_EXPORTER_OTLP_*` variables (endpoint, headers, timeout, compression, retries), with only the encoding
replaced. Both lean on the OpenTelemetry packages' internals (their encoding helpers, the HTTP exporter's
client), which is why pyproject.toml pins them to one minor version; `tests/runtime/test_otlp.py` checks
the bytes and both exporters against a real receiver. An encoder is used by one exporter, whose batch
processor calls it from one thread.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Hashable, Mapping, Sequence
from typing import Any

from opentelemetry.exporter.otlp.proto.common._internal import (
    _encode_attributes,
    _encode_instrumentation_scope,
    _encode_resource,
)
from opentelemetry.exporter.otlp.proto.common._internal.trace_encoder import (
    _SPAN_KIND_MAP,
    _encode_span,
)
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as _GrpcExporter
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as _HttpExporter
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.trace.v1.trace_pb2 import ScopeSpans, Span, Status
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExportResult
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import SpanKind
from opentelemetry.trace import Status as SpanStatus

from services.runtime.spans import LeanSpan

#: Most distinct encoded attributes (key and value) kept; past it, new ones are encoded each time.
ATTRIBUTE_CACHE_SIZE = 4096

#: Most resources whose encoding is kept (a process has one, its tracer provider's).
_RESOURCES_KEPT = 16

_CACHED_TYPES = (str, bool, int, float)
_CACHED_TYPE_SET = frozenset(_CACHED_TYPES)
_FIXED64 = struct.Struct("<Q")
_FIXED32 = struct.Struct("<I")

# Tags (field number << 3 | wire type) of the Span fields written here, in field order.
_TRACE_ID = b"\x0a\x10"  # 1, 16 bytes
_SPAN_ID = b"\x12\x08"  # 2, 8 bytes
_TRACE_STATE = b"\x1a"  # 3
_PARENT_SPAN_ID = b"\x22\x08"  # 4, 8 bytes
_NAME = b"\x2a"  # 5
_KIND = b"\x30"  # 6, varint
_START = b"\x39"  # 7, fixed64
_END = b"\x41"  # 8, fixed64
_DROPPED_ATTRIBUTES = b"\x50"  # 10, varint
_DROPPED_EVENTS = b"\x60"  # 12, varint
_DROPPED_LINKS = b"\x70"  # 14, varint
_FLAGS = b"\x85\x01"  # 16, fixed32
# Span flags: the context's is-remote bit is known (always), and set (the parent came over the wire).
_HAS_IS_REMOTE = 0x100
_IS_REMOTE = 0x200


def _varint(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _field(tag: int, payload: bytes) -> bytes:
    """A length-delimited field: its tag (one byte, field number below 16), length and payload."""
    return bytes((tag,)) + _varint(len(payload)) + payload


class SpanEncoder:
    """Encodes finished SDK spans as an OTLP `ExportTraceServiceRequest`, keeping what repeats."""

    def __init__(self, attribute_cache_size: int = ATTRIBUTE_CACHE_SIZE) -> None:
        self._attribute_cache_size = attribute_cache_size
        self._attributes: dict[tuple[str, type, Hashable], bytes] = {}
        self._heads: dict[tuple[str, SpanKind], bytes] = {}
        self._tails: dict[tuple, bytes] = {}
        self._statuses: dict[tuple[int, str | None], bytes] = {}
        self._resources: dict[int, tuple[Resource, bytes]] = {}
        self._scopes: dict[InstrumentationScope | None, bytes] = {}

    def encode(self, spans: Sequence[ReadableSpan]) -> bytes:
        """The serialized request: spans grouped by resource, then by instrumentation scope, each group in
        the order its first span came (as the SDK groups them)."""
        # By resource identity first (a process's spans share its provider's one Resource, and hashing a
        # Resource serializes it), then equal resources merged, as the SDK's grouping by equality would.
        by_resource: dict[int, tuple[Resource, list[ReadableSpan]]] = {}
        for span in spans:
            group = by_resource.get(id(span.resource))
            if group is None:
                group = by_resource[id(span.resource)] = (span.resource, [])
            group[1].append(span)
        groups: list[tuple[Resource, list[ReadableSpan]]] = []
        for resource, members in by_resource.values():
            same = next((group for group in groups if group[0] == resource), None)
            if same is None:
                groups.append((resource, members))
            else:
                same[1].extend(members)
        request = bytearray()
        for resource, members in groups:
            by_scope: dict[InstrumentationScope | None, list[bytes]] = {}
            for span in members:
                scope = span.instrumentation_scope or None
                encoded = by_scope.get(scope)
                if encoded is None:
                    encoded = by_scope[scope] = []
                encoded.append(self.encode_span(span))
            resource_spans = bytearray(self._resource(resource))
            for scope, encoded_spans in by_scope.items():
                scope_spans = self._scope(scope) + b"".join(_field(0x12, span) for span in encoded_spans)
                if scope is not None and scope.schema_url:
                    scope_spans += _field(0x1A, scope.schema_url.encode())
                resource_spans += _field(0x12, scope_spans)
            if resource.schema_url:
                resource_spans += _field(0x1A, resource.schema_url.encode())
            request += _field(0x0A, bytes(resource_spans))
        return bytes(request)

    def encode_span(self, span: ReadableSpan) -> bytes:
        """One span's `Span` message, serialized."""
        # A LeanSpan never given an event or a link (nor had one dropped) is read from its own fields,
        # without the copies and checks the SDK span's properties make.
        lean = type(span) is LeanSpan and type(span._events) is tuple and type(span._links) is tuple
        if not lean and (span.events or span.links):
            return _encode_span(span).SerializeToString()
        context = span.context
        parent = span.parent
        parts = [
            _TRACE_ID,
            context.trace_id.to_bytes(16, "big"),
            _SPAN_ID,
            context.span_id.to_bytes(8, "big"),
        ]
        if context.trace_state:
            state = ",".join(f"{key}={value}" for key, value in context.trace_state.items()).encode()
            parts += (_TRACE_STATE, _varint(len(state)), state)
        if parent is not None:
            parts += (_PARENT_SPAN_ID, parent.span_id.to_bytes(8, "big"))
        parts.append(self._head(span.name, span.kind))
        if span.start_time:
            parts += (_START, _FIXED64.pack(span.start_time))
        if span.end_time:
            parts += (_END, _FIXED64.pack(span.end_time))
        if lean:
            parts.append(self._lean_tail(span))
        else:
            dropped = (span.dropped_attributes, span.dropped_events, span.dropped_links)
            parts.append(self._tail(span.attributes, dropped, span.status))
        flags = _HAS_IS_REMOTE | (_IS_REMOTE if parent is not None and parent.is_remote else 0)
        parts += (_FLAGS, _FIXED32.pack(flags))
        return b"".join(parts)

    def _head(self, name: str, kind: SpanKind) -> bytes:
        """Fields 5 and 6: the name and the kind."""
        return self._kept(
            self._heads,
            (name, kind),
            lambda: (
                _NAME + _varint(len(name.encode())) + name.encode() + _KIND + _varint(_SPAN_KIND_MAP[kind])
            ),
        )

    def _tail(
        self, attributes: Mapping[str, Any] | None, dropped: tuple[int, int, int], status: SpanStatus
    ) -> bytes:
        """Fields 9 to 15 of a span without events or links: its attributes, what was dropped, its status."""
        parts = self._encoded_attributes(attributes) if attributes else []
        for tag, count in zip((_DROPPED_ATTRIBUTES, _DROPPED_EVENTS, _DROPPED_LINKS), dropped, strict=True):
            if count:
                parts += (tag, _varint(count))
        parts.append(self._status(status.status_code.value, status.description))
        return b"".join(parts)

    def _lean_tail(self, span: LeanSpan) -> bytes:
        """`_tail` of a LeanSpan, kept whole for its attributes (keys, types and values, in order), dropped
        count and status: a service's spans take few distinct ones, so one lookup replaces one per
        attribute. A span with a value of another type (a sequence: `(1, 0)` equals `(True, False)`) has
        its tail encoded each time."""
        attributes = span._attributes
        status = span._status
        dropped = (span._dropped_attributes, 0, 0)
        values = tuple(attributes.values())
        types = tuple(map(type, values))
        if not _CACHED_TYPE_SET.issuperset(types):
            return self._tail(attributes, dropped, status)
        key = (tuple(attributes), types, values, dropped[0], status.status_code, status.description)
        tail = self._tails.get(key)
        if tail is None:
            tail = self._tail(attributes, dropped, status)
            if len(self._tails) < self._attribute_cache_size:
                self._tails[key] = tail
        return tail

    def _encoded_attributes(self, attributes: Mapping[str, Any]) -> list[bytes]:
        cache = self._attributes
        parts = []
        for key, value in attributes.items():
            kind = type(value)
            if kind not in _CACHED_TYPES:
                parts.append(_attributes_field({key: value}))
                continue
            cached = cache.get((key, kind, value))
            if cached is None:
                cached = self._kept(
                    cache, (key, kind, value), lambda key=key, value=value: _attributes_field({key: value})
                )
            parts.append(cached)
        return parts

    def _status(self, code: int, description: str | None) -> bytes:
        return self._kept(
            self._statuses,
            (code, description),
            lambda: Span(status=Status(code=code, message=description)).SerializeToString(),
        )

    def _kept(self, cache: dict[Any, bytes], key: Any, encode: Callable[[], bytes]) -> bytes:
        """`cache[key]`, encoded and kept (while the cache has room) the first time."""
        encoded = cache.get(key)
        if encoded is None:
            encoded = encode()
            if len(cache) < self._attribute_cache_size:
                cache[key] = encoded
        return encoded

    def _resource(self, resource: Resource) -> bytes:
        kept = self._resources.get(id(resource))
        if kept is not None and kept[0] is resource:
            return kept[1]
        encoded = _field(0x0A, _encode_resource(resource).SerializeToString())
        if len(self._resources) < _RESOURCES_KEPT:
            self._resources[id(resource)] = (resource, encoded)
        return encoded

    def _scope(self, scope: InstrumentationScope | None) -> bytes:
        def encode() -> bytes:
            encoded = _encode_instrumentation_scope(scope)
            return b"" if encoded is None else ScopeSpans(scope=encoded).SerializeToString()

        return self._kept(self._scopes, scope, encode)


def _attributes_field(attributes: Mapping[str, Any]) -> bytes:
    """Span field 9 (attributes) holding these, as the SDK encodes them."""
    return Span(attributes=_encode_attributes(attributes)).SerializeToString()


class OTLPHttpSpanExporter(_HttpExporter):
    """OpenTelemetry's OTLP/HTTP span exporter, encoding with `SpanEncoder`."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._encoder = SpanEncoder()

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        if self._shutdown:
            return SpanExportResult.FAILURE
        result = self._client.export(self._encoder.encode(spans))
        return SpanExportResult.SUCCESS if result.success else SpanExportResult.FAILURE


class OTLPGrpcSpanExporter(_GrpcExporter):
    """OpenTelemetry's OTLP/gRPC span exporter, encoding with `SpanEncoder`: the request it hands gRPC is
    parsed from the encoder's bytes (in protobuf's C code, a few microseconds for a whole batch)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._encoder = SpanEncoder()

    def _translate_data(self, data: Sequence[ReadableSpan]) -> ExportTraceServiceRequest:
        return ExportTraceServiceRequest.FromString(self._encoder.encode(data))
