"""One trace per Score call through every hop, Triton's own spans included, with logs and metrics that
lead to it."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator

import grpc
import pytest
from scoregraph.gateway.v1 import gateway_pb2_grpc

from services.stack.collector import CollectedSpan
from services.stack.traffic import score_request
from tests.e2e.conftest import samples
from tests.e2e.telemetry import (
    PYTHON_SERVICES,
    SCORE_SPAN,
    UNCONTINUED_BY_TRITON,
    TracedStack,
    traced_stack_for,
)
from tests.ports import STACK_BASES

pytestmark = pytest.mark.e2e

CALLER_TRACE = "5bd66ef5095369c7b0d1f8f4bd33716a"
CALLER_SPAN = "c532cb4098ac3dd2"


@pytest.fixture(scope="module")
def traced_stack(tmp_path_factory) -> Iterator[TracedStack]:
    yield from traced_stack_for(tmp_path_factory, STACK_BASES["traced"])


@pytest.fixture(scope="module")
def scored(traced_stack: TracedStack, live) -> list[tuple[str, str]]:
    """(transaction id, trace id) of a few Score calls, the first inside a caller's own trace."""
    out = []
    with grpc.insecure_channel(traced_stack.stack.gateway) as channel:
        stub = gateway_pb2_grpc.GatewayServiceStub(channel)
        for index, row in enumerate(live.sample(5, random_state=7).itertuples(index=False)):
            metadata = (("traceparent", f"00-{CALLER_TRACE}-{CALLER_SPAN}-01"),) if index == 0 else ()
            reply = stub.Score(score_request(row), timeout=5, metadata=metadata)
            out.append((row.transaction_id, reply.trace_id))
    trace_ids = [trace_id for _, trace_id in out]
    complete = traced_stack.wait_for_traces(trace_ids)
    assert complete, "traces incomplete after 15 s:\n" + traced_stack.describe(trace_ids)
    return out


def one(spans: list[CollectedSpan], service: str, name: str) -> CollectedSpan:
    found = [span for span in spans if span.service == service and span.name == name]
    assert len(found) == 1, (
        f"{len(found)} spans {name!r} of {service}: {[(s.service, s.name) for s in spans]}"
    )
    return found[0]


def some(spans: list[CollectedSpan], service: str, name: str) -> list[CollectedSpan]:
    found = [span for span in spans if span.service == service and span.name == name]
    assert found, f"no span {name!r} of {service}: {[(s.service, s.name) for s in spans]}"
    return found


def called_by_the_gateway(span: CollectedSpan, score: CollectedSpan, by_id: dict[str, CollectedSpan]) -> bool:
    """`span`'s parent is a gateway span, under the gateway's Score span."""
    parent = by_id.get(span.parent_span_id)
    if parent is None or parent.service != "scoregraph-gateway":
        return False
    while parent is not None and parent.span_id != score.span_id:
        parent = by_id.get(parent.parent_span_id)
    return parent is not None


def test_each_call_is_one_trace_with_every_hop_linked_to_its_caller(traced_stack, scored):
    with_triton = traced_stack.traced_by_triton([trace_id for _, trace_id in scored])
    assert len(with_triton) >= len(scored) - UNCONTINUED_BY_TRITON
    for _, trace_id in scored:
        spans = traced_stack.collector.trace(trace_id)
        by_id = {span.span_id: span for span in spans}
        assert {span.trace_id for span in spans} == {trace_id}
        assert {span.service for span in spans} >= PYTHON_SERVICES

        score = one(spans, "scoregraph-gateway", SCORE_SPAN)
        assert score.kind == "server"
        assert score.attributes["rpc.system"] == "grpc" and score.attributes["rpc.method"] == "Score"
        assert score.attributes["scoregraph.model_version"] == "1"
        assert score.attributes["scoregraph.verdict"] in {"NOT_FRAUD", "SUSPICIOUS", "HIGHLY_SUSPICIOUS"}

        # A hedged hop has a server span per attempt that reached a replica; each is the gateway's child.
        features = some(spans, "scoregraph-features", "scoregraph.features.v1.FeaturesService/GetFeatures")
        postprocess = some(
            spans, "scoregraph-postprocess", "scoregraph.postprocess.v1.PostprocessService/Label"
        )
        triton = some(spans, "scoregraph-triton", "InferRequest") if trace_id in with_triton else []
        for hop in (*features, *postprocess, *triton):
            assert called_by_the_gateway(hop, score, by_id), (
                f"{hop.name} is not a child of the gateway's Score call"
            )
        assert any(span.attributes["scoregraph.features.present"] >= 1 for span in features)
        for store in some(spans, "scoregraph-features", "feast online read"):
            assert store.parent_span_id in {span.span_id for span in features}
        # Triton's own spans: the model's (with its queue time) and its compute, under each request.
        for request in triton:
            [model] = [span for span in spans if span.parent_span_id == request.span_id]
            [compute] = [span for span in spans if span.parent_span_id == model.span_id]
            assert (model.name, compute.name) == ("fraud_mlp", "compute")
            assert "QUEUE_START" in {name for name, _, _ in model.events}

        # Every link leads to a span of the trace, but the root's, which is the caller's.
        dangling = {span.parent_span_id for span in spans if span.parent_span_id not in by_id}
        assert dangling <= {"", CALLER_SPAN}


