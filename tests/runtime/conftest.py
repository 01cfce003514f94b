import io
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator

import grpc
import pytest
import structlog

from services.runtime.logging import configure_logging
from services.runtime.server import GrpcServer
from tests.runtime.scripted_gateway import ScoreBehavior, gateway_registration, runtime_settings


class LogCapture:
    def __init__(self) -> None:
        self.stream = io.StringIO()

    @property
    def text(self) -> str:
        return self.stream.getvalue()

    def records(self) -> list[dict]:
        return [json.loads(line) for line in self.text.splitlines()]


@pytest.fixture
def json_logs() -> Iterator[LogCapture]:
    """The runtime's logging, into a buffer. configure_logging replaces process-wide state (root handlers,
    structlog's configuration), so it is put back for the tests after this one."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    capture = LogCapture()
    configure_logging("DEBUG", service="test-service", stream=capture.stream)
    yield capture
    root.handlers, root.level = handlers, level
    structlog.reset_defaults()


@pytest.fixture
async def serve_gateway() -> AsyncIterator[Callable[..., Awaitable[grpc.aio.Channel]]]:
    """Starts a real GrpcServer on a free port around a scripted GatewayService, with any settings a test
    gives; returns a channel to it."""
    servers: list[GrpcServer] = []
    channels: list[grpc.aio.Channel] = []

    async def serve(score: ScoreBehavior, *, edge: bool = False, **settings) -> grpc.aio.Channel:
        server = GrpcServer(runtime_settings(**settings), [gateway_registration(score)], edge=edge)
        await server.start()
        servers.append(server)
        channels.append(grpc.aio.insecure_channel(f"127.0.0.1:{server.port}"))
        return channels[-1]

    yield serve
    for channel in channels:
        await channel.close()
    for server in servers:
        await server.stop()
