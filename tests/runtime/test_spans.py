"""A LeanSpan exports exactly what the SDK's span exports, whatever is done to it."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable

import pytest
from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, SpanLimits, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.id_generator import IdGenerator
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, ALWAYS_ON, ParentBased, TraceIdRatioBased
from opentelemetry.trace import (
    Link,
    NonRecordingSpan,
    SpanContext,
    SpanKind,
    Status,
    StatusCode,
    TraceFlags,
    TraceState,
)

from services.runtime.otlp import SpanEncoder
from services.runtime.spans import LeanSpan, LeanTracer, LeanTracerProvider
from services.runtime.tracing import configure_tracing

REMOTE_PARENT = SpanContext(
    0x0AF7651916CD43DD8448EB211C80319C,
    0xB7AD6B7169203331,
    is_remote=True,
    trace_flags=TraceFlags(TraceFlags.SAMPLED),
    trace_state=TraceState([("vendor", "opaque")]),
)
UNSAMPLED_PARENT = SpanContext(0x1, 0x2, is_remote=True, trace_flags=TraceFlags(TraceFlags.DEFAULT))
T0 = 1_700_000_000_000_000_000


class CountingIds(IdGenerator):
    """The same ids, in the same order, for either provider."""

    def __init__(self) -> None:
        self.last = 0

    def generate_span_id(self) -> int:
        self.last += 1
        return self.last

    def generate_trace_id(self) -> int:
        self.last += 1
        return self.last << 64


def _raised() -> ValueError:
    try:
        raise ValueError("the database said no")
    except ValueError as error:
        return error


ERROR = _raised()


class Opaque:
    """A value of no attribute type, with a str() of its own."""

    def __str__(self) -> str:
        return "opaque"


class NoStr:
    """A key that cannot be turned into a string."""

    __str__ = object.__str__
    __repr__ = object.__repr__


def scenario(provider: TracerProvider) -> None:
    """Everything a span can be asked to do, with explicit times so two runs compare byte for byte."""
    tracer = provider.get_tracer("scoregraph.test", "1.0", schema_url="https://example.com/schema")
    root = tracer.start_span(
        "root",
        context=trace.set_span_in_context(NonRecordingSpan(REMOTE_PARENT)),
        kind=SpanKind.SERVER,
        attributes={"rpc.system": "grpc", "server.port": 50051, "ratio": 0.5, "ok": True},
        start_time=T0,
    )
    root.set_attribute("rpc.system", "grpc again")  # set again: it moves to the end
    root.set_attribute("sequence", ["a", "b"])
    root.set_attribute("tuple", (1, 2, 3))
    root.set_attribute("nothing", None)
    root.set_attribute("bytes", b"\x00\x01")
    root.set_attribute("opaque", Opaque())
    root.set_attribute("", "an empty key")
    root.set_attribute(7, "a key of another type")  # type: ignore[arg-type]
    root.set_attributes({8: "converted", NoStr(): "dropped", "mapping": {"nested": 1}})  # type: ignore[dict-item]
    # A mapping of plain values: one key new, one set before (it moves to the end).
    root.set_attributes({"fresh": 1, "server.port": 50052})
    root.add_event("checkpoint", {"step": 1, "names": ["x"]}, timestamp=T0 + 10)
    root.record_exception(ERROR, {"extra": "yes"}, timestamp=T0 + 20, escaped=True)
    root.add_link(REMOTE_PARENT, {"why": "follows"})
    root.update_name("root renamed")
    root.set_status(Status(StatusCode.ERROR, "it failed"))
    root.set_status(StatusCode.OK)  # OK replaces ERROR...
    root.set_status(StatusCode.ERROR, "too late")  # ...and nothing replaces OK
    child = tracer.start_span(
        "child",
        context=trace.set_span_in_context(root),
        kind=SpanKind.CLIENT,
        links=[Link(REMOTE_PARENT, {"link": 1})],
        start_time=T0 + 30,
    )
    for i in range(6):
        child.set_attribute(f"key{i}", "a long string value" * i)
    child.add_event("one", timestamp=T0 + 40)
    child.add_event("two", timestamp=T0 + 41)
    child.add_link(REMOTE_PARENT)
    child.end(end_time=T0 + 50)
    # Ended: nothing changes it any more.
    child.set_attribute("late", 1)
    child.set_attributes({"later": 2})
    child.add_event("late", timestamp=T0 + 60)
    child.set_status(StatusCode.ERROR)
    child.update_name("renamed late")
    child.end(end_time=T0 + 70)
    root.end(end_time=T0 + 100)
    with tracer.start_as_current_span(
        "current", attributes={"long": "a string longer than five"}, start_time=T0 + 200, end_on_exit=False
    ) as current:
        current.set_attribute("kept", "yes")
    current.end(end_time=T0 + 210)
    unsampled = tracer.start_span(
        "unsampled", context=trace.set_span_in_context(NonRecordingSpan(UNSAMPLED_PARENT))
    )
    assert not unsampled.is_recording()
    unsampled.end()


def exported(make: Callable[..., TracerProvider], **options) -> list[ReadableSpan]:
    provider = make(
        resource=Resource.create({"service.name": "test", "replica": 1}),
        id_generator=CountingIds(),
        **options,
    )
    memory = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(memory))
    scenario(provider)
    return list(memory.get_finished_spans())


def described(span: ReadableSpan) -> tuple:
    return (
        span.name,
        span.context,
        span.parent,
        span.kind,
        list(span.attributes.items()),  # in order
        [(e.name, dict(e.attributes or {}), e.timestamp) for e in span.events],
        [(link.context, dict(link.attributes or {})) for link in span.links],
        (span.status.status_code, span.status.description),
        (span.start_time, span.end_time),
        (span.resource, span.instrumentation_scope),
        (span.dropped_attributes, span.dropped_events, span.dropped_links),
    )


@pytest.mark.parametrize(
    "limits",
    [
        SpanLimits(),
        SpanLimits(max_span_attributes=3, max_span_attribute_length=5, max_events=1, max_links=1),
        SpanLimits(max_span_attributes=0, max_events=0, max_links=0),
    ],
    ids=["default limits", "small limits", "zero limits"],
)
def test_a_lean_span_exports_exactly_what_the_sdks_span_exports(limits):
    sdk = exported(TracerProvider, span_limits=limits)
    lean = exported(LeanTracerProvider, span_limits=limits)

    assert [span.name for span in lean] == ["child", "root renamed", "current"]
    assert all(isinstance(span, LeanSpan) for span in lean)
    assert [described(span) for span in lean] == [described(span) for span in sdk]
    # What goes over the wire, through OpenTelemetry's encoder and scoregraph's.
    expected = encode_spans(sdk).SerializeToString()
    assert encode_spans(lean).SerializeToString() == expected
    assert SpanEncoder().encode(lean) == expected


LOCAL_UNSAMPLED_PARENT = SpanContext(
    0x3,
    0x4,
    is_remote=False,
    trace_flags=TraceFlags(TraceFlags.DEFAULT),
    trace_state=TraceState([("k", "v")]),
)


@pytest.mark.parametrize(
    "sampler",
    [
        # Following the parent: LeanTracer decides a child of a valid parent without asking them.
        ParentBased(ALWAYS_ON),
        ParentBased(ALWAYS_OFF),
        ParentBased(TraceIdRatioBased(0.5)),
        # Not following it, or not only: asked every time.
        ParentBased(ALWAYS_ON, remote_parent_not_sampled=ALWAYS_ON, local_parent_sampled=ALWAYS_OFF),
        TraceIdRatioBased(0.5),
        ALWAYS_OFF,
        ALWAYS_ON,
    ],
    ids=repr,
)
def test_a_lean_span_samples_as_the_sdk_does(sampler):
    def decided(make: Callable[..., TracerProvider]) -> list[tuple]:
        tracer = make(sampler=sampler, id_generator=CountingIds()).get_tracer("t")
        attributes = {"rpc.system": "grpc", "server.port": 50051}
        root = tracer.start_span("root", attributes=attributes)
        parents = [REMOTE_PARENT, UNSAMPLED_PARENT, LOCAL_UNSAMPLED_PARENT]
        spans = [root] + [
            tracer.start_span(
                "child", trace.set_span_in_context(NonRecordingSpan(parent)), attributes=attributes
            )
            for parent in parents
        ]
        spans.append(
            tracer.start_span("child of root", trace.set_span_in_context(root), attributes=attributes)
        )
        return [
            (
                span.is_recording(),
                span.get_span_context(),
                dict(getattr(span, "attributes", None) or {}),
                getattr(span, "parent", None),
            )
            for span in spans
        ]

    assert decided(LeanTracerProvider) == decided(TracerProvider)


def test_a_lean_current_span_does_what_the_sdks_does():
    """start_as_current_span: current inside, the context restored after, an escaping Exception recorded
    and made the status (unless told not to), anything else not, the span ended; as a decorator, of sync
    and async functions, a span per call."""

    def run(make: Callable[..., TracerProvider]) -> tuple[list, list]:
        provider = make(id_generator=CountingIds())
        memory = InMemorySpanExporter()
        provider.add_span_processor(SimpleSpanProcessor(memory))
        tracer = provider.get_tracer("t")
        seen: list = []
        outside = trace.get_current_span()
        with tracer.start_as_current_span("fine", attributes={"a": 1}) as fine:
            seen.append(trace.get_current_span() is fine)
            with tracer.start_as_current_span("inner") as inner:
                seen.append(inner.parent == fine.get_span_context())
            seen.append(trace.get_current_span() is fine)
        seen.append(trace.get_current_span() is outside)
        with pytest.raises(ValueError), tracer.start_as_current_span("raising"):
            raise ValueError("inside")
        seen.append(trace.get_current_span() is outside)
        with (
            pytest.raises(ValueError),
            tracer.start_as_current_span("quiet", record_exception=False, set_status_on_exception=False),
        ):
            raise ValueError("not recorded")
        with pytest.raises(asyncio.CancelledError), tracer.start_as_current_span("cancelled"):
            raise asyncio.CancelledError
        with tracer.start_as_current_span("left open", end_on_exit=False) as left_open:
            pass
        seen.append(left_open.is_recording())
        left_open.end()

        @tracer.start_as_current_span("decorated")
        def decorated() -> str:
            return trace.get_current_span().name

        @tracer.start_as_current_span("decorated async")
        async def decorated_async() -> str:
            await asyncio.sleep(0)
            return trace.get_current_span().name

        seen += [decorated(), decorated(), asyncio.run(decorated_async())]
        seen.append(trace.get_current_span() is outside)
        finished = [
            (
                span.name,
                span.context,
                span.parent,
                dict(span.attributes or {}),
                # The stack trace differs by the frames the SDK's generators add.
                [
                    (event.name, {k: v for k, v in event.attributes.items() if k != "exception.stacktrace"})
                    for event in span.events
                ],
                (span.status.status_code, span.status.description),
            )
            for span in memory.get_finished_spans()
        ]
        return seen, finished

    lean_seen, lean_finished = run(LeanTracerProvider)
    assert (lean_seen, lean_finished) == run(TracerProvider)
    assert lean_seen == [
        True,
        True,
        True,
        True,
        True,
        True,
        "decorated",
        "decorated",
        "decorated async",
        True,
    ]
    names = [name for name, *_ in lean_finished]
    assert names == [
        "inner",
        "fine",
        "raising",
        "quiet",
        "cancelled",
        "left open",
        "decorated",
        "decorated",
        "decorated async",
    ]
    raising = lean_finished[2]
    assert raising[4] == [
        (
            "exception",
            {"exception.type": "ValueError", "exception.message": "inside", "exception.escaped": "False"},
        )
    ]
    assert raising[5] == (StatusCode.ERROR, "ValueError: inside")
    assert lean_finished[3][4:] == ([], (StatusCode.UNSET, None))  # told not to
    assert lean_finished[4][4:] == ([], (StatusCode.UNSET, None))  # not an error


def test_the_services_provider_makes_lean_spans_unless_disabled(monkeypatch):
    monkeypatch.setattr(trace, "set_tracer_provider", lambda provider: None)
    provider = configure_tracing("test")
    tracer = provider.get_tracer("scoregraph.test")
    assert isinstance(tracer, LeanTracer)
    assert provider.get_tracer("scoregraph.test") is tracer
    assert isinstance(tracer.start_span("span"), LeanSpan)

    monkeypatch.setitem(os.environ, "OTEL_SDK_DISABLED", "true")
    assert not configure_tracing("test").get_tracer("scoregraph.test").start_span("span").is_recording()
