import asyncio
import math
import time

import grpc
import numpy as np
import pytest
from opentelemetry import trace
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags
from scoregraph.postprocess.v1 import postprocess_pb2
from structlog.testing import capture_logs

from services.features.keys import DEV_CARD_KEY, card_id
from services.gateway.assessment import Reason, Verdict
from services.predict.client import (
    InvalidFeatures,
    InvalidScores,
    ModelUnavailable,
    PredictError,
    PredictTimeout,
)
from services.runtime.errors import DeadlineExceeded, FieldViolation, InvalidInput, UpstreamFailed
from tests.gateway.transactions import TEST_PAN, valid_request
from tests.gateway.upstream_fakes import (
    FEATURE_NAMES,
    FEATURE_SERVICE,
    MISSING,
    PRESENT,
    STALE,
    failing,
    features_answer,
    label_answer,
    raising,
    refusing,
    slow,
)

pytestmark = pytest.mark.asyncio(loop_scope="session")

BUDGET_S = 5.0
HOPS = ("features", "predict", "postprocess")


def failed_hops(call) -> list[tuple[str, str]]:
    return [(hop.hop, hop.status_code) for hop in call.request.failed_hops]


async def test_scores_through_every_hop(make_graph, upstreams) -> None:
    upstreams.postprocess.answer = label_answer(
        postprocess_pb2.LABEL_SUSPICIOUS, ("SCORE_ABOVE_SUSPICIOUS_THRESHOLD", "0.63 >= 0.5")
    )

    assessment = await make_graph().score(valid_request(), budget_s=BUDGET_S)

    assert assessment.transaction_id == "tx-0001"
    assert assessment.verdict is Verdict.SUSPICIOUS
    assert assessment.score == pytest.approx(0.625)
    assert (assessment.model_name, assessment.model_version) == ("fraud_mlp", "3")
    assert assessment.reasons == (Reason("SCORE_ABOVE_SUSPICIOUS_THRESHOLD", "0.63 >= 0.5"),)
    assert assessment.degraded is False

    [features] = upstreams.features.calls
    assert features.request.feature_service == FEATURE_SERVICE
    assert features.request.entity_keys.card_id == card_id(TEST_PAN, DEV_CARD_KEY)
    [predict] = upstreams.predictor.calls
    np.testing.assert_array_equal(predict.request, np.array([[12.34, 2.0, 400.0]], dtype=np.float32))
    [label] = upstreams.postprocess.calls
    assert label.request.score == pytest.approx(0.625)
    assert (label.request.model_name, label.request.model_version) == ("fraud_mlp", "3")
    assert label.request.feature_summary.present_count == 3
    assert failed_hops(label) == []


async def test_missing_features_are_nan_to_the_model_and_no_degradation(make_graph, upstreams) -> None:
    upstreams.features.answer = features_answer(
        values=(12.34, math.nan, 400.0), statuses=(PRESENT, MISSING, PRESENT)
    )
    upstreams.postprocess.answer = label_answer(postprocess_pb2.LABEL_NOT_FRAUD)

    assessment = await make_graph().score(valid_request(), budget_s=BUDGET_S)

    [predict] = upstreams.predictor.calls
    assert math.isnan(predict.request[0, 1])
    [label] = upstreams.postprocess.calls
    assert list(label.request.feature_summary.missing_features) == ["txn_count_1h"]
    assert (assessment.verdict, assessment.degraded) == (Verdict.NOT_FRAUD, False)


async def test_stale_features_degrade_the_verdict(make_graph, upstreams) -> None:
    upstreams.features.answer = features_answer(statuses=(PRESENT, STALE, PRESENT))
    upstreams.postprocess.answer = label_answer(postprocess_pb2.LABEL_NOT_FRAUD)

    assessment = await make_graph().score(valid_request(), budget_s=BUDGET_S)

    [label] = upstreams.postprocess.calls
    assert list(label.request.feature_summary.stale_features) == ["txn_count_1h"]
    assert assessment.degraded


