"""Server and client spans, the attribute allow-list, RED metrics, and the export configuration."""

import asyncio
import contextlib
import socket
import threading
import time
from collections.abc import Iterator

import grpc
import pytest
import structlog
import structlog.testing
from grpc_health.v1 import health_pb2, health_pb2_grpc
from opentelemetry import propagate, trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind
from prometheus_client import REGISTRY
from scoregraph.gateway.v1 import gateway_pb2, gateway_pb2_grpc

from services.predict.tritonserver import trace_args
from services.runtime import interceptors, tracing
from services.runtime.errors import DeadlineExceeded, FieldViolation, InvalidInput, UpstreamFailed
from services.runtime.otlp import OTLPGrpcSpanExporter as GrpcExporter
from services.runtime.otlp import OTLPHttpSpanExporter as HttpExporter
from services.runtime.server import GrpcServer
from services.runtime.settings import InvalidSettings
from services.runtime.spans import LeanTracerProvider
from services.runtime.tracing import AllowListedAttributes, otlp_exporter
from services.stack.collector import TraceCollector
from tests.runtime.scripted_gateway import GATEWAY_SERVICE_NAME, gateway_registration, runtime_settings

TEST_PAN = "4111111111111111"
PARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


@pytest.fixture(params=[TracerProvider, LeanTracerProvider], ids=["sdk-span", "lean-span"])
def spans(monkeypatch, request) -> Iterator[InMemorySpanExporter]:
    """Spans of the runtime's tracer, through the allow-list, into memory: the SDK's spans, and the
    services' own (LeanSpan), which the allow-list reads without copying. The global provider can be set
    once per process, so the runtime's lookups of it are pointed at this one instead."""
    exporter = InMemorySpanExporter()
    provider = request.param()
    provider.add_span_processor(AllowListedAttributes(SimpleSpanProcessor(exporter)))
    monkeypatch.setattr(tracing.trace, "get_tracer_provider", lambda: provider)
    monkeypatch.setattr(tracing.trace, "get_tracer", lambda name: provider.get_tracer(name))
    yield exporter
    provider.shutdown()


async def finished_spans(spans: InMemorySpanExporter, count: int) -> tuple:
    """The spans finished once `count` have (within a second). A server that aborts a call sends its status
    before the abort unwinds through the interceptors, so the caller can see the error a moment before the
    server's span ends."""
    for _ in range(100):
        if len(spans.get_finished_spans()) >= count:
            break
        await asyncio.sleep(0.01)
    return spans.get_finished_spans()


def server_requests(code: str) -> float:
    return (
        REGISTRY.get_sample_value(
            "scoregraph_rpc_server_requests_total",
            {"rpc_service": GATEWAY_SERVICE_NAME, "rpc_method": "Score", "grpc_code": code},
        )
        or 0.0
    )


async def test_a_server_span_per_call_continues_the_callers_trace(serve_gateway, spans):
    seen = {}

    async def score(request):
        seen["span"] = trace.get_current_span().get_span_context()
        return gateway_pb2.ScoreResponse(transaction_id=request.transaction.transaction_id)

    channel = await serve_gateway(score)
    before = server_requests("OK")

    await gateway_pb2_grpc.GatewayServiceStub(channel).Score(
        gateway_pb2.ScoreRequest(), metadata=(("traceparent", PARENT),)
    )

    [span] = spans.get_finished_spans()
    assert span.name == f"{GATEWAY_SERVICE_NAME}/Score"
    assert span.kind is SpanKind.SERVER
    assert f"{span.context.trace_id:032x}" == "0af7651916cd43dd8448eb211c80319c"
    assert f"{span.parent.span_id:016x}" == "b7ad6b7169203331"
    assert seen["span"].span_id == span.context.span_id, "the servicer runs inside the server span"
    assert span.attributes["rpc.system"] == "grpc"
    assert span.attributes["rpc.service"] == GATEWAY_SERVICE_NAME
    assert span.attributes["rpc.method"] == "Score"
    assert span.attributes["rpc.grpc.status_code"] == 0
    assert span.attributes["server.address"] == "127.0.0.1"
    assert server_requests("OK") == before + 1


