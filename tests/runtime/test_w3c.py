"""services.runtime.w3c reads and writes what OpenTelemetry's configured propagator does."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from opentelemetry import baggage, propagate, trace
from opentelemetry import context as context_api
from opentelemetry.context import Context
from opentelemetry.propagators.textmap import TextMapPropagator

from services.runtime import w3c

TRACE = "0af7651916cd43dd8448eb211c80319c"
SPAN = "b7ad6b7169203331"

METADATA = {
    "sampled": (("traceparent", f"00-{TRACE}-{SPAN}-01"),),
    "unsampled": (("traceparent", f"00-{TRACE}-{SPAN}-00"),),
    "among other headers": (("user-agent", "x"), ("traceparent", f"00-{TRACE}-{SPAN}-01"), ("x-id", "1")),
    "the first of two": (
        ("traceparent", f"00-{TRACE}-{SPAN}-01"),
        ("traceparent", f"00-{TRACE}-{'1' * 16}-00"),
    ),
    "blanks around it": (("traceparent", f" \t00-{TRACE}-{SPAN}-01\t "),),
    "a future version with more fields": (("traceparent", f"01-{TRACE}-{SPAN}-01-what-comes-next"),),
    "version 00 with more fields": (("traceparent", f"00-{TRACE}-{SPAN}-01-more"),),
    "version ff": (("traceparent", f"ff-{TRACE}-{SPAN}-01"),),
    "a zero trace id": (("traceparent", f"00-{'0' * 32}-{SPAN}-01"),),
    "a zero span id": (("traceparent", f"00-{TRACE}-{'0' * 16}-01"),),
    "upper case": (("traceparent", f"00-{TRACE.upper()}-{SPAN}-01"),),
    "short": (("traceparent", f"00-{TRACE[:-1]}-{SPAN}-01"),),
    "garbage": (("traceparent", "hello"),),
    "empty": (("traceparent", ""),),
    "over 512 characters": (("traceparent", f"01-{TRACE}-{SPAN}-01-" + "x" * 600),),
    "binary": (("traceparent-bin", b"\x00\x01"), ("traceparent", f"00-{TRACE}-{SPAN}-01")),
    "bytes first, then text": (
        ("traceparent", f"00-{TRACE}-{SPAN}-01".encode()),
        ("traceparent", f"00-{TRACE}-{SPAN}-00"),
    ),
    "with tracestate": (("traceparent", f"00-{TRACE}-{SPAN}-01"), ("tracestate", "vendor=a,other=b")),
    "with baggage": (("traceparent", f"00-{TRACE}-{SPAN}-01"), ("baggage", "tenant=acme,region=eu")),
    "baggage alone": (("baggage", "tenant=acme"),),
    "nothing": (),
    "other headers only": (("user-agent", "x"),),
}


def _what_it_carries(context: Context) -> tuple[object, ...]:
    caller = trace.get_current_span(context).get_span_context()
    return (
        caller.trace_id,
        caller.span_id,
        caller.is_remote,
        int(caller.trace_flags),
        caller.trace_state.to_header(),
        dict(baggage.get_all(context)),
    )


@pytest.mark.parametrize("case", METADATA)
def test_extract_reads_what_the_propagator_reads(case: str) -> None:
    metadata = METADATA[case]
    assert _what_it_carries(w3c.extract(metadata)) == _what_it_carries(
        propagate.extract(metadata, getter=w3c.METADATA_GETTER)
    )


def test_extract_reads_a_valid_traceparent() -> None:
    # Against a fixed expectation too, so that both ways going wrong together would not pass.
    caller = trace.get_current_span(w3c.extract(METADATA["sampled"])).get_span_context()
    assert (caller.trace_id, caller.span_id, caller.trace_flags.sampled) == (
        int(TRACE, 16),
        int(SPAN, 16),
        True,
    )
    assert caller.is_remote
    assert not trace.get_current_span(w3c.extract(METADATA["garbage"])).get_span_context().is_valid


def _contexts() -> Iterator[tuple[str, Context]]:
    parent = trace.SpanContext(
        int(TRACE, 16), int(SPAN, 16), is_remote=False, trace_flags=trace.TraceFlags(1)
    )
    yield "sampled", trace.set_span_in_context(trace.NonRecordingSpan(parent))
    unsampled = trace.SpanContext(int(TRACE, 16), int(SPAN, 16), is_remote=False)
    yield "unsampled", trace.set_span_in_context(trace.NonRecordingSpan(unsampled))
    state = trace.TraceState([("vendor", "a"), ("other", "b")])
    stated = trace.SpanContext(int(TRACE, 16), int(SPAN, 16), False, trace.TraceFlags(1), state)
    yield "with trace state", trace.set_span_in_context(trace.NonRecordingSpan(stated))
    yield (
        "with baggage",
        baggage.set_baggage("tenant", "acme", trace.set_span_in_context(trace.NonRecordingSpan(parent))),
    )
    yield "no span", Context()
    yield "the invalid span", trace.set_span_in_context(trace.INVALID_SPAN)


@pytest.mark.parametrize(("case", "context"), list(_contexts()), ids=[case for case, _ in _contexts()])
def test_inject_writes_what_the_propagator_writes(case: str, context: Context) -> None:
    ours: dict[str, str] = {}
    theirs: dict[str, str] = {}
    w3c.inject(ours, context)
    propagate.inject(theirs, context)
    assert ours == theirs


def test_inject_writes_the_current_span_by_default() -> None:
    [(_, context)] = [pair for pair in _contexts() if pair[0] == "sampled"]
    headers: dict[str, str] = {}
    token = context_api.attach(context)
    try:
        w3c.inject(headers)
    finally:
        context_api.detach(token)
    assert headers == {"traceparent": f"00-{TRACE}-{SPAN}-01"}


class _OwnHeader(TextMapPropagator):
    """A propagator of another format: the trace in `x-trace` as `trace_id:span_id`."""

    def extract(self, carrier, context=None, getter=None):  # type: ignore[no-untyped-def]
        values = getter.get(carrier, "x-trace") if getter else None
        if not values:
            return context or Context()
        trace_id, span_id = values[0].split(":")
        caller = trace.SpanContext(int(trace_id, 16), int(span_id, 16), is_remote=True)
        return trace.set_span_in_context(trace.NonRecordingSpan(caller), context)

    def inject(self, carrier, context=None, setter=None):  # type: ignore[no-untyped-def]
        caller = trace.get_current_span(context).get_span_context()
        carrier["x-trace"] = f"{caller.trace_id:032x}:{caller.span_id:016x}"

    @property
    def fields(self) -> set[str]:
        return {"x-trace"}


def test_another_configured_propagator_is_used_instead() -> None:
    default = propagate.get_global_textmap()
    propagate.set_global_textmap(_OwnHeader())
    try:
        carried = w3c.extract((("x-trace", f"{TRACE}:{SPAN}"), ("traceparent", f"00-{'1' * 32}-{SPAN}-01")))
        assert trace.get_current_span(carried).get_span_context().trace_id == int(TRACE, 16)
        headers: dict[str, str] = {}
        w3c.inject(headers, carried)
        assert headers == {"x-trace": f"{TRACE}:{SPAN}"}
    finally:
        propagate.set_global_textmap(default)
    # And back to the default: the traceparent is read again.
    assert trace.get_current_span(w3c.extract(METADATA["sampled"])).get_span_context().trace_id == int(
        TRACE, 16
    )