async def test_features_in_another_order_are_never_scored(make_graph, upstreams) -> None:
    swapped = (FEATURE_NAMES[1], FEATURE_NAMES[0], FEATURE_NAMES[2])
    upstreams.features.answer = features_answer(names=swapped)
    upstreams.postprocess.answer = label_answer(postprocess_pb2.LABEL_UNCERTAIN)

    with capture_logs() as logs:
        assessment = await make_graph().score(valid_request(), budget_s=BUDGET_S)

    assert upstreams.predictor.calls == []
    [label] = upstreams.postprocess.calls
    assert failed_hops(label) == [("features", "FAILED_PRECONDITION")]
    assert (assessment.verdict, assessment.degraded, assessment.score) == (Verdict.UNCERTAIN, True, None)
    [scored] = logs
    [failure] = scored["failed_hops"]
    assert "'txn_count_1h' at position 0 where the model expects 'amount_eur'" in failure["message"]


async def test_fewer_features_than_the_model_takes_are_never_scored(make_graph, upstreams) -> None:
    upstreams.features.answer = features_answer(
        names=FEATURE_NAMES[:2], values=(1.0, 2.0), statuses=(PRESENT, PRESENT)
    )

    await make_graph().score(valid_request(), budget_s=BUDGET_S)

    assert upstreams.predictor.calls == []
    assert failed_hops(upstreams.postprocess.calls[0]) == [("features", "FAILED_PRECONDITION")]


async def test_failed_features_go_to_postprocess_as_a_failed_hop(make_graph, upstreams) -> None:
    upstreams.features.answer = failing(grpc.StatusCode.UNAVAILABLE)
    upstreams.postprocess.answer = label_answer(
        postprocess_pb2.LABEL_UNCERTAIN, ("FEATURES_FAILED", "features: UNAVAILABLE")
    )

    assessment = await make_graph().score(valid_request(), budget_s=BUDGET_S)

    assert upstreams.predictor.calls == []
    [label] = upstreams.postprocess.calls
    assert failed_hops(label) == [("features", "UNAVAILABLE")]
    assert not label.request.HasField("score")
    assert not label.request.HasField("feature_summary")
    assert assessment.verdict is Verdict.UNCERTAIN
    assert assessment.degraded is True
    assert assessment.reasons == (Reason("FEATURES_FAILED", "features: UNAVAILABLE"),)
    assert (assessment.score, assessment.model_name, assessment.model_version) == (None, "", "")


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (ModelUnavailable("fraud_mlp version 3 is not loaded"), "UNAVAILABLE"),
        (PredictTimeout("ran past 20 ms"), "DEADLINE_EXCEEDED"),
        (PredictError("Triton said INTERNAL"), "UNKNOWN"),
        (InvalidScores("fraud_mlp version 3 answered scores outside [0, 1]: [nan]"), "INTERNAL"),
    ],
)
async def test_failed_predict_goes_to_postprocess_with_the_features(
    make_graph, upstreams, error: PredictError, code: str
) -> None:
    upstreams.predictor.answer = raising(error)
    upstreams.postprocess.answer = label_answer(postprocess_pb2.LABEL_UNCERTAIN)

    assessment = await make_graph().score(valid_request(), budget_s=BUDGET_S)

    [label] = upstreams.postprocess.calls
    assert failed_hops(label) == [("predict", code)]
    assert label.request.feature_summary.present_count == 3
    assert not label.request.HasField("score")
    assert (assessment.verdict, assessment.degraded, assessment.score) == (Verdict.UNCERTAIN, True, None)


async def test_failed_postprocess_answers_uncertain_itself(make_graph, upstreams) -> None:
    upstreams.postprocess.answer = failing(grpc.StatusCode.UNAVAILABLE)

    assessment = await make_graph().score(valid_request(), budget_s=BUDGET_S)

    assert assessment.verdict is Verdict.UNCERTAIN
    assert assessment.degraded is True
    assert [reason.code for reason in assessment.reasons] == ["POSTPROCESS_FAILED"]
    assert assessment.score == pytest.approx(0.625)