def test_a_callers_trace_context_is_continued(traced_stack, scored):
    _, trace_id = scored[0]
    assert trace_id == CALLER_TRACE
    score = one(traced_stack.collector.trace(trace_id), "scoregraph-gateway", SCORE_SPAN)
    assert score.parent_span_id == CALLER_SPAN


def test_a_call_its_caller_does_not_sample_is_traced_nowhere_triton_included(traced_stack, scored, live):
    # Before, tritonserver traced every request that came with a trace context, sampled or not: each of
    # these calls left Triton's spans in the collector (and at a sampling ratio of 0.1, 90 % of the traces
    # held nothing but Triton's).
    unsampled = [f"{n + 1:032x}" for n in range(6)]
    rows = list(live.sample(9, random_state=11).itertuples(index=False))
    with grpc.insecure_channel(traced_stack.stack.gateway) as channel:
        stub = gateway_pb2_grpc.GatewayServiceStub(channel)
        for trace_id, row in zip(unsampled, rows[:6], strict=True):
            metadata = (("traceparent", f"00-{trace_id}-{CALLER_SPAN}-00"),)
            assert stub.Score(score_request(row), timeout=5, metadata=metadata).trace_id == trace_id
        # Sampled calls after them: once their traces are in, so would be whatever the unsampled ones left.
        after = [stub.Score(score_request(row), timeout=5).trace_id for row in rows[6:]]
    assert traced_stack.wait_for_traces(after), traced_stack.describe(after)

    assert not [t for t in unsampled if traced_stack.collector.trace(t)]
    # Every trace Triton is in is a Score call's: Triton starts none of its own.
    for trace_id in traced_stack.collector.trace_ids():
        assert any(span.name == SCORE_SPAN for span in traced_stack.collector.trace(trace_id)), (
            traced_stack.describe([trace_id])
        )


def test_hedge_attempts_are_siblings_marked_won_or_cancelled(traced_stack, scored):
    attempts = [
        span
        for _, trace_id in scored
        for span in traced_stack.collector.trace(trace_id)
        if "scoregraph.hedge.outcome" in span.attributes
    ]
    if not attempts:
        pytest.skip("the gateway made no attempt spans (no hedging in this build or none fired)")
    by_call: dict[tuple[str, str], list[CollectedSpan]] = {}
    for span in attempts:
        by_call.setdefault((span.parent_span_id, span.attributes["scoregraph.hop"]), []).append(span)
    for siblings in by_call.values():
        outcomes = [span.attributes["scoregraph.hedge.outcome"] for span in siblings]
        assert outcomes.count("won") == 1, outcomes
        assert set(outcomes) <= {"won", "cancelled", "failed"}


def test_every_request_log_line_carries_its_trace(traced_stack, scored):
    records = []
    for line in traced_stack.stack.log_path.read_text().splitlines():
        match = re.search(r"\{.*\}\s*$", line)
        if match:
            try:
                records.append(json.loads(match.group()))
            except json.JSONDecodeError:
                continue
    for transaction_id, trace_id in scored:
        events = {(r["service"], r["event"]) for r in records if r.get("trace_id") == trace_id}
        assert {("gateway", "scored"), ("features", "features read"), ("postprocess", "labelled")} <= events
        [scored_line] = [r for r in records if r.get("event") == "scored" and r.get("trace_id") == trace_id]
        assert scored_line["transaction_id"] == transaction_id and re.fullmatch(
            r"[0-9a-f]{16}", scored_line["span_id"]
        )


def test_every_service_counts_its_rpcs_and_the_gateway_its_hops_and_verdicts(traced_stack, scored):
    pages = traced_stack.metrics()
    gateway = pages["gateway"]
    requests = "scoregraph_rpc_server_requests_total"
    assert samples(gateway, requests, rpc_method="Score", grpc_code="OK") >= len(scored)
    assert samples(gateway, "scoregraph_rpc_server_duration_seconds_count", rpc_method="Score") >= len(scored)
    assert samples(gateway, "scoregraph_verdicts_total", model_name="fraud_mlp", model_version="1") >= len(
        scored
    )
    for hop in ("features", "predict", "postprocess"):
        # Per upstream hop, every attempt: counted and timed.
        assert samples(gateway, "scoregraph_upstream_requests_total", hop=hop, grpc_code="OK") >= len(scored)
        assert samples(gateway, "scoregraph_upstream_duration_seconds_count", hop=hop) == samples(
            gateway, "scoregraph_upstream_requests_total", hop=hop
        )
    served = sum(samples(pages[name], requests, rpc_method="GetFeatures") for name in pages)
    assert served >= len(scored)
    assert sum(samples(pages[name], requests, rpc_method="Label") for name in pages) >= len(scored)
    assert (
        sum(samples(pages[name], "scoregraph_feature_values_total", status="present") for name in pages) > 0
    )
