"""gRPC server lifecycle shared by every service: health, reflection, error mapping, graceful drain."""

import asyncio
import contextlib
import gc
import signal
from collections.abc import AsyncIterator, Callable, Coroutine, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import grpc
import structlog
from google.protobuf.descriptor import ServiceDescriptor
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from prometheus_client import start_http_server

from services.runtime.faults import fault_interceptors
from services.runtime.interceptors import ConcurrencyLimit, StatusInterceptor
from services.runtime.logging import configure_logging
from services.runtime.settings import InvalidSettings, ServiceSettings, host_port, read_settings
from services.runtime.tracing import TelemetryInterceptor, otlp_protocol

log = structlog.get_logger(__name__)

_SHUTDOWN_SIGNALS = (signal.SIGTERM, signal.SIGINT)

T = TypeVar("T")


_ServiceSettings = TypeVar("_ServiceSettings", bound=ServiceSettings)

#: Calls gRPC's core may hold for the server before it takes them up (its default cancels beyond 1000); a
#: burst larger still is cancelled.
_PENDING_CALLS_HELD = 10_000
#: The most metadata a call may carry, all entries together: gRPC's own hard limit, which a W3C baggage
#: header at its largest (8192 bytes) fits with room to spare.
_METADATA_BYTES = 16 * 1024


def service_settings(cls: type[_ServiceSettings], *, service: str) -> _ServiceSettings:
    """The service's settings from the environment, its logging configured at their level. A value they
    refuse, or an OTLP export that OTEL_* variables ask for and is not made here, ends the process with an
    error line naming the variable (not the value), exit status 2."""
    try:
        settings = read_settings(cls)
        otlp_protocol()
    except InvalidSettings as error:
        configure_logging("INFO", service=service)
        for variable, reason in error.problems:
            log.error("invalid setting", variable=variable, reason=reason)
        raise SystemExit(2) from None
    configure_logging(settings.log_level, service=service)
    return settings


class CannotListen(Exception):
    """A server of the service could not bind its address: in use, or not an address of this machine."""


def run_service(main: Coroutine[Any, Any, T], settings: ServiceSettings) -> T:
    """Run a service's `main` coroutine to completion on the event loop `settings.event_loop` names; a
    server that cannot listen ends it with one error line and exit status 1, not a traceback."""
    try:
        if settings.event_loop == "uvloop":
            import uvloop

            return uvloop.run(main)
        return asyncio.run(main)
    except CannotListen as error:
        log.error("cannot listen", reason=str(error), hint="the port in use, or the host not this machine's")
        raise SystemExit(1) from None


@dataclass(frozen=True)
class ServiceRegistration:
    """One gRPC service a server hosts, e.g.
    `ServiceRegistration(gateway_pb2.DESCRIPTOR.services_by_name["GatewayService"], servicer,
    gateway_pb2_grpc.add_GatewayServiceServicer_to_server)`.
    """

    descriptor: ServiceDescriptor
    """Names the service for health checks and reflection."""
    servicer: Any
    add_to_server: Callable[[Any, grpc.aio.Server], None]
    """The generated `add_<Service>Servicer_to_server` function."""