async def test_failed_postprocess_after_failed_features_names_both(make_graph, upstreams) -> None:
    upstreams.features.answer = failing(grpc.StatusCode.UNAVAILABLE)
    upstreams.postprocess.answer = failing(grpc.StatusCode.UNAVAILABLE)

    assessment = await make_graph().score(valid_request(), budget_s=BUDGET_S)

    assert [reason.code for reason in assessment.reasons] == ["POSTPROCESS_FAILED", "FEATURES_FAILED"]
    assert assessment.score is None


async def test_the_calls_span_names_the_hops_that_failed(make_graph, upstreams, spans) -> None:
    upstreams.features.answer = failing(grpc.StatusCode.UNAVAILABLE)
    upstreams.postprocess.answer = failing(grpc.StatusCode.UNAVAILABLE)
    spans.clear()

    await make_graph().score(valid_request(), budget_s=BUDGET_S)

    [score] = [span for span in spans.get_finished_spans() if span.name == "score"]
    assert score.attributes["scoregraph.failed_hops"] == ("features", "postprocess")
    assert score.attributes["scoregraph.degraded"] is True


async def test_a_label_without_a_verdict_counts_as_failed_postprocess(make_graph, upstreams) -> None:
    upstreams.postprocess.answer = label_answer(postprocess_pb2.LABEL_UNSPECIFIED)

    assessment = await make_graph().score(valid_request(), budget_s=BUDGET_S)

    assert [reason.code for reason in assessment.reasons] == ["POSTPROCESS_FAILED"]


@pytest.mark.parametrize(
    ("hop", "code", "status"),
    [
        ("features", grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.UNAVAILABLE),
        ("features", grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.DEADLINE_EXCEEDED),
        ("postprocess", grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.UNAVAILABLE),
    ],
)
async def test_fail_policy_fails_the_call_naming_the_hop(
    make_graph, upstreams, hop: str, code: grpc.StatusCode, status: grpc.StatusCode
) -> None:
    getattr(upstreams, hop).answer = failing(code)

    with pytest.raises(UpstreamFailed) as raised:
        await make_graph(on_dependency_failure="fail").score(valid_request(), budget_s=BUDGET_S)

    assert (raised.value.hop, raised.value.upstream_code, raised.value.code) == (hop, code, status)
    if hop == "features":
        assert upstreams.predictor.calls == []
        assert upstreams.postprocess.calls == []


async def test_fail_policy_fails_the_call_when_predict_fails(make_graph, upstreams) -> None:
    upstreams.predictor.answer = raising(ModelUnavailable("not loaded"))

    with pytest.raises(UpstreamFailed) as raised:
        await make_graph(on_dependency_failure="fail").score(valid_request(), budget_s=BUDGET_S)

    assert (raised.value.hop, raised.value.code) == ("predict", grpc.StatusCode.UNAVAILABLE)
    assert upstreams.postprocess.calls == []


@pytest.mark.parametrize("hop", ["features", "predict", "postprocess"])
async def test_upstream_invalid_argument_is_an_internal_error_not_retried(make_graph, upstreams, hop) -> None:
    if hop == "predict":
        upstreams.predictor.answer = raising(InvalidFeatures("Triton rejected the tensor"))
    else:
        getattr(upstreams, hop).answer = failing(grpc.StatusCode.INVALID_ARGUMENT)

    with pytest.raises(UpstreamFailed) as raised:
        await make_graph().score(valid_request(), budget_s=BUDGET_S)

    assert (raised.value.hop, raised.value.code) == (hop, grpc.StatusCode.INTERNAL)
    calls = {
        "features": upstreams.features.calls,
        "predict": upstreams.predictor.calls,
        "postprocess": upstreams.postprocess.calls,
    }
    assert {name: len(made) for name, made in calls.items()} == {
        name: int(position <= HOPS.index(hop)) for position, name in enumerate(HOPS)
    }


