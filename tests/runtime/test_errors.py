import json

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from scoregraph.gateway.v1 import gateway_pb2, gateway_pb2_grpc

from services.runtime.errors import (
    DeadlineExceeded,
    FieldViolation,
    InvalidInput,
    NotReady,
    Overloaded,
    ServiceError,
    UpstreamFailed,
    field_violations_in,
    to_status,
)
from tests.runtime.conftest import LogCapture

pytestmark = pytest.mark.asyncio(loop_scope="session")

TEST_PAN = "4111111111111111"
REQUEST = gateway_pb2.ScoreRequest(transaction=gateway_pb2.Transaction(transaction_id="tx-1"))


def raising(error: Exception):
    async def score(request: gateway_pb2.ScoreRequest) -> gateway_pb2.ScoreResponse:
        raise error

    return score


async def failed_call(channel: grpc.aio.Channel) -> grpc.aio.UnaryUnaryCall:
    call = gateway_pb2_grpc.GatewayServiceStub(channel).Score(REQUEST, timeout=5)
    with pytest.raises(grpc.aio.AioRpcError):
        await call
    return call


async def test_invalid_input_names_the_callers_fields(serve_gateway) -> None:
    channel = await serve_gateway(
        raising(
            InvalidInput(
                [
                    FieldViolation("transaction.card_number", "must be 12 to 19 digits"),
                    FieldViolation("transaction.amount.currency_code", "must be an ISO 4217 code"),
                ]
            )
        )
    )

    call = await failed_call(channel)

    assert await call.code() == grpc.StatusCode.INVALID_ARGUMENT
    status = await rpc_status.aio.from_call(call)
    [detail] = status.details
    bad_request = error_details_pb2.BadRequest()
    assert detail.Unpack(bad_request)
    assert [(v.field, v.description) for v in bad_request.field_violations] == [
        ("transaction.card_number", "must be 12 to 19 digits"),
        ("transaction.amount.currency_code", "must be an ISO 4217 code"),
    ]


async def test_upstream_failure_names_the_hop_and_keeps_its_message_in_logs(
    serve_gateway, json_logs: LogCapture
) -> None:
    channel = await serve_gateway(
        raising(UpstreamFailed("features", grpc.StatusCode.UNAVAILABLE, "redis at 10.0.0.7 refused"))
    )

    call = await failed_call(channel)

    assert await call.code() == grpc.StatusCode.UNAVAILABLE
    assert await call.details() == "features failed: UNAVAILABLE"
    [detail] = (await rpc_status.aio.from_call(call)).details
    info = error_details_pb2.ErrorInfo()
    assert detail.Unpack(info)
    assert (info.reason, info.domain, dict(info.metadata)) == (
        "UPSTREAM_FAILED",
        "scoregraph",
        {"hop": "features", "upstream_code": "UNAVAILABLE"},
    )
    [logged] = [r for r in json_logs.records() if r["event"] == "upstream failed"]
    assert logged["upstream_message"] == "redis at 10.0.0.7 refused"


async def test_a_deadline_too_short_for_a_hop_is_logged_naming_the_hop(
    serve_gateway, json_logs: LogCapture
) -> None:
    channel = await serve_gateway(
        raising(DeadlineExceeded("deadline too short: predict not called", hop="predict"))
    )

    call = await failed_call(channel)

    assert await call.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    [logged] = [r for r in json_logs.records() if r["event"] == "request failed"]
    assert (logged["level"], logged["code"], logged["hop"]) == ("info", "DEADLINE_EXCEEDED", "predict")


async def test_unexpected_errors_are_internal_without_their_text(
    serve_gateway, json_logs: LogCapture
) -> None:
    channel = await serve_gateway(raising(KeyError(f"no key for card {TEST_PAN}")))

    call = await failed_call(channel)

    assert await call.code() == grpc.StatusCode.INTERNAL
    assert await call.details() == "internal error"
    [logged] = [r for r in json_logs.records() if r["event"] == "unexpected error"]
    assert logged["method"] == "/scoregraph.gateway.v1.GatewayService/Score"
    assert logged["exception"][0]["exc_type"] == "KeyError"
    assert TEST_PAN[-12:] not in json_logs.text


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (NotReady("model not loaded"), grpc.StatusCode.UNAVAILABLE),
        (Overloaded("queue full"), grpc.StatusCode.RESOURCE_EXHAUSTED),
        (DeadlineExceeded("2 ms left, predict needs 5 ms"), grpc.StatusCode.DEADLINE_EXCEEDED),
        (UpstreamFailed("predict", grpc.StatusCode.DEADLINE_EXCEEDED, ""), grpc.StatusCode.DEADLINE_EXCEEDED),
        (UpstreamFailed("predict", grpc.StatusCode.RESOURCE_EXHAUSTED, ""), grpc.StatusCode.UNAVAILABLE),
        # Our request was bad, not the caller's: INVALID_ARGUMENT would blame the caller.
        (UpstreamFailed("predict", grpc.StatusCode.INVALID_ARGUMENT, ""), grpc.StatusCode.INTERNAL),
    ],
)
async def test_domain_errors_map_to_status(serve_gateway, error: ServiceError, code: grpc.StatusCode) -> None:
    channel = await serve_gateway(raising(error))

    call = await failed_call(channel)

    assert await call.code() == code
    assert await call.details() == error.message


