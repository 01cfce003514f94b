"""Injected faults, for tests, demos and benchmarks: a replica that is slow, erroring or hung, on cue.

Like the OpenTelemetry demo's feature flags, but per process and from its settings
(`SCOREGRAPH_<SERVICE>_FAULT_*`), so one replica of a service can misbehave while the others do not.
Health and reflection are never faulted: a faulty replica must still look healthy, as real ones do.
"""

import asyncio
import random
from collections.abc import Awaitable
from typing import Any

import grpc
import structlog

from services.runtime.interceptors import UnaryBehavior, UnaryInterceptor, cancelled_code
from services.runtime.settings import ServiceSettings

log = structlog.get_logger(__name__)


def faults_configured(settings: ServiceSettings) -> bool:
    return settings.fault_hang or settings.fault_error_share > 0 or settings.fault_delay_ms > 0


class FaultInterceptor(UnaryInterceptor):
    """Makes the service's own RPCs hang, fail UNAVAILABLE or answer late, as `settings` say.

    Per call, in this order: `fault_hang` holds it until the caller cancels it or its deadline passes;
    a `fault_error_share` of calls fail UNAVAILABLE before any work; a `fault_delay_share` of the rest
    are answered `fault_delay_ms` late.
    """

    passed_through = ("grpc.health.", "grpc.reflection.")

    def __init__(self, settings: ServiceSettings, *, rng: random.Random | None = None) -> None:
        super().__init__()
        self._hang = settings.fault_hang
        self._error_share = settings.fault_error_share
        self._delay_s = settings.fault_delay_ms / 1000
        self._delay_share = settings.fault_delay_share
        self._rng = rng or random.Random()

    def wrap(self, behavior: UnaryBehavior, method: str) -> UnaryBehavior:
        # A faulted call ends before the service's own error handling sees it: its one log line is here.
        async def held(waiting: Awaitable[Any], fault: str, context: grpc.aio.ServicerContext) -> None:
            try:
                await waiting
            except asyncio.CancelledError:  # its deadline passed, or a hedge that lost its race
                log.info("request cancelled", method=method, code=cancelled_code(context).name, fault=fault)
                raise

        async def faulty(request: Any, context: grpc.aio.ServicerContext) -> Any:
            if self._hang:
                await held(asyncio.Event().wait(), "hang", context)
            if self._error_share and self._rng.random() < self._error_share:
                log.info("request failed", method=method, code="UNAVAILABLE", reason="injected fault")
                await context.abort(grpc.StatusCode.UNAVAILABLE, "injected fault")
            if self._delay_s and self._rng.random() < self._delay_share:
                await held(asyncio.sleep(self._delay_s), "delay", context)
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
