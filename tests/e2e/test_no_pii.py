"""A well-known test card number and a client IP go in, in good and bad requests and failing ones; neither
comes out in any span, log line, metric or error message."""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterator

import grpc
import pytest
from scoregraph.gateway.v1 import gateway_pb2, gateway_pb2_grpc

from services.stack.traffic import score_request
from tests.e2e.telemetry import TracedStack, traced_stack_for
from tests.ports import STACK_BASES

pytestmark = pytest.mark.e2e

TEST_PAN = "4111111111111111"
CLIENT_IP = "203.0.113.77"
# A caller's secret in trace-header members malformed enough that OpenTelemetry's propagators warn of them.
CALLER_SECRET = "9Qx7Zp-hunter2"
SECRETS = (TEST_PAN, TEST_PAN[-12:], CLIENT_IP, CALLER_SECRET)


def trace_headers(*, well_formed: bool) -> tuple[tuple[str, str], ...]:
    """A caller's trace headers with secrets in them: members malformed enough to be warned of, or well
    formed ones, which OpenTelemetry takes (and, before the gateway kept only the caller's trace, exported
    in every span's trace state and passed on to every hop)."""
    traceparent = ("traceparent", f"00-{secrets.token_hex(16)}-{secrets.token_hex(8)}-01")
    if well_formed:
        return (
            traceparent,
            ("tracestate", f"vendor={TEST_PAN},congo=t61rcWkgMzE"),
            ("baggage", f"card={TEST_PAN},client_ip={CLIENT_IP},pin={CALLER_SECRET}"),
        )
    return (
        traceparent,
        ("tracestate", f"vendor=ok,pin {CALLER_SECRET}"),
        ("baggage", f"user=alice,pin {CALLER_SECRET},token={CALLER_SECRET} x"),
    )


@pytest.fixture(scope="module")
def traced_stack(tmp_path_factory) -> Iterator[TracedStack]:
    yield from traced_stack_for(tmp_path_factory, STACK_BASES["no pii"])


def requests(live) -> Iterator[gateway_pb2.ScoreRequest]:
    base = score_request(next(live.itertuples(index=False)))
    base.transaction.card_number = TEST_PAN
    base.transaction.ip_address = CLIENT_IP
    yield base
    # Bad input: the number in identifier fields, which travel further than the card number does.
    for field in ("transaction_id", "customer_id", "merchant_id", "device_id"):
        request = gateway_pb2.ScoreRequest()
        request.CopyFrom(base)
        setattr(request.transaction, field, TEST_PAN)
        yield request
    invalid = gateway_pb2.ScoreRequest()
    invalid.CopyFrom(base)
    invalid.transaction.amount.currency_code = "XYZ"
    yield invalid
    # A currency the gateway accepts and the features service does not convert: a failing downstream hop.
    downstream = gateway_pb2.ScoreRequest()
    downstream.CopyFrom(base)
    downstream.transaction.amount.currency_code = "CHF"
    yield downstream


def test_the_card_number_and_the_ip_address_never_come_out(traced_stack, live):
    errors = []
    trace_ids = []
    with grpc.insecure_channel(traced_stack.stack.gateway) as channel:
        stub = gateway_pb2_grpc.GatewayServiceStub(channel)
        for request in requests(live):
            for timeout, well_formed in ((5, False), (5, True), (0.001, False), (0.001, True)):
                metadata = trace_headers(well_formed=well_formed)
                try:
                    trace_ids.append(stub.Score(request, timeout=timeout, metadata=metadata).trace_id)
                except grpc.RpcError as error:
                    errors.append(
                        f"{error.code()} {error.details()} {error.trailing_metadata()} "
                        f"{error.debug_error_string()}"
                    )
    assert errors, "some calls should have failed"
    traced_stack.wait_for_traces(trace_ids[:1])

    spans = json.dumps([span.__dict__ for span in traced_stack.collector.spans()], default=str)
    logs = traced_stack.stack.log_path.read_text()
    assert "Invalid baggage entry" in logs, "the malformed trace headers were not warned of"
    metrics = "\n".join(traced_stack.metrics().values())
    assert traced_stack.collector.spans(), "no spans captured"
    for where, text in {
        "spans": spans,
        "logs": logs,
        "metrics": metrics,
        "errors": "\n".join(errors),
    }.items():
        for secret in SECRETS:
            assert secret not in text, f"{secret} in {where}"
