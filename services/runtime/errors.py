"""Domain errors every service raises, and the one place that turns them into gRPC status.

Service logic raises these and knows nothing of gRPC status codes; `StatusInterceptor` (see
interceptors.py) calls `to_status` on whatever escapes a servicer.
"""

from collections.abc import Sequence
from dataclasses import dataclass

import grpc
from google.protobuf.message import DecodeError, Message
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

ERROR_DOMAIN = "scoregraph"
"""`google.rpc.ErrorInfo.domain` of the errors scoregraph raises."""


@dataclass(frozen=True)
class FieldViolation:
    """One problem with one field of the caller's request."""

    field: str
    """Path of the field in the caller's request message, e.g. `transaction.amount.currency_code`."""
    description: str
    """What is wrong, for the caller's developers; must not echo the value (it may be a card number)."""


class ServiceError(Exception):
    """An expected failure with a status code that tells the caller what to do."""

    code: grpc.StatusCode = grpc.StatusCode.INTERNAL
    hop: str | None = None
    """The upstream hop the failure is about, when it is about one."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def details(self) -> list[Message]:
        """Rich status details (google.rpc error details) to send with the status."""
        return []


class InvalidInput(ServiceError):
    """The caller's request is malformed; retrying it unchanged will fail again."""

    code = grpc.StatusCode.INVALID_ARGUMENT

    def __init__(self, violations: list[FieldViolation]) -> None:
        fields = ", ".join(violation.field for violation in violations)
        super().__init__(f"invalid request: {fields}")
        self.violations = violations

    def details(self) -> list[Message]:
        return [
            error_details_pb2.BadRequest(
                field_violations=[
                    error_details_pb2.BadRequest.FieldViolation(field=v.field, description=v.description)
                    for v in self.violations
                ]
            )
        ]


class UndecodableRequest(ServiceError):
    """The caller's request body is not its message type in protobuf's binary format; `violation`, when
    given, is the one field that makes it so (text that is not UTF-8)."""

    code = grpc.StatusCode.INVALID_ARGUMENT

    def __init__(self, message_type: str, violation: FieldViolation | None = None) -> None:
        if violation is None:
            super().__init__(f"invalid request: the body is not a {message_type} message")
        else:
            super().__init__(f"invalid request: {violation.field} {violation.description}")
        self.message_type = message_type
        self.violation = violation

    def details(self) -> list[Message]:
        info = error_details_pb2.ErrorInfo(
            reason="UNDECODABLE_REQUEST", domain=ERROR_DOMAIN, metadata={"message_type": self.message_type}
        )
        if self.violation is None:
            return [info]
        violation = error_details_pb2.BadRequest.FieldViolation(
            field=self.violation.field, description=self.violation.description
        )
        return [error_details_pb2.BadRequest(field_violations=[violation]), info]


# Upstream codes a caller can act on by retrying later; any other upstream failure is our fault
# (e.g. we sent it a bad request), and passing its code on would blame the caller.
_RETRYABLE_UPSTREAM_CODES = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED})


class UpstreamFailed(ServiceError):
    """A dependency call (a hop) failed and the request cannot be answered without it."""

    def __init__(self, hop: str, code: grpc.StatusCode, message: str) -> None:
        super().__init__(f"{hop} failed: {code.name}")
        self.hop = hop
        self.upstream_code = code
        # For logs only: an upstream's message may reveal its internals, so it is never sent on.
        self.upstream_message = message
        if code is grpc.StatusCode.DEADLINE_EXCEEDED:
            self.code = grpc.StatusCode.DEADLINE_EXCEEDED
        elif code in _RETRYABLE_UPSTREAM_CODES:
            self.code = grpc.StatusCode.UNAVAILABLE
        else:
            self.code = grpc.StatusCode.INTERNAL

    def details(self) -> list[Message]:
        return [
            error_details_pb2.ErrorInfo(
                reason="UPSTREAM_FAILED",
                domain=ERROR_DOMAIN,
                metadata={"hop": self.hop, "upstream_code": self.upstream_code.name},
            )
        ]


class NotReady(ServiceError):
    """The service cannot serve yet (or any more), e.g. its store or model is not loaded."""

    code = grpc.StatusCode.UNAVAILABLE


class Overloaded(ServiceError):
    """The service sheds this request to protect the ones it is already serving."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class DeadlineExceeded(ServiceError):
    """What remains of the caller's deadline is too little to do the work, so it is not started."""

    code = grpc.StatusCode.DEADLINE_EXCEEDED

    def __init__(self, message: str, *, hop: str | None = None) -> None:
        super().__init__(message)
        self.hop = hop


def to_status(error: ServiceError) -> grpc.Status:
    """The gRPC status for `error`, with its details in `grpc-status-details-bin`."""
    status = status_pb2.Status(code=error.code.value[0], message=error.message)
    for detail in error.details():
        status.details.add().Pack(detail)
    return rpc_status.to_status(status)


_STATUS_DETAILS_KEY = "grpc-status-details-bin"


def field_violations_in(
    trailing_metadata: Sequence[tuple[str, str | bytes]] | None,
) -> tuple[FieldViolation, ...]:
    """The `google.rpc.BadRequest` field violations an upstream's status details carry (what `to_status`
    sent for an InvalidInput); none when the details are absent or unreadable."""
    for key, value in trailing_metadata or ():
        if key != _STATUS_DETAILS_KEY or not isinstance(value, bytes):
            continue
        try:
            status = status_pb2.Status.FromString(value)
        except DecodeError:
            return ()
        violations = []
        for detail in status.details:
            bad_request = error_details_pb2.BadRequest()
            if detail.Unpack(bad_request):
                violations += [FieldViolation(v.field, v.description) for v in bad_request.field_violations]
        return tuple(violations)
    return ()
