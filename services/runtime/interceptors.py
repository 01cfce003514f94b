"""Server interceptors every scoregraph service runs."""

import asyncio
import contextlib
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
import structlog
from google.protobuf.message import DecodeError

from services.runtime.decoding import undecodable_field
from services.runtime.errors import (
    FieldViolation,
    Overloaded,
    ServiceError,
    UndecodableRequest,
    UpstreamFailed,
    to_status,
)

log = structlog.get_logger(__name__)

UnaryBehavior = Callable[[Any, grpc.aio.ServicerContext], Awaitable[Any]]


def cancelled_code(context: grpc.aio.ServicerContext) -> grpc.StatusCode:
    """Why a call whose servicer was cancelled ended: its deadline passed, or its caller cancelled it (a
    hedge that lost its race, a caller that went away)."""
    remaining = context.time_remaining()
    if remaining is not None and remaining <= 0:
        return grpc.StatusCode.DEADLINE_EXCEEDED
    return grpc.StatusCode.CANCELLED


class UnaryInterceptor(grpc.aio.ServerInterceptor):
    """Base of scoregraph's server interceptors: each async unary method's behavior is wrapped by `wrap`,
    once per method rather than per call, as long as the inner interceptors answer the same handler.

    scoregraph's RPCs are all unary and async. Streams (health's Watch), the generated bases' synchronous
    UNIMPLEMENTED stubs and the services `passed_through` names are answered untouched.
    """

    passed_through: tuple[str, ...] = ()
    """Full service-name prefixes (e.g. `grpc.health.`) whose methods are never wrapped."""

    def __init__(self) -> None:
        # Per method: the handler the inner interceptors answered, and its wrapped version.
        self._handlers: dict[str, tuple[grpc.RpcMethodHandler, grpc.RpcMethodHandler]] = {}

    def wrap(self, behavior: UnaryBehavior, method: str) -> UnaryBehavior:
        """`behavior` (the method `/package.Service/Method`'s) with this interceptor's work around it."""
        raise NotImplementedError

    def wrap_deserializer(self, deserializer: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
        """The method's request deserializer as this interceptor's handler has it: unchanged unless a subclass
        says otherwise."""
        return deserializer

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        handler = await continuation(handler_call_details)
        method = handler_call_details.method
        if (
            handler is None
            or not inspect.iscoroutinefunction(handler.unary_unary)
            or method.lstrip("/").startswith(self.passed_through)
        ):
            return handler
        cached = self._handlers.get(method)
        if cached is not None and cached[0] is handler:
            return cached[1]
        wrapped = grpc.unary_unary_rpc_method_handler(
            self.wrap(handler.unary_unary, method),
            request_deserializer=self.wrap_deserializer(handler.request_deserializer),
            response_serializer=handler.response_serializer,
        )
        self._handlers[method] = (handler, wrapped)
        return wrapped


#: While calls come in a flood (shed, or ended before the service took them up), the longest between two of
#: the lines that count them.
SUMMARY_LOG_INTERVAL_S = 1.0


class SummaryLine:
    """One info line `event` at most every `SUMMARY_LOG_INTERVAL_S` for calls that come in floods, counting
    under `count_key` the calls since the last line: a line per call would add to the load that makes
    them. The first call of a flood is logged at once; those held back after it are logged when the
    interval has passed, whether or not more come."""

    def __init__(self, event: str, count_key: str, clock: Callable[[], float] = time.monotonic) -> None:
        self._event = event
        self._count_key = count_key
        self._clock = clock
        self._unlogged = 0
        self._fields: dict[str, Any] = {}
        self._last_logged = -SUMMARY_LOG_INTERVAL_S
        self._flush_later: asyncio.TimerHandle | None = None

    def add(self, **fields: Any) -> None:
        """Count one call, whose line would carry `fields` (the last call's are logged)."""
        self._unlogged += 1
        self._fields = fields
        wait = self._last_logged + SUMMARY_LOG_INTERVAL_S - self._clock()
        if wait <= 0:
            self.flush()
        elif self._flush_later is None:
            with contextlib.suppress(RuntimeError):  # no running loop: logged with the next call's line
                self._flush_later = asyncio.get_running_loop().call_later(wait, self.flush)

    def flush(self) -> None:
        """Log the calls not logged yet, if any."""
        if self._flush_later is not None:
            self._flush_later.cancel()
            self._flush_later = None
        if self._unlogged:
            log.info(self._event, **self._fields, **{self._count_key: self._unlogged})
            self._unlogged, self._last_logged = 0, self._clock()


_SHED_CODE = grpc.StatusCode.RESOURCE_EXHAUSTED.name


class ConcurrencyLimit(UnaryInterceptor):
    """At most `limit` of the service's own calls in flight; one more is answered RESOURCE_EXHAUSTED at
    once, counted and traced as any failed call is. Health checks and reflection are never refused. While
    calls are shed, one `request shed` line a second says how many (`SummaryLine`).

    gRPC's own limit (the server's `maximum_concurrent_rpcs`) refuses calls before any interceptor runs:
    no metric, span or log line saw the calls a busy service shed, and health checks were refused with
    them, so a service busy at its limit read as an unhealthy one.
    """

    passed_through = ("grpc.health.", "grpc.reflection.")

    def __init__(self, limit: int, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self.limit = limit
        self.in_flight = 0
        self._refusal = to_status(
            Overloaded(f"overloaded: at the limit of calls in flight ({limit}); retry with backoff")
        )
        self.shed_line = SummaryLine("request shed", "shed", clock)

    def wrap(self, behavior: UnaryBehavior, method: str) -> UnaryBehavior:
        async def limited(request: Any, context: grpc.aio.ServicerContext) -> Any:
            if self.in_flight >= self.limit:
                self.shed_line.add(method=method, code=_SHED_CODE, limit=self.limit)
                await context.abort_with_status(self._refusal)
                raise AssertionError("unreachable: abort_with_status raises")
            self.in_flight += 1
            try:
                return await behavior(request, context)
            finally:
                self.in_flight -= 1

        return limited


class StatusInterceptor(UnaryInterceptor):
    """Turns what escapes a servicer into a gRPC status, so servicers only raise domain errors.

    A `ServiceError` becomes its own status and details; anything else becomes INTERNAL with a generic
    message, since exception text can hold request data, and is logged with its traceback.
    """

    def wrap(self, behavior: UnaryBehavior, method: str) -> UnaryBehavior:
        return _mapping_errors(behavior, method)

    def wrap_deserializer(self, deserializer: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
        return _tolerant(deserializer) if deserializer is not None else None


class _Undecodable:
    """What a request body its message type cannot parse deserializes to, so that the call is answered
    INVALID_ARGUMENT through the interceptors (grpc would answer UNKNOWN and log a traceback), naming the
    field at fault when one is (see decoding.py)."""

    __slots__ = ("message_type", "violation")

    def __init__(self, message_type: str, violation: FieldViolation | None) -> None:
        self.message_type = message_type
        self.violation = violation


def _tolerant(deserializer: Callable[[bytes], Any]) -> Callable[[bytes], Any]:
    # A generated stub's deserializer is the message class's FromString.
    descriptor = getattr(getattr(deserializer, "__self__", None), "DESCRIPTOR", None)
    message_type = getattr(descriptor, "full_name", "request")

    def deserialize(body: bytes) -> Any:
        try:
            return deserializer(body)
        except DecodeError:
            return _Undecodable(
                message_type, None if descriptor is None else undecodable_field(descriptor, body)
            )

    return deserialize


def _mapping_errors(behavior: UnaryBehavior, method: str) -> UnaryBehavior:
    async def mapped(request: Any, context: grpc.aio.ServicerContext) -> Any:
        try:
            if type(request) is _Undecodable:
                raise UndecodableRequest(request.message_type, request.violation)
            return await behavior(request, context)
        except grpc.aio.AbortError:
            raise
        except UpstreamFailed as error:
            log.warning(
                "upstream failed",
                method=method,
                hop=error.hop,
                upstream_code=error.upstream_code.name,
                upstream_message=error.upstream_message,
                code=error.code.name,
            )
            await context.abort_with_status(to_status(error))
        except ServiceError as error:
            log.info(
                "request failed", method=method, code=error.code.name, hop=error.hop, reason=error.message
            )
            await context.abort_with_status(to_status(error))
        except Exception:
            log.exception("unexpected error", method=method, code=grpc.StatusCode.INTERNAL.name)
            await context.abort(grpc.StatusCode.INTERNAL, "internal error")
        except asyncio.CancelledError:
            # The call's one log line all the same, saying why it ended unanswered.
            log.info("request cancelled", method=method, code=cancelled_code(context).name)
            raise

    return mapped