CALLERS_HEADERS = (
    ("traceparent", PARENT),
    ("tracestate", f"vendor={TEST_PAN},congo=t61rcWkgMzE"),
    ("baggage", f"card={TEST_PAN},client_ip=198.51.100.7"),
)


@pytest.mark.parametrize("edge", [True, False], ids=["the gateway", "an inner service"])
async def test_at_the_edge_only_the_callers_trace_goes_on_and_into_the_spans(serve_gateway, spans, edge):
    seen = {}

    async def score(request):
        headers: dict[str, str] = {}
        propagate.inject(headers)  # what a hop is sent
        seen.update(headers)
        return gateway_pb2.ScoreResponse()

    channel = await serve_gateway(score, edge=edge)
    await gateway_pb2_grpc.GatewayServiceStub(channel).Score(
        gateway_pb2.ScoreRequest(), metadata=CALLERS_HEADERS
    )

    [span] = spans.get_finished_spans()
    assert f"{span.context.trace_id:032x}" == "0af7651916cd43dd8448eb211c80319c"
    assert f"{span.parent.span_id:016x}" == "b7ad6b7169203331"
    assert seen["traceparent"].startswith("00-0af7651916cd43dd8448eb211c80319c-")
    if edge:
        # Before, the caller's baggage went on to every hop and its tracestate into every exported span.
        assert set(seen) == {"traceparent"}
        assert not span.context.trace_state
    else:
        # Inside scoregraph the W3C headers travel whole (the gateway sends none of the caller's).
        assert TEST_PAN in seen["baggage"] and TEST_PAN in seen["tracestate"]
        assert span.context.trace_state.get("vendor") == TEST_PAN


async def test_failed_calls_carry_their_status_and_no_request_data(serve_gateway, spans):
    async def score(request):
        trace.get_current_span().set_attribute("card_number", request.transaction.card_number)
        raise InvalidInput(
            [FieldViolation("transaction.card_number", f"bad {request.transaction.card_number}")]
        )

    channel = await serve_gateway(score)
    before = server_requests("INVALID_ARGUMENT")

    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await gateway_pb2_grpc.GatewayServiceStub(channel).Score(
            gateway_pb2.ScoreRequest(transaction=gateway_pb2.Transaction(card_number=TEST_PAN))
        )

    assert raised.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    [span] = await finished_spans(spans, 1)
    assert span.attributes["rpc.grpc.status_code"] == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert "card_number" not in span.attributes
    assert TEST_PAN not in repr(span.to_json())
    assert server_requests("INVALID_ARGUMENT") == before + 1


@pytest.mark.parametrize("code", ["DEADLINE_EXCEEDED", "CANCELLED"])
async def test_a_call_that_ends_unanswered_is_counted_and_logged_with_why(
    serve_gateway, spans, json_logs, code
):
    # A cancelled servicer counted as CANCELLED whatever the cause, and logged nothing.
    started = asyncio.Event()

    async def score(request):
        started.set()
        await asyncio.sleep(10)

    channel = await serve_gateway(score)
    before = server_requests(code)
    stub = gateway_pb2_grpc.GatewayServiceStub(channel)

    if code == "DEADLINE_EXCEEDED":
        with pytest.raises(grpc.aio.AioRpcError):
            await stub.Score(gateway_pb2.ScoreRequest(), timeout=0.2)
    else:
        call = stub.Score(gateway_pb2.ScoreRequest())
        await started.wait()
        call.cancel()
    [span] = await finished_spans(spans, 1)

    assert span.attributes["rpc.grpc.status_code"] == getattr(grpc.StatusCode, code).value[0]
    assert server_requests(code) == before + 1
    [logged] = [record for record in json_logs.records() if record["event"] == "request cancelled"]
    assert (logged["level"], logged["code"], logged["trace_id"]) == (
        "info",
        code,
        f"{span.context.trace_id:032x}",
    )


