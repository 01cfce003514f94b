"""Injected faults, for tests, demos and benchmarks: a replica that is slow, erroring or hung, on cue.

Like the OpenTelemetry demo's feature flags, but per process and from its settings
(`SCOREGRAPH_<SERVICE>_FAULT_*`), so one replica of a service can misbehave while the others do not.
Health and reflection are never faulted: a faulty replica must still look healthy, as real ones do.
"""

import asyncio
import inspect
import random
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
import structlog

from services.runtime.settings import ServiceSettings

log = structlog.get_logger(__name__)

UnaryBehavior = Callable[[Any, grpc.aio.ServicerContext], Awaitable[Any]]

_NEVER_FAULTED = ("/grpc.health.", "/grpc.reflection.")


def faults_configured(settings: ServiceSettings) -> bool:
    return settings.fault_hang or settings.fault_error_share > 0 or settings.fault_delay_ms > 0


class FaultInterceptor(grpc.aio.ServerInterceptor):
    """Makes the service's own RPCs hang, fail UNAVAILABLE or answer late, as `settings` say.

    Per call, in this order: `fault_hang` holds it until the caller cancels it or its deadline passes;
    a `fault_error_share` of calls fail UNAVAILABLE before any work; a `fault_delay_share` of the rest
    are answered `fault_delay_ms` late.
    """

    def __init__(self, settings: ServiceSettings, *, rng: random.Random | None = None) -> None:
        self._hang = settings.fault_hang
        self._error_share = settings.fault_error_share
        self._delay_s = settings.fault_delay_ms / 1000
        self._delay_share = settings.fault_delay_share
        self._rng = rng or random.Random()

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        handler = await continuation(handler_call_details)
        if (
            handler is None
            or handler_call_details.method.startswith(_NEVER_FAULTED)
            or not inspect.iscoroutinefunction(handler.unary_unary)
        ):
            return handler
        return grpc.unary_unary_rpc_method_handler(
            self._faulty(handler.unary_unary),
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )

    def _faulty(self, behavior: UnaryBehavior) -> UnaryBehavior:
        async def faulty(request: Any, context: grpc.aio.ServicerContext) -> Any:
            if self._hang:
                await asyncio.Event().wait()
            if self._error_share and self._rng.random() < self._error_share:
                await context.abort(grpc.StatusCode.UNAVAILABLE, "injected fault")
            if self._delay_s and self._rng.random() < self._delay_share:
                await asyncio.sleep(self._delay_s)
            return await behavior(request, context)

        return faulty


def fault_interceptors(settings: ServiceSettings) -> list[grpc.aio.ServerInterceptor]:
    """A FaultInterceptor when `settings` configure a fault, else none; logs the fault, so a faulty replica
    is never mistaken for a broken one."""
    if not faults_configured(settings):
        return []
    log.warning(
        "injecting faults",
        hang=settings.fault_hang,
        error_share=settings.fault_error_share,
        delay_ms=settings.fault_delay_ms,
        delay_share=settings.fault_delay_share,
    )
    return [FaultInterceptor(settings)]
