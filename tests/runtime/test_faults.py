"""Injected faults on a real GrpcServer: the service's own RPCs misbehave, health and reflection never do."""

import asyncio
import contextlib
import random
import time
from collections.abc import Awaitable, Callable

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client import REGISTRY
from scoregraph.gateway.v1 import gateway_pb2, gateway_pb2_grpc

from services.runtime import interceptors
from services.runtime.faults import FaultInterceptor, fault_interceptors
from services.runtime.interceptors import ConcurrencyLimit, SummaryLine
from tests.runtime.conftest import LogCapture
from tests.runtime.scripted_gateway import GATEWAY_SERVICE_NAME, runtime_settings


async def echo(request: gateway_pb2.ScoreRequest) -> gateway_pb2.ScoreResponse:
    return gateway_pb2.ScoreResponse(transaction_id=request.transaction.transaction_id)


@pytest.fixture
def faulty_gateway(serve_gateway) -> Callable[..., Awaitable[grpc.aio.Channel]]:
    """A GrpcServer around an echoing GatewayService, with the fault settings a test gives."""
    return lambda **faults: serve_gateway(echo, grace_period_s=0.1, **faults)


def request_lines(logs: LogCapture) -> list[tuple[str, str, str]]:
    """(event, code, level) of the lines logged about calls."""
    return [(r["event"], r["code"], r["level"]) for r in logs.records() if r["event"].startswith("request ")]


def score_request() -> gateway_pb2.ScoreRequest:
    return gateway_pb2.ScoreRequest(transaction=gateway_pb2.Transaction(transaction_id="tx-1"))


async def test_no_fault_is_configured_by_default() -> None:
    assert fault_interceptors(runtime_settings()) == []


async def test_an_erroring_service_answers_unavailable_and_stays_healthy(faulty_gateway, json_logs) -> None:
    channel = await faulty_gateway(fault_error_share=1.0)

    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await gateway_pb2_grpc.GatewayServiceStub(channel).Score(score_request(), timeout=5)

    assert raised.value.code() is grpc.StatusCode.UNAVAILABLE
    # The call's one line, as for any failed call (before: none).
    assert request_lines(json_logs) == [("request failed", "UNAVAILABLE", "info")]
    health = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
    assert health.status == health_pb2.HealthCheckResponse.SERVING


async def test_a_slow_service_answers_late(faulty_gateway) -> None:
    channel = await faulty_gateway(fault_delay_ms=100)
    stub = gateway_pb2_grpc.GatewayServiceStub(channel)
    await stub.Score(score_request(), timeout=5)  # connected

    started = time.monotonic()
    reply = await stub.Score(score_request(), timeout=5)

    assert reply.transaction_id == "tx-1"
    assert time.monotonic() - started >= 0.1


@pytest.mark.parametrize(
    "fault", [{"fault_hang": True}, {"fault_delay_ms": 1000}], ids=["hung", "answering late"]
)
async def test_a_call_whose_deadline_passes_in_a_fault_ends_with_its_line(
    faulty_gateway, json_logs, fault
) -> None:
    channel = await faulty_gateway(**fault)

    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await gateway_pb2_grpc.GatewayServiceStub(channel).Score(score_request(), timeout=0.2)
    for _ in range(100):  # the server learns of the deadline a moment after the caller
        if request_lines(json_logs):
            break
        await asyncio.sleep(0.01)

    assert raised.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED
    # Before, a call cancelled in its fault (a deadline, a hedge that lost) ended with no line.
    assert request_lines(json_logs) == [("request cancelled", "DEADLINE_EXCEEDED", "info")]
    health = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
    assert health.status == health_pb2.HealthCheckResponse.SERVING


class RecordingContext:
    def __init__(self) -> None:
        self.aborted: list[grpc.StatusCode] = []

    async def abort(self, code: grpc.StatusCode, details: str) -> None:
        self.aborted.append(code)
        raise grpc.aio.AbortError()

    async def abort_with_status(self, status: grpc.Status) -> None:
        self.aborted.append(status.code)
        raise grpc.aio.AbortError()