@pytest.mark.parametrize("on_dependency_failure", ["uncertain", "fail"])
async def test_a_value_the_features_service_refuses_is_the_callers_invalid_argument_naming_their_field(
    make_graph, upstreams, on_dependency_failure
) -> None:
    upstreams.features.answer = refusing(
        FieldViolation("request_values.currency_code", "not a currency the features service converts")
    )

    with pytest.raises(InvalidInput) as raised:
        await make_graph(on_dependency_failure=on_dependency_failure).score(
            valid_request(), budget_s=BUDGET_S
        )

    assert raised.value.violations == [
        FieldViolation("transaction.amount.currency_code", "not a currency the features service converts")
    ]
    # Not retried, not hedged, and nothing scored.
    assert len(upstreams.features.calls) == 1
    assert upstreams.predictor.calls == upstreams.postprocess.calls == []


async def test_a_field_the_gateway_made_refused_by_the_features_service_is_an_internal_error(
    make_graph, upstreams
) -> None:
    upstreams.features.answer = refusing(
        FieldViolation("request_values.currency_code", "not a currency the features service converts"),
        FieldViolation("feature_service", "not a feature service of this store"),
    )

    with pytest.raises(UpstreamFailed) as raised:
        await make_graph().score(valid_request(), budget_s=BUDGET_S)

    assert (raised.value.hop, raised.value.code) == ("features", grpc.StatusCode.INTERNAL)


async def test_a_deadline_too_short_calls_no_hop(make_graph, upstreams) -> None:
    with pytest.raises(DeadlineExceeded, match="features not called"):
        await make_graph(hop_reserve_ms=1).score(valid_request(), budget_s=0.0005)

    assert upstreams.features.calls == []
    assert upstreams.predictor.calls == []
    assert upstreams.postprocess.calls == []


async def test_a_hop_that_uses_up_the_deadline_degrades_within_it(make_graph, upstreams) -> None:
    upstreams.features.answer = slow(1.0, features_answer())
    # What the graph does once the hop has timed out (a log line, the verdict) took 26 ms of a 20 ms reserve
    # once on a loaded CI machine: the reserve here leaves room for that, the deadline is the same.
    graph = make_graph(hop_reserve_ms=60)
    started = time.monotonic()

    assessment = await graph.score(valid_request(), budget_s=0.2)

    assert time.monotonic() - started < 0.2
    assert (assessment.verdict, assessment.degraded) == (Verdict.UNCERTAIN, True)
    assert [reason.code for reason in assessment.reasons] == ["POSTPROCESS_FAILED", "FEATURES_FAILED"]
    assert len(upstreams.features.calls) == 1
    assert upstreams.predictor.calls == []
    assert upstreams.postprocess.calls == []


async def test_a_hop_that_uses_up_the_deadline_fails_the_call_by_policy(make_graph, upstreams) -> None:
    upstreams.features.answer = slow(1.0, features_answer())

    with pytest.raises(UpstreamFailed) as raised:
        await make_graph(hop_reserve_ms=20, on_dependency_failure="fail").score(valid_request(), budget_s=0.2)

    assert (raised.value.hop, raised.value.code) == ("features", grpc.StatusCode.DEADLINE_EXCEEDED)


async def test_a_cancelled_call_cancels_the_hop_in_flight(make_graph, upstreams) -> None:
    cancelled = asyncio.Event()

    async def hanging(request, context):
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    upstreams.features.answer = hanging
    call = asyncio.create_task(make_graph().score(valid_request(), budget_s=BUDGET_S))
    while not upstreams.features.calls:
        await asyncio.sleep(0.005)

    call.cancel()

    with pytest.raises(asyncio.CancelledError):
        await call
    await asyncio.wait_for(cancelled.wait(), timeout=2)
    assert upstreams.predictor.calls == []