async def _undecodable_call(serve_gateway, body: bytes) -> tuple[grpc.aio.UnaryUnaryCall, list]:
    served: list = []

    async def score(request: gateway_pb2.ScoreRequest) -> gateway_pb2.ScoreResponse:
        served.append(request)
        return gateway_pb2.ScoreResponse()

    channel = await serve_gateway(score)
    call = channel.unary_unary("/scoregraph.gateway.v1.GatewayService/Score")(body, timeout=5)
    with pytest.raises(grpc.aio.AioRpcError):
        await call
    return call, served


@pytest.mark.parametrize("body", [b"\xff\xff\xff\xff", b"\x0a\x05abc", b"\x0a\x03\x0a\x02\xc3"])
async def test_a_body_that_is_not_the_request_message_is_invalid_argument_naming_its_type(
    serve_gateway, json_logs: LogCapture, body: bytes
) -> None:
    # Raw bytes: a truncated varint, a length past the end, a nested length past its message's end.
    call, served = await _undecodable_call(serve_gateway, body)

    assert await call.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert await call.details() == (
        "invalid request: the body is not a scoregraph.gateway.v1.ScoreRequest message"
    )
    [detail] = (await rpc_status.aio.from_call(call)).details
    info = error_details_pb2.ErrorInfo()
    assert detail.Unpack(info)
    assert (info.reason, dict(info.metadata)) == (
        "UNDECODABLE_REQUEST",
        {"message_type": "scoregraph.gateway.v1.ScoreRequest"},
    )
    assert served == []
    # A caller's mistake, logged as a failed request: no error line, no traceback.
    records = json_logs.records()
    assert ("request failed", "info") in [(r["event"], r["level"]) for r in records]
    assert [r for r in records if r["level"] in ("warning", "error") or "exception" in r] == []


@pytest.mark.parametrize(
    ("field", "text"),
    [("transaction.merchant_id", b"shop-\xff"), ("transaction.card_number", b"411111111111\xc31111")],
)
async def test_text_that_is_not_utf8_is_invalid_argument_naming_its_field_and_not_its_bytes(
    serve_gateway, json_logs: LogCapture, field: str, text: bytes
) -> None:
    request = gateway_pb2.ScoreRequest()
    request.transaction.transaction_id = "tx-1"
    placeholder = "x" * len(text)
    setattr(request.transaction, field.rsplit(".", 1)[1], placeholder)
    body = request.SerializeToString().replace(placeholder.encode(), text)

    call, served = await _undecodable_call(serve_gateway, body)

    assert await call.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert await call.details() == f"invalid request: {field} is not valid UTF-8"
    bad_request, info = error_details_pb2.BadRequest(), error_details_pb2.ErrorInfo()
    first, second = (await rpc_status.aio.from_call(call)).details
    assert first.Unpack(bad_request) and second.Unpack(info)
    assert [(v.field, v.description) for v in bad_request.field_violations] == [(field, "is not valid UTF-8")]
    assert info.reason == "UNDECODABLE_REQUEST"
    assert served == []
    # Neither the bytes nor the digits around them, anywhere the caller or an operator reads.
    seen = (await call.details()) + json.dumps(json_logs.records())
    assert "411111111111" not in seen
    assert "shop-" not in seen


async def test_field_violations_are_read_back_from_the_status_details_they_were_sent_in() -> None:
    violations = [FieldViolation("request_values.currency_code", "not converted"), FieldViolation("a.b", "c")]
    status = to_status(InvalidInput(violations))

    assert field_violations_in((("x-other", "1"), *status.trailing_metadata)) == tuple(violations)


@pytest.mark.parametrize(
    "metadata",
    [
        None,
        (),
        (("grpc-status-details-bin", b"\xff\xff\xff"),),
        to_status(UpstreamFailed("features", grpc.StatusCode.UNAVAILABLE, "down")).trailing_metadata,
    ],
    ids=["none", "empty", "unreadable", "no-bad-request"],
)
async def test_status_details_without_field_violations_give_none(metadata) -> None:
    assert field_violations_in(metadata) == ()
