"""The floor of one gRPC hop on this machine: a grpc.aio server that only answers health checks.

    python -m services.bench.bare_grpc     # serves grpc.health.v1 on BARE_GRPC_PORT until SIGTERM

Every hop of the graph is at least one such round trip (client and server in two Python processes, over
loopback), so the report can say how much of the graph's latency the hops' count alone explains.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from services.bench.loadgen import Call
from services.bench.processes import BARE_GRPC_PORT

ADDRESS = f"127.0.0.1:{BARE_GRPC_PORT}"


async def serve() -> None:
    server = grpc.aio.server()
    health_pb2_grpc.add_HealthServicer_to_server(health.aio.HealthServicer(), server)
    server.add_insecure_port(ADDRESS)
    await server.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    print(f"serving grpc.health.v1 at {ADDRESS}", flush=True)
    await stop.wait()
    await server.stop(0)


@asynccontextmanager
async def bare_call(address: str = ADDRESS) -> AsyncIterator[Call]:
    """grpc.health.v1 Check on the bare server: one round trip with (nearly) nothing in it."""
    async with grpc.aio.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        request = health_pb2.HealthCheckRequest()

        async def call(i: int) -> health_pb2.HealthCheckResponse:
            return await stub.Check(request, timeout=5.0)

        yield call


if __name__ == "__main__":
    import uvloop

    # The services' event loop (ServiceSettings.event_loop's default).
    uvloop.run(serve())
