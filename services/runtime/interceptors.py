"""Server interceptors every scoregraph service runs."""

import inspect
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
import structlog

from services.runtime.errors import ServiceError, UpstreamFailed, to_status

log = structlog.get_logger(__name__)

UnaryBehavior = Callable[[Any, grpc.aio.ServicerContext], Awaitable[Any]]


class StatusInterceptor(grpc.aio.ServerInterceptor):
    """Turns what escapes a servicer into a gRPC status, so servicers only raise domain errors.

    A `ServiceError` becomes its own status and details; anything else becomes INTERNAL with a generic
    message, since exception text can hold request data, and is logged with its traceback.
    """

    def __init__(self) -> None:
        # Per method: the servicer's handler and its wrapped version, so a call builds no new handler.
        self._handlers: dict[str, tuple[grpc.RpcMethodHandler, grpc.RpcMethodHandler]] = {}

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        handler = await continuation(handler_call_details)
        # scoregraph's RPCs are all unary and async. Health and reflection (streams) and the generated
        # bases' synchronous UNIMPLEMENTED stubs pass through untouched.
        if handler is None or not inspect.iscoroutinefunction(handler.unary_unary):
            return handler
        method = handler_call_details.method
        cached = self._handlers.get(method)
        if cached is not None and cached[0] is handler:
            return cached[1]
        wrapped = grpc.unary_unary_rpc_method_handler(
            _mapping_errors(handler.unary_unary, method),
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )
        self._handlers[method] = (handler, wrapped)
        return wrapped


def _mapping_errors(behavior: UnaryBehavior, method: str) -> UnaryBehavior:
    async def mapped(request: Any, context: grpc.aio.ServicerContext) -> Any:
        try:
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
            log.info("request failed", method=method, code=error.code.name, reason=error.message)
            await context.abort_with_status(to_status(error))
        except Exception:
            log.exception("unexpected error", method=method)
            await context.abort(grpc.StatusCode.INTERNAL, "internal error")

    return mapped
