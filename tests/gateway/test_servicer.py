"""Score over a real gRPC server: what the caller sees of deadlines, errors and trace context."""

from collections.abc import AsyncIterator

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from scoregraph.gateway.v1 import gateway_pb2, gateway_pb2_grpc

from services.gateway.servicer import gateway_registration
from services.runtime.server import GrpcServer
from tests.gateway.conftest import gateway_settings
from tests.gateway.transactions import TEST_PAN, valid_request
from tests.gateway.upstream_fakes import failing

pytestmark = pytest.mark.asyncio(loop_scope="session")


@pytest.fixture
async def serve(make_graph) -> AsyncIterator:
    """Starts the gateway on a free port over the fakes; returns a stub for it."""
    servers: list[GrpcServer] = []
    channels: list[grpc.aio.Channel] = []

    async def start(**overrides) -> gateway_pb2_grpc.GatewayServiceStub:
        server = GrpcServer(gateway_settings(), [gateway_registration(make_graph(**overrides))])
        await server.start()
        servers.append(server)
        channels.append(grpc.aio.insecure_channel(f"127.0.0.1:{server.port}"))
        return gateway_pb2_grpc.GatewayServiceStub(channels[-1])

    yield start
    for channel in channels:
        await channel.close()
    for server in servers:
        await server.stop()


def _status_details(error: grpc.aio.AioRpcError) -> list:
    return list(rpc_status.from_call(error).details)


async def test_scores_a_transaction(serve, upstreams) -> None:
    gateway = await serve()

    response = await gateway.Score(valid_request(), timeout=5)

    assert response.transaction_id == "tx-0001"
    assert response.verdict == gateway_pb2.VERDICT_SUSPICIOUS
    assert response.score == pytest.approx(0.625)
    assert (response.model_name, response.model_version) == ("fraud_mlp", "3")
    assert not response.degraded
    assert len(response.trace_id) == 32


async def test_bad_input_names_every_field_and_never_the_card_number(serve, upstreams) -> None:
    gateway = await serve()
    request = valid_request(card_number=TEST_PAN[:-1] + "2", merchant_country="")

    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await gateway.Score(request, timeout=5)

    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    [detail] = _status_details(raised.value)
    bad_request = error_details_pb2.BadRequest()
    assert detail.Unpack(bad_request)
    assert [violation.field for violation in bad_request.field_violations] == [
        "transaction.card_number",
        "transaction.merchant_country",
    ]
    assert TEST_PAN[:8] not in str(bad_request) + raised.value.details()


async def test_the_callers_deadline_reaches_the_hops(serve, upstreams) -> None:
    gateway = await serve(default_deadline_ms=8_000)

    await gateway.Score(valid_request(), timeout=2)

    [call] = upstreams.features.calls
    # The caller's 2 s, not the 8 s default; gRPC's timeout encoding may round the hop's view up a little.
    assert 1.5 < call.timeout_s < 2.5


async def test_a_callers_hour_long_deadline_reaches_the_hops_cut_to_the_longest_allowed(
    serve, upstreams
) -> None:
    gateway = await serve(default_deadline_ms=200, max_deadline_ms=400)

    await gateway.Score(valid_request(), timeout=3600)

    [call] = upstreams.features.calls
    assert 0.3 < call.timeout_s < 0.45


async def test_the_callers_trace_continues_through_every_hop(serve, upstreams) -> None:
    gateway = await serve()
    trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"

    response = await gateway.Score(
        valid_request(), timeout=5, metadata=(("traceparent", f"00-{trace_id}-00f067aa0ba902b7-01"),)
    )

    assert response.trace_id == trace_id
    assert upstreams.features.calls[0].metadata["traceparent"].startswith(f"00-{trace_id}-")
    assert upstreams.postprocess.calls[0].metadata["traceparent"].startswith(f"00-{trace_id}-")


async def test_a_failed_hop_is_named_when_the_policy_is_to_fail(serve, upstreams) -> None:
    gateway = await serve(on_dependency_failure="fail")
    upstreams.features.answer = failing(grpc.StatusCode.UNAVAILABLE)

    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await gateway.Score(valid_request(), timeout=5)

    assert raised.value.code() == grpc.StatusCode.UNAVAILABLE
    [detail] = _status_details(raised.value)
    info = error_details_pb2.ErrorInfo()
    assert detail.Unpack(info)
    assert info.metadata["hop"] == "features"


async def test_an_upstream_rejecting_our_request_is_internal(serve, upstreams) -> None:
    gateway = await serve()
    upstreams.postprocess.answer = failing(grpc.StatusCode.INVALID_ARGUMENT)

    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await gateway.Score(valid_request(), timeout=5)

    assert raised.value.code() == grpc.StatusCode.INTERNAL
    assert len(upstreams.postprocess.calls) == 1


async def test_a_one_millisecond_deadline_is_exceeded(serve, upstreams) -> None:
    gateway = await serve()

    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await gateway.Score(valid_request(), timeout=0.001)

    assert raised.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert upstreams.postprocess.calls == []
