"""The one error family and its one map to gRPC status codes, for both sides.

A service raises a subclass (InvalidArgument("...")) and its server answers with
that class's code and the message; the client turns every failed call back into
the class of its status code (from_rpc_error), keeping the code and details:

    try:
        await client.get_topic("orders")
    except notifymesh.NotFound as e:
        print(e.code, e.details)
"""

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.rpc import error_details_pb2, status_pb2


class NotifymeshError(Exception):
    """A failed request: code is its gRPC status code, details the server's message."""

    code: grpc.StatusCode = grpc.StatusCode.UNKNOWN

    def __init__(self, details: str = "", code: grpc.StatusCode | None = None):
        super().__init__(details)
        self.details = details
        if code is not None:
            self.code = code

    def __str__(self) -> str:
        return f"{self.code.name}: {self.details}" if self.details else self.code.name


class InvalidArgument(NotifymeshError):
    code = grpc.StatusCode.INVALID_ARGUMENT


class NotFound(NotifymeshError):
    code = grpc.StatusCode.NOT_FOUND


class AlreadyExists(NotifymeshError):
    code = grpc.StatusCode.ALREADY_EXISTS


class FailedPrecondition(NotifymeshError):
    code = grpc.StatusCode.FAILED_PRECONDITION


class Aborted(NotifymeshError):
    code = grpc.StatusCode.ABORTED


class ResourceExhausted(NotifymeshError):
    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class RateLimited(ResourceExhausted):
    """Over a rate limit: retry after retry_after_s, carried in the status details as
    google.rpc.RetryInfo (status_details() on the server, from_rpc_error here)."""

    def __init__(self, details: str = "", code: grpc.StatusCode | None = None, retry_after_s: float = 0.0):
        super().__init__(details, code)
        self.retry_after_s = retry_after_s

    def status_details(self) -> bytes:
        """The grpc-status-details-bin trailer: a google.rpc.Status with a RetryInfo."""
        delay = duration_pb2.Duration()
        delay.FromMilliseconds(max(1, round(self.retry_after_s * 1000)))
        detail = any_pb2.Any()
        detail.Pack(error_details_pb2.RetryInfo(retry_delay=delay))
        return status_pb2.Status(code=self.code.value[0], message=self.details, details=[detail]).SerializeToString()


def _retry_after_s(error: grpc.RpcError) -> float | None:
    """The RetryInfo delay of a failed call's status details, if it has one."""
    trailers = error.trailing_metadata() if callable(getattr(error, "trailing_metadata", None)) else None
    for key, value in trailers or ():
        if key == "grpc-status-details-bin":
            for detail in status_pb2.Status.FromString(value).details:
                info = error_details_pb2.RetryInfo()
                if detail.Unpack(info):
                    return info.retry_delay.ToMilliseconds() / 1000
    return None


class Unavailable(NotifymeshError):
    code = grpc.StatusCode.UNAVAILABLE


class DeadlineExceeded(NotifymeshError):
    code = grpc.StatusCode.DEADLINE_EXCEEDED


class Unauthenticated(NotifymeshError):
    code = grpc.StatusCode.UNAUTHENTICATED


class PermissionDenied(NotifymeshError):
    code = grpc.StatusCode.PERMISSION_DENIED


class Cancelled(NotifymeshError):
    code = grpc.StatusCode.CANCELLED


class Internal(NotifymeshError):
    code = grpc.StatusCode.INTERNAL


ERROR_CLASSES: dict[grpc.StatusCode, type[NotifymeshError]] = {
    cls.code: cls for cls in (InvalidArgument, NotFound, AlreadyExists, FailedPrecondition, Aborted,
                              ResourceExhausted, Unavailable, DeadlineExceeded, Unauthenticated,
                              PermissionDenied, Cancelled, Internal)
}

# Calls are retried on these (by the client's publisher and subscriber and between
# services); anything else goes back to the caller.
RETRYABLE_CODES = (grpc.StatusCode.UNAVAILABLE,)


_CODES = {code.value[0]: code for code in grpc.StatusCode}


def of_status(code: int, details: str) -> NotifymeshError:
    """The error of the family for a status given by its code's number (as a
    message carries it: sender.proto's RelayDown.End)."""
    status = _CODES.get(code, grpc.StatusCode.UNKNOWN)
    return ERROR_CLASSES.get(status, NotifymeshError)(details, status)


def from_rpc_error(error: grpc.RpcError) -> NotifymeshError:
    """The error of the family for a failed call's status; the call's error is kept
    as its __cause__ by `raise from_rpc_error(e) from e`."""
    code = error.code() if callable(getattr(error, "code", None)) else grpc.StatusCode.UNKNOWN
    details = (error.details() if callable(getattr(error, "details", None)) else "") or ""
    if code == grpc.StatusCode.RESOURCE_EXHAUSTED and (retry_after_s := _retry_after_s(error)) is not None:
        return RateLimited(details, code, retry_after_s)
    return ERROR_CLASSES.get(code, NotifymeshError)(details, code)
