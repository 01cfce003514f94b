import asyncio
import contextlib
import os
import signal
import socket
import urllib.request

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from scoregraph.gateway.v1 import gateway_pb2, gateway_pb2_grpc

from services.runtime.server import run
from tests.runtime.scripted_gateway import GATEWAY_SERVICE_NAME, gateway_registration, runtime_settings

pytestmark = pytest.mark.asyncio(loop_scope="session")

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


async def echo(request: gateway_pb2.ScoreRequest) -> gateway_pb2.ScoreResponse:
    return gateway_pb2.ScoreResponse(transaction_id=request.transaction.transaction_id)


def free_port() -> int:
    # run() takes its port from settings and does not report it back, so the test picks one.
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


async def test_health_reports_every_service_serving(serve_gateway) -> None:
    health = health_pb2_grpc.HealthStub(await serve_gateway(echo))

    for service in ("", GATEWAY_SERVICE_NAME):
        response = await health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
        assert response.status == SERVING


async def test_reflection_lists_the_hosted_services(serve_gateway) -> None:
    reflection = reflection_pb2_grpc.ServerReflectionStub(await serve_gateway(echo))

    responses = reflection.ServerReflectionInfo(
        iter([reflection_pb2.ServerReflectionRequest(list_services="")])
    )
    [response] = [response async for response in responses]

    listed = {service.name for service in response.list_services_response.service}
    assert listed == {
        GATEWAY_SERVICE_NAME,
        "grpc.health.v1.Health",
        "grpc.reflection.v1alpha.ServerReflection",
    }


async def refusing_new_calls(health: health_pb2_grpc.HealthStub) -> None:
    # Once the server refuses new calls it is stopping, so an in-flight call that still completes after
    # this was drained by the grace period rather than finishing before stop() began.
    while True:
        try:
            await health.Check(health_pb2.HealthCheckRequest(), timeout=1)
        except grpc.aio.AioRpcError as error:
            assert error.code() == grpc.StatusCode.UNAVAILABLE
            return
        await asyncio.sleep(0.01)


@pytest.mark.timeout(30)
async def test_sigterm_reports_not_serving_then_drains_in_flight_calls() -> None:
    port = free_port()
    in_flight = asyncio.Event()
    release = asyncio.Event()

    async def slow_echo(request: gateway_pb2.ScoreRequest) -> gateway_pb2.ScoreResponse:
        in_flight.set()
        await release.wait()
        return await echo(request)

    serving = asyncio.create_task(run(runtime_settings(port=port), [gateway_registration(slow_echo)]))
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            health = health_pb2_grpc.HealthStub(channel)
            watch = health.Watch(
                health_pb2.HealthCheckRequest(service=GATEWAY_SERVICE_NAME), wait_for_ready=True
            )
            assert (await watch.read()).status == SERVING
            score = asyncio.ensure_future(
                gateway_pb2_grpc.GatewayServiceStub(channel).Score(
                    gateway_pb2.ScoreRequest(transaction=gateway_pb2.Transaction(transaction_id="tx-1")),
                    timeout=10,
                )
            )
            await in_flight.wait()

            os.kill(os.getpid(), signal.SIGTERM)

            assert (await watch.read()).status == NOT_SERVING
            await refusing_new_calls(health)
            assert not score.done()
            # The watch stream would otherwise hold the server until the grace period ends.
            watch.cancel()
            release.set()
            assert (await score).transaction_id == "tx-1"
        await asyncio.wait_for(serving, timeout=5)
    finally:
        serving.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await serving


@pytest.mark.timeout(30)
async def test_run_serves_metrics_until_shutdown() -> None:
    port, metrics_port = free_port(), free_port()
    serving = asyncio.create_task(run(runtime_settings(port=port, metrics_port=metrics_port), []))
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            health = health_pb2_grpc.HealthStub(channel)
            await health.Check(health_pb2.HealthCheckRequest(), wait_for_ready=True, timeout=5)

            with await asyncio.to_thread(
                urllib.request.urlopen, f"http://127.0.0.1:{metrics_port}/metrics"
            ) as page:
                assert page.status == 200

            os.kill(os.getpid(), signal.SIGTERM)
            await asyncio.wait_for(serving, timeout=5)

        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", metrics_port), timeout=1)
    finally:
        serving.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await serving


def loopback_v6() -> bool:
    with socket.socket(socket.AF_INET6) as probe:
        try:
            probe.bind(("::1", 0))
        except OSError:
            return False
        return True


@pytest.mark.skipif(not loopback_v6(), reason="this machine has no IPv6 loopback")
@pytest.mark.parametrize("host", ["::1", "[::1]"])
@pytest.mark.timeout(30)
async def test_a_service_serves_grpc_and_metrics_on_an_ipv6_address(host) -> None:
    # "::" and "[::]" (as the settings' documentation put it) both crashed the service at start.
    port, metrics_port = free_port(), free_port()
    serving = asyncio.create_task(run(runtime_settings(host=host, port=port, metrics_port=metrics_port), []))
    try:
        async with grpc.aio.insecure_channel(f"[::1]:{port}") as channel:
            health = health_pb2_grpc.HealthStub(channel)
            reply = await health.Check(health_pb2.HealthCheckRequest(), wait_for_ready=True, timeout=5)
            assert reply.status == SERVING
        with await asyncio.to_thread(urllib.request.urlopen, f"http://[::1]:{metrics_port}/metrics") as page:
            assert page.status == 200
    finally:
        serving.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await serving


async def test_a_burst_beyond_what_the_server_takes_at_once_is_shed_never_cancelled(serve_gateway) -> None:
    # gRPC's core holds calls the server has not taken up yet, and cancelled those beyond 1000 or so:
    # callers that had cancelled nothing were answered CANCELLED. The burst is shed by the concurrency
    # limit, RESOURCE_EXHAUSTED, as documented, or served.
    async def score(request):
        await asyncio.sleep(0.005)
        return gateway_pb2.ScoreResponse()

    stub = gateway_pb2_grpc.GatewayServiceStub(await serve_gateway(score, max_concurrent_rpcs=64))

    async def code(_: int) -> str:
        try:
            await stub.Score(gateway_pb2.ScoreRequest(), timeout=20)
        except grpc.aio.AioRpcError as error:
            return error.code().name
        return "OK"

    codes = await asyncio.gather(*map(code, range(4000)))
    assert set(codes) <= {"OK", "RESOURCE_EXHAUSTED"}, {c: codes.count(c) for c in set(codes)}


async def test_metadata_up_to_the_limit_is_always_taken_and_beyond_it_always_refused(serve_gateway) -> None:
    # gRPC's core refused metadata between 8 and 16 KiB at random, more often the larger: a W3C baggage
    # header of its largest, 8192 bytes, failed 4 calls in 30 with RESOURCE_EXHAUSTED.
    stub = gateway_pb2_grpc.GatewayServiceStub(await serve_gateway(echo))

    async def code(header_bytes: int) -> grpc.StatusCode:
        try:
            await stub.Score(
                gateway_pb2.ScoreRequest(), timeout=5, metadata=(("baggage", "k=" + "v" * header_bytes),)
            )
        except grpc.aio.AioRpcError as error:
            return error.code()
        return grpc.StatusCode.OK

    taken = [await code(size) for size in (8192, 12_000, 15_000) for _ in range(20)]
    refused = [await code(17_000) for _ in range(5)]

    assert set(taken) == {grpc.StatusCode.OK}
    assert set(refused) == {grpc.StatusCode.RESOURCE_EXHAUSTED}