def served_timeout_ceiling(sent_s: float) -> float:
    """The most time remaining a gRPC server can read for a call whose client sent a timeout of `sent_s`.

    The `grpc-timeout` header is rounded up to a unit of the encoding: the millisecond below 1 s, 10 ms from
    1 s to 10 s (grpc core's timeout_encoding). Core keeps its deadlines and clock in whole milliseconds, so
    a timeout of 1.95 s can go out as 1.96 s: at most one unit more, plus half a millisecond for the two
    clocks being read at different moments."""
    unit = 0.001 if sent_s < 1 else 0.01
    return sent_s + unit + 0.0005


async def test_every_hop_gets_the_remaining_budget_less_the_reserve(make_graph, upstreams) -> None:
    await make_graph(hop_reserve_ms=50).score(valid_request(), budget_s=2.0)

    [features], [predict], [label] = (
        upstreams.features.calls,
        upstreams.predictor.calls,
        upstreams.postprocess.calls,
    )
    # The fakes' views of their deadlines: the predict fake is handed the client's timeout, the gRPC fakes
    # read theirs from the call, as the header carried it.
    assert 1.5 < predict.timeout_s <= 1.95
    for call in (features, label):
        assert 1.5 < call.timeout_s <= served_timeout_ceiling(1.95)


async def test_without_a_caller_deadline_the_default_is_the_budget(make_graph, upstreams) -> None:
    await make_graph(default_deadline_ms=300, hop_reserve_ms=10).score(valid_request(), budget_s=None)

    [features] = upstreams.features.calls
    assert 0.2 < features.timeout_s <= served_timeout_ceiling(0.29)


async def test_a_caller_deadline_past_the_longest_allowed_is_cut_to_it(make_graph, upstreams) -> None:
    graph = make_graph(max_deadline_ms=300, default_deadline_ms=200, hop_reserve_ms=10)
    await graph.score(valid_request(), budget_s=3600.0)

    [features] = upstreams.features.calls
    assert 0.2 < features.timeout_s <= served_timeout_ceiling(0.29)
    [predict] = upstreams.predictor.calls
    assert 0.2 < predict.timeout_s <= 0.29


async def test_a_hung_hop_under_an_hour_long_deadline_degrades_within_the_longest_allowed(
    make_graph, upstreams
) -> None:
    upstreams.features.answer = slow(3600.0, features_answer())
    graph = make_graph(max_deadline_ms=300, default_deadline_ms=200, hop_reserve_ms=60)
    started = time.monotonic()

    # Bounded: a graph that waits out the caller's hour fails here in seconds, not at pytest's timeout.
    assessment = await asyncio.wait_for(graph.score(valid_request(), budget_s=3600.0), timeout=5)

    assert time.monotonic() - started < 0.3
    assert (assessment.verdict, assessment.degraded) == (Verdict.UNCERTAIN, True)
    assert [reason.code for reason in assessment.reasons] == ["POSTPROCESS_FAILED", "FEATURES_FAILED"]


async def test_without_a_longest_deadline_the_caller_deadline_is_the_budget(make_graph, upstreams) -> None:
    await make_graph(max_deadline_ms=None).score(valid_request(), budget_s=3600.0)

    [features] = upstreams.features.calls
    assert features.timeout_s > 3500


async def test_invalid_input_calls_no_hop(make_graph, upstreams) -> None:
    with pytest.raises(InvalidInput):
        await make_graph().score(valid_request(card_number="4111111111111112"), budget_s=BUDGET_S)

    assert upstreams.features.calls == []


async def test_every_hop_carries_the_trace_context_of_its_attempt_span(make_graph, upstreams, spans) -> None:
    assessment = await make_graph().score(valid_request(), budget_s=BUDGET_S)

    finished = {span.name: span for span in spans.get_finished_spans()}
    score = finished["score"]
    assert assessment.trace_id == trace.format_trace_id(score.context.trace_id)
    assert len(assessment.trace_id) == 32
    for hop, call in zip(
        HOPS,
        (upstreams.features.calls[0], upstreams.predictor.calls[0], upstreams.postprocess.calls[0]),
        strict=True,
    ):
        attempt = finished[f"{hop} attempt"]
        assert attempt.parent.span_id == score.context.span_id
        assert attempt.attributes["scoregraph.hedge.outcome"] == "won"
        # A client span by OpenTelemetry's RPC conventions.
        assert attempt.kind is trace.SpanKind.CLIENT
        assert (
            attempt.attributes["rpc.system"],
            attempt.attributes["rpc.service"],
            attempt.attributes["rpc.method"],
            attempt.attributes["rpc.grpc.status_code"],
        ) == ("grpc", *RPCS[hop], 0)
        parent = f"00-{assessment.trace_id}-{trace.format_span_id(attempt.context.span_id)}-"
        assert call.metadata["traceparent"].startswith(parent)