class GrpcServer:
    """A grpc.aio server with the stock health and reflection services, `TelemetryInterceptor` (spans, RED
    metrics) and `StatusInterceptor`.

    `interceptors` run outside `StatusInterceptor`, so they see the status it maps errors to.
    """

    def __init__(
        self,
        settings: ServiceSettings,
        registrations: Sequence[ServiceRegistration],
        *,
        interceptors: Sequence[grpc.aio.ServerInterceptor] = (),
        edge: bool = False,
    ) -> None:
        """`edge`: callers are outside scoregraph (the gateway's): of their trace headers only their trace
        is taken (see `TelemetryInterceptor`)."""
        self._settings = settings
        self._registrations = registrations
        self._interceptors = interceptors
        self._health = health.aio.HealthServicer()
        self._telemetry = TelemetryInterceptor(edge=edge)
        limit = settings.max_concurrent_rpcs
        self._limit = [ConcurrencyLimit(limit)] if limit is not None else []
        self._server: grpc.aio.Server | None = None
        self._port: int | None = None

    @property
    def port(self) -> int:
        """The bound port; differs from the configured one when that is 0."""
        if self._port is None:
            raise RuntimeError("the server has not been started")
        return self._port

    async def start(self) -> None:
        """Bind, start, and report every hosted service SERVING."""
        server = grpc.aio.server(
            # Telemetry outermost: its span and metrics cover the whole call and see the final status.
            # The concurrency limit inside it, so the calls it sheds are counted and traced too.
            interceptors=[
                self._telemetry,
                *self._limit,
                *self._interceptors,
                *fault_interceptors(self._settings),
                StatusInterceptor(),
            ],
            options=[
                # Linux allows several servers on one port by default; a second replica started on a taken
                # port must fail, not silently split the traffic.
                ("grpc.so_reuseport", 0),
                # gRPC's core holds the calls that arrive faster than this process takes them up, and
                # cancelled those beyond about 1000: their callers, who had cancelled nothing, were
                # answered CANCELLED. A burst is bounded by the concurrency limit (RESOURCE_EXHAUSTED)
                # and each call's deadline instead. Each held call keeps its request in memory meanwhile.
                ("grpc.server.max_pending_requests", _PENDING_CALLS_HELD),
                ("grpc.server.max_pending_requests_hard_limit", _PENDING_CALLS_HELD),
                # Between its soft limit (8 KiB) and its hard one (16 KiB), the core refused a call's
                # metadata at random; one limit makes the answer certain: below, taken; above,
                # RESOURCE_EXHAUSTED.
                ("grpc.max_metadata_size", _METADATA_BYTES),
                ("grpc.absolute_max_metadata_size", _METADATA_BYTES),
            ],
        )
        names = [registration.descriptor.full_name for registration in self._registrations]
        for registration in self._registrations:
            registration.add_to_server(registration.servicer, server)
        health_pb2_grpc.add_HealthServicer_to_server(self._health, server)
        reflection.enable_server_reflection([*names, health.SERVICE_NAME, reflection.SERVICE_NAME], server)
        address = host_port(self._settings.host, self._settings.port)
        try:
            self._port = server.add_insecure_port(address)
        except RuntimeError as error:
            raise CannotListen(f"the gRPC server cannot listen on {address}") from error
        self._telemetry.server_address, self._telemetry.server_port = self._settings.host, self._port
        await server.start()
        self._server = server
        for name in ["", *names]:
            await self._health.set(name, health_pb2.HealthCheckResponse.SERVING)
        log.info("serving", host=self._settings.host, port=self._port, services=names)

    async def stop(self) -> None:
        """Report NOT_SERVING, so balancers stop sending, then let in-flight calls finish within the grace
        period; new calls are refused meanwhile."""
        if self._server is None:
            return
        log.info("draining", grace_period_s=self._settings.grace_period_s)
        await self._health.enter_graceful_shutdown()
        await self._server.stop(self._settings.grace_period_s)
        self._server = None
        # The calls a summary line held back, which would have been logged a moment later.
        self._telemetry.unserved_line.flush()
        self._telemetry.late_line.flush()
        for limit in self._limit:
            limit.shed_line.flush()
        log.info("stopped")


@contextlib.asynccontextmanager
async def _metrics_endpoint(settings: ServiceSettings) -> AsyncIterator[None]:
    if not settings.metrics_port:
        yield
        return
    try:
        httpd, _ = start_http_server(settings.metrics_port, addr=settings.host)
    except OSError as error:
        address = host_port(settings.host, settings.metrics_port)
        raise CannotListen(f"the metrics endpoint cannot listen on {address}: {error.strerror}") from error
    try:
        yield
    finally:
        await asyncio.to_thread(httpd.shutdown)
        httpd.server_close()


def freeze_startup_objects() -> None:
    """Keep what start-up built (modules, Feast's registry, the model contract: some 200,000 objects) out of
    the garbage collector's full collections, which otherwise walk all of it and stall every call in
    flight for a tenth of a second or more (290 ms measured in the features service) every time the
    survivors of a stretch of calls add up to a quarter of it."""
    gc.collect()
    gc.freeze()


async def run(
    settings: ServiceSettings,
    registrations: Sequence[ServiceRegistration],
    *,
    interceptors: Sequence[grpc.aio.ServerInterceptor] = (),
    edge: bool = False,
) -> None:
    """Serve `registrations` and the Prometheus endpoint until SIGTERM or SIGINT, then drain; `edge` as
    GrpcServer's.

    Meant as the body of a service's `__main__`: `run_service(run(settings, [registration]), settings)`.
    """
    loop = asyncio.get_running_loop()
    shutdown_requested = asyncio.Event()
    for signum in _SHUTDOWN_SIGNALS:
        loop.add_signal_handler(signum, shutdown_requested.set)
    try:
        server = GrpcServer(settings, registrations, interceptors=interceptors, edge=edge)
        async with _metrics_endpoint(settings):
            await server.start()
            freeze_startup_objects()
            try:
                await shutdown_requested.wait()
            finally:
                await server.stop()
    finally:
        for signum in _SHUTDOWN_SIGNALS:
            loop.remove_signal_handler(signum)