@pytest.mark.parametrize("answer", ["OK", "DEADLINE_EXCEEDED", "UNAVAILABLE"])
async def test_an_answer_ready_after_the_deadline_is_counted_as_the_caller_saw_it(
    serve_gateway, spans, json_logs, monkeypatch, answer
):
    # The caller got DEADLINE_EXCEEDED, but the service counted OK an answer ready too late, and UNKNOWN
    # an error status gRPC could no longer send (170 and 228 calls of a 3000-call flood).
    monkeypatch.setattr(interceptors, "SUMMARY_LOG_INTERVAL_S", 0.0)

    async def score(request):
        time.sleep(0.3)  # busy past the deadline, as a saturated event loop is
        if answer == "DEADLINE_EXCEEDED":
            raise DeadlineExceeded("deadline too short: 0.0 ms left, features not called", hop="features")
        if answer == "UNAVAILABLE":
            raise UpstreamFailed("features", grpc.StatusCode.UNAVAILABLE, "features unavailable")
        return gateway_pb2.ScoreResponse()

    channel = await serve_gateway(score)
    before = {code: server_requests(code) for code in ("OK", "DEADLINE_EXCEEDED", "UNKNOWN", answer)}
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await gateway_pb2_grpc.GatewayServiceStub(channel).Score(gateway_pb2.ScoreRequest(), timeout=0.2)
    [span] = await finished_spans(spans, 1)

    assert raised.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED
    assert server_requests("DEADLINE_EXCEEDED") == before["DEADLINE_EXCEEDED"] + 1
    assert server_requests(answer) == before[answer] + (answer == "DEADLINE_EXCEEDED")
    assert server_requests("UNKNOWN") == before["UNKNOWN"]
    assert span.attributes["rpc.grpc.status_code"] == grpc.StatusCode.DEADLINE_EXCEEDED.value[0]
    assert span.attributes["error.type"] == "DEADLINE_EXCEEDED"
    late = [
        (r["answered"], r["code"], r["late"]) for r in json_logs.records() if r["event"] == "response late"
    ]
    # A servicer that answered DEADLINE_EXCEEDED itself said so in its own line.
    assert late == ([] if answer == "DEADLINE_EXCEEDED" else [(answer, "DEADLINE_EXCEEDED", 1)])


def unserved_calls() -> float:
    labels = {"rpc_service": GATEWAY_SERVICE_NAME, "rpc_method": "Score"}
    return REGISTRY.get_sample_value("scoregraph_rpc_server_unserved_total", labels) or 0.0


async def test_calls_that_end_before_a_busy_server_takes_them_up_are_counted_and_logged(
    monkeypatch, json_logs
):
    # A call whose deadline passes while the server is too busy to take it up is answered by gRPC itself:
    # no servicer runs, and no metric or log line saw it (2394 calls of a flood of 3000). Here the first
    # call holds the event loop, as a saturated service does, while calls with a short deadline arrive.
    monkeypatch.setattr(interceptors, "SUMMARY_LOG_INTERVAL_S", 0.2)
    calls = 20

    async def score(request):
        if request.transaction.transaction_id == "hold":
            time.sleep(0.6)
        return gateway_pb2.ScoreResponse()

    server = GrpcServer(runtime_settings(grace_period_s=0.1), [gateway_registration(score)])
    await server.start()

    def flood() -> list[str]:
        with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            stub = gateway_pb2_grpc.GatewayServiceStub(channel)
            stub.Score(gateway_pb2.ScoreRequest(), timeout=5)
            hold = gateway_pb2.ScoreRequest(transaction=gateway_pb2.Transaction(transaction_id="hold"))
            holding = stub.Score.future(hold, timeout=5)
            time.sleep(0.1)
            futures = [stub.Score.future(gateway_pb2.ScoreRequest(), timeout=0.2) for _ in range(calls)]
            holding.result()
            return [future.code().name for future in futures]

    try:
        served_before, unserved_before = server_requests("DEADLINE_EXCEEDED"), unserved_calls()
        codes = await asyncio.to_thread(flood)
        await asyncio.sleep(0.4)  # the held-back line's interval
    finally:
        await server.stop()

    assert codes == ["DEADLINE_EXCEEDED"] * calls
    unserved = unserved_calls() - unserved_before
    # Each call seen once: unserved, or served and cancelled at its deadline.
    assert unserved + server_requests("DEADLINE_EXCEEDED") - served_before == calls
    assert unserved >= 1
    lines = [record for record in json_logs.records() if record["event"] == "request unserved"]
    assert sum(line["unserved"] for line in lines) == unserved
    assert {line["method"] for line in lines} == {"/scoregraph.gateway.v1.GatewayService/Score"}
    # The served calls, the first and the one that held the loop, are not among them.
    assert server_requests("OK") >= 2