async def test_shares_of_calls_are_faulted() -> None:
    settings = runtime_settings(fault_error_share=0.25, fault_delay_ms=0.001, fault_delay_share=0.5)
    interceptor = FaultInterceptor(settings, rng=random.Random(7))
    answered = 0

    async def behavior(request, context):
        nonlocal answered
        answered += 1

    faulty = interceptor.wrap(behavior, "/scoregraph.gateway.v1.GatewayService/Score")
    context = RecordingContext()
    for _ in range(2000):
        with contextlib.suppress(grpc.aio.AbortError):
            await faulty(None, context)

    assert 400 < len(context.aborted) < 600
    assert len(context.aborted) + answered == 2000


async def test_a_server_at_its_concurrency_limit_sheds_further_calls_at_once(
    faulty_gateway, json_logs
) -> None:
    # The first call holds the only slot for 1 s; the second is refused long before, while the first still
    # runs. (With 0.3 s and a 0.15 s bound, a loaded CI machine once took 0.34 s to refuse.)
    channel = await faulty_gateway(fault_delay_ms=1000, max_concurrent_rpcs=1)
    stub = gateway_pb2_grpc.GatewayServiceStub(channel)
    first = asyncio.ensure_future(stub.Score(score_request(), timeout=5))
    await asyncio.sleep(0.1)
    shed_before = shed_calls()

    started = time.monotonic()
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await stub.Score(score_request(), timeout=5)

    assert raised.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert time.monotonic() - started < 0.5
    # Before, gRPC's own limit refused the call before any interceptor ran: no metric or log line saw it,
    # and health checks were refused too while the service was at its limit.
    assert shed_calls() == shed_before + 1
    assert request_lines(json_logs) == [("request shed", "RESOURCE_EXHAUSTED", "info")]
    health = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
    assert health.status == health_pb2.HealthCheckResponse.SERVING
    assert not first.done()
    assert (await first).transaction_id == "tx-1"


def shed_calls() -> float:
    labels = {"rpc_service": GATEWAY_SERVICE_NAME, "rpc_method": "Score", "grpc_code": "RESOURCE_EXHAUSTED"}
    return REGISTRY.get_sample_value("scoregraph_rpc_server_requests_total", labels) or 0.0


async def test_while_calls_are_shed_one_line_a_second_counts_them(json_logs) -> None:
    now = [100.0]
    limit = ConcurrencyLimit(1, clock=lambda: now[0])
    release = asyncio.Event()

    async def behavior(request, context):
        await release.wait()

    limited = limit.wrap(behavior, "/scoregraph.gateway.v1.GatewayService/Score")
    holder = asyncio.ensure_future(limited(None, RecordingContext()))
    await asyncio.sleep(0)
    refused = RecordingContext()
    for step in (0.0, 0.3, 0.3, 0.5, 0.1):
        now[0] += step
        with contextlib.suppress(grpc.aio.AbortError):
            await limited(None, refused)
    release.set()
    await holder

    assert refused.aborted == [grpc.StatusCode.RESOURCE_EXHAUSTED] * 5
    assert limit.in_flight == 0
    # At 100.0 the first; 100.3 and 100.6 held back; at 101.1 a second saying 3 (those two and itself).
    assert [r["shed"] for r in json_logs.records() if r["event"] == "request shed"] == [1, 3]


async def test_the_calls_a_summary_line_held_back_are_logged_when_its_interval_has_passed(
    monkeypatch, json_logs
) -> None:
    # Before, they waited for the next call's line, which after the end of a burst never came.
    monkeypatch.setattr(interceptors, "SUMMARY_LOG_INTERVAL_S", 0.1)
    line = SummaryLine("request shed", "shed")
    for _ in range(3):
        line.add(method="/a/B")
    logged = [r["shed"] for r in json_logs.records() if r["event"] == "request shed"]
    for _ in range(100):
        await asyncio.sleep(0.01)
        if len(json_logs.records()) > len(logged):
            break

    assert logged == [1]
    assert [r["shed"] for r in json_logs.records() if r["event"] == "request shed"] == [1, 2]
    line.flush()  # nothing is left to log
    assert [r["shed"] for r in json_logs.records() if r["event"] == "request shed"] == [1, 2]
