"""Domain errors and the one table that maps them to gRPC status codes."""

import aetcd
import grpc


class NotifymeshError(Exception):
    """Base of every error a service reports to its caller with a status code."""


class InvalidArgument(NotifymeshError):
    pass


class NotFound(NotifymeshError):
    pass


class AlreadyExists(NotifymeshError):
    pass


class FailedPrecondition(NotifymeshError):
    pass


class Aborted(NotifymeshError):
    pass


class ResourceExhausted(NotifymeshError):
    pass


class Unavailable(NotifymeshError):
    pass


class Unauthenticated(NotifymeshError):
    pass


class PermissionDenied(NotifymeshError):
    pass


STATUS_CODES: dict[type[NotifymeshError], grpc.StatusCode] = {
    InvalidArgument: grpc.StatusCode.INVALID_ARGUMENT,
    NotFound: grpc.StatusCode.NOT_FOUND,
    AlreadyExists: grpc.StatusCode.ALREADY_EXISTS,
    FailedPrecondition: grpc.StatusCode.FAILED_PRECONDITION,
    Aborted: grpc.StatusCode.ABORTED,
    ResourceExhausted: grpc.StatusCode.RESOURCE_EXHAUSTED,
    Unavailable: grpc.StatusCode.UNAVAILABLE,
    Unauthenticated: grpc.StatusCode.UNAUTHENTICATED,
    PermissionDenied: grpc.StatusCode.PERMISSION_DENIED,
}

# Service-to-service calls retry these; anything else goes back to the caller.
RETRYABLE_CODES = (grpc.StatusCode.UNAVAILABLE,)


def status_of(error: BaseException) -> tuple[grpc.StatusCode, str] | None:
    """The status a caller should see for error, or None when it is a bug (INTERNAL).

    A failed call to another service passes its status through unchanged, so a
    NOT_FOUND from storage reaches the client as NOT_FOUND.
    """
    if isinstance(error, NotifymeshError):
        for cls in type(error).__mro__:
            if cls in STATUS_CODES:
                return STATUS_CODES[cls], str(error)
    if isinstance(error, grpc.aio.AioRpcError):
        return error.code(), error.details() or error.code().name
    if isinstance(error, aetcd.exceptions.ClientError):  # etcd unreachable, electing, or a lease lost
        return grpc.StatusCode.UNAVAILABLE, f"etcd: {error}"
    return None