async def test_health_checks_are_not_traced(serve_gateway, spans):
    async def score(request):
        return gateway_pb2.ScoreResponse()

    channel = await serve_gateway(score)
    await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())

    assert spans.get_finished_spans() == ()


def test_the_allow_list_drops_unknown_attributes_exception_text_and_status_descriptions(spans):
    tracer = tracing.trace.get_tracer("test")
    with pytest.raises(ValueError), tracer.start_as_current_span("score") as span:
        span.set_attribute("scoregraph.verdict", "NOT_FRAUD")
        span.set_attribute("ip_address", "203.0.113.7")
        raise ValueError(f"card {TEST_PAN}")

    [exported] = spans.get_finished_spans()
    assert dict(exported.attributes) == {"scoregraph.verdict": "NOT_FRAUD"}
    assert exported.status.description is None
    [event] = exported.events
    assert dict(event.attributes) == {"exception.type": "ValueError"}
    assert TEST_PAN not in exported.to_json() and "203.0.113.7" not in exported.to_json()


def test_the_allow_list_reaches_event_and_link_attributes_of_an_otherwise_clean_span(spans):
    tracer = tracing.trace.get_tracer("test")
    linked = trace.SpanContext(0x1, 0x2, is_remote=True)
    with tracer.start_as_current_span("score", links=[trace.Link(linked, {"card": TEST_PAN})]) as span:
        span.set_attribute("scoregraph.verdict", "NOT_FRAUD")
        span.add_event("retry", {"scoregraph.retry.attempt": 2, "card": TEST_PAN})

    [exported] = spans.get_finished_spans()
    assert dict(exported.attributes) == {"scoregraph.verdict": "NOT_FRAUD"}
    [event] = exported.events
    assert dict(event.attributes) == {"scoregraph.retry.attempt": 2}
    [link] = exported.links
    assert link.context == linked and not link.attributes
    assert TEST_PAN not in exported.to_json()


@pytest.mark.parametrize(
    ("environ", "kind"),
    [
        ({}, None),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318"}, HttpExporter),
        (
            {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4317", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"},
            GrpcExporter,
        ),
        ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://x:4318/v1/traces"}, HttpExporter),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318", "OTEL_TRACES_EXPORTER": "none"}, None),
    ],
)
def test_the_standard_variables_pick_the_exporter(environ, kind):
    exporter = otlp_exporter(environ)
    assert exporter is None if kind is None else type(exporter) is kind