RPCS = {
    "features": ("scoregraph.features.v1.FeaturesService", "GetFeatures"),
    "predict": ("inference.GRPCInferenceService", "ModelInfer"),
    "postprocess": ("scoregraph.postprocess.v1.PostprocessService", "Label"),
}


async def test_under_a_servers_span_the_hops_hang_from_it_without_a_span_of_the_graphs_own(
    make_graph, upstreams, spans, tracer_provider
) -> None:
    graph = make_graph()
    server_tracer = tracer_provider.get_tracer("server")
    with server_tracer.start_as_current_span("GatewayService/Score", kind=trace.SpanKind.SERVER) as server:
        assessment = await graph.score(valid_request(), budget_s=BUDGET_S)

    finished = spans.get_finished_spans()
    assert "score" not in {span.name for span in finished}
    assert assessment.trace_id == trace.format_trace_id(server.get_span_context().trace_id)
    attempts = [span for span in finished if span.name.endswith(" attempt")]
    assert len(attempts) == len(HOPS)
    assert {span.parent.span_id for span in attempts} == {server.get_span_context().span_id}
    assert server.attributes["scoregraph.verdict"] == assessment.verdict.name


async def test_the_span_continues_the_callers_trace(make_graph, upstreams) -> None:
    caller = SpanContext(0x0AF7651916CD43DD8448EB211C80319C, 0xB7AD6B7169203331, True, TraceFlags(1))
    parent = trace.set_span_in_context(NonRecordingSpan(caller))

    assessment = await make_graph().score(valid_request(), budget_s=BUDGET_S, parent=parent)

    assert assessment.trace_id == "0af7651916cd43dd8448eb211c80319c"


async def test_with_tracing_off_a_call_without_a_callers_trace_has_no_trace_id(make_graph, upstreams) -> None:
    # OpenTelemetry's no-op tracer is what a service with tracing off gets.
    graph = make_graph(tracer=trace.NoOpTracer())

    assessment = await graph.score(valid_request(), budget_s=BUDGET_S)

    assert assessment.trace_id == ""
    assert assessment.verdict is Verdict.SUSPICIOUS
    assert all("traceparent" not in call.metadata for call in upstreams.features.calls)


async def test_with_tracing_off_the_callers_trace_id_is_passed_on(make_graph, upstreams) -> None:
    graph = make_graph(tracer=trace.NoOpTracer())
    caller = SpanContext(0x0AF7651916CD43DD8448EB211C80319C, 0xB7AD6B7169203331, True, TraceFlags(1))

    assessment = await graph.score(
        valid_request(), budget_s=BUDGET_S, parent=trace.set_span_in_context(NonRecordingSpan(caller))
    )

    assert assessment.trace_id == "0af7651916cd43dd8448eb211c80319c"
    [call] = upstreams.features.calls
    assert call.metadata["traceparent"] == "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


async def test_logs_one_event_per_score_without_the_card_number(make_graph, upstreams) -> None:
    with capture_logs() as logs:
        assessment = await make_graph().score(valid_request(), budget_s=BUDGET_S)

    [event] = logs
    assert event["event"] == "scored"
    assert event["log_level"] == "info"
    assert event["transaction_id"] == "tx-0001"
    assert (event["verdict"], event["degraded"]) == ("SUSPICIOUS", False)
    assert event["latency_ms"] > 0
    assert event["failed_hops"] == []
    assert assessment.trace_id
    assert TEST_PAN[-8:] not in repr(logs)