@pytest.mark.parametrize(
    ("environ", "variable"),
    [
        ({"OTEL_EXPORTER_OTLP_PROTOCOL": "http/json"}, "OTEL_EXPORTER_OTLP_PROTOCOL"),
        (
            {"OTEL_EXPORTER_OTLP_PROTOCOL": "grpc", "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "pigeon"},
            "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
        ),
        ({"OTEL_TRACES_EXPORTER": "zipkin"}, "OTEL_TRACES_EXPORTER"),
        ({"OTEL_TRACES_EXPORTER": "otlp,console"}, "OTEL_TRACES_EXPORTER"),
    ],
)
def test_an_export_that_is_not_made_here_is_refused_naming_its_variable(environ, variable):
    # Before, an unknown protocol ended the service with a traceback, and an unknown exporter (zipkin,
    # console) exported OTLP instead.
    with pytest.raises(InvalidSettings) as refused:
        otlp_exporter({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318", **environ})
    assert [name for name, _ in refused.value.problems] == [variable]


def test_triton_exports_over_http_to_the_configured_endpoint():
    args = trace_args({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318/"})

    assert "--trace-config=mode=opentelemetry" in args
    assert "--trace-config=opentelemetry,url=http://127.0.0.1:4318/v1/traces" in args
    # Only the requests that come with a trace context: the gateway sends it with the calls it samples.
    assert "--trace-config=rate=0" in args
    assert "--trace-config=level=TIMESTAMPS" in args


def test_triton_batches_its_spans_as_the_otel_bsp_variables_say():
    base = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318"}
    args = trace_args(
        {
            **base,
            "OTEL_BSP_SCHEDULE_DELAY": "500",
            "OTEL_BSP_MAX_QUEUE_SIZE": "4096",
            "OTEL_BSP_MAX_EXPORT_BATCH_SIZE": " 64 ",
        }
    )
    assert "--trace-config=opentelemetry,bsp_schedule_delay=500" in args
    assert "--trace-config=opentelemetry,bsp_max_queue_size=4096" in args
    assert "--trace-config=opentelemetry,bsp_max_export_batch_size=64" in args
    # Unset or not a whole number: Triton's defaults.
    assert not [arg for arg in trace_args(base) if "bsp_" in arg]
    assert not [arg for arg in trace_args({**base, "OTEL_BSP_MAX_QUEUE_SIZE": "-1"}) if "bsp_" in arg]


def test_triton_is_not_traced_without_an_http_endpoint_or_when_sampling_nothing():
    assert trace_args({}) == []
    assert (
        trace_args({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4317", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"})
        == []
    )
    for sampler, ratio in (("always_off", "1"), ("traceidratio", "0")):
        environ = {"OTEL_TRACES_SAMPLER": sampler, "OTEL_TRACES_SAMPLER_ARG": ratio}
        assert trace_args({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318", **environ}) == []
    # A parent-based sampler still samples the calls a caller sampled: Triton traces those.
    for sampler, ratio in (("parentbased_always_off", "1"), ("parentbased_traceidratio", "0")):
        environ = {"OTEL_TRACES_SAMPLER": sampler, "OTEL_TRACES_SAMPLER_ARG": ratio}
        assert "--trace-config=rate=0" in trace_args(
            {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318", **environ}
        )


def test_triton_takes_its_own_url_when_the_services_export_over_grpc():
    args = trace_args(
        {
            "OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4317",
            "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
            "SCOREGRAPH_TRITON_OTLP_TRACES_URL": "http://c:4318/v1/traces",
            "OTEL_TRACES_SAMPLER": "parentbased_traceidratio",
            "OTEL_TRACES_SAMPLER_ARG": "0.1",
        }
    )
    assert "--trace-config=opentelemetry,url=http://c:4318/v1/traces" in args
    # Not a rate of its own (one in 10): Triton traces the calls the gateway sampled, which send it their
    # trace context.
    assert "--trace-config=rate=0" in args


def exporting_provider(endpoint: str, timeout_s: float = 10) -> LeanTracerProvider:
    """A service's provider, batching its spans to the OTLP/HTTP receiver at `endpoint`."""
    provider = LeanTracerProvider()
    exporter = HttpExporter(endpoint=f"{endpoint}/v1/traces", timeout=timeout_s)
    provider.add_span_processor(AllowListedAttributes(BatchSpanProcessor(exporter)))
    for n in range(10):
        with provider.get_tracer("test").start_as_current_span(f"span {n}"):
            pass
    return provider


def test_at_exit_the_spans_left_reach_a_collector_that_answers():
    with TraceCollector() as collector:
        assert tracing.shutdown_tracing(exporting_provider(collector.http_endpoint), timeout_s=10)
        assert sorted(span.name for span in collector.spans()) == sorted(f"span {n}" for n in range(10))


def test_at_exit_a_collector_that_never_answers_cannot_hold_the_process():
    # It takes the connection and the request, and sends nothing back: each export would wait out the
    # exporter's timeout (5 s here, 10 s by default), and the stopped service's exit with it.
    with socket.create_server(("127.0.0.1", 0)) as hung, contextlib.ExitStack() as held:
        accepting = threading.Thread(target=lambda: held.enter_context(hung.accept()[0]), daemon=True)
        accepting.start()
        provider = exporting_provider(f"http://127.0.0.1:{hung.getsockname()[1]}", timeout_s=5)

        with structlog.testing.capture_logs() as logged:
            assert not tracing.shutdown_tracing(provider, timeout_s=0.5)

        accepting.join(timeout=5)
    assert [entry["event"] for entry in logged if entry["log_level"] == "warning"] == [
        "spans dropped: not exported within the wait at exit"
    ]
