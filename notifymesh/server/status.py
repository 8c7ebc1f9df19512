"""The status a service answers with for an error raised while serving a call:
the error family's own code (notifymesh.errors), a failed call to another
service passed through unchanged (a NOT_FOUND from storage reaches the client as
NOT_FOUND), and etcd trouble as UNAVAILABLE. Anything else is a bug: None."""

import logging

import aetcd
import grpc

from notifymesh.errors import NotifymeshError
from notifymesh.log import fields

log = logging.getLogger(__name__)


def status_of(error: BaseException) -> tuple[grpc.StatusCode, str] | None:
    if isinstance(error, NotifymeshError):
        return error.code, error.details
    if isinstance(error, grpc.aio.AioRpcError):
        return error.code(), error.details() or error.code().name
    if isinstance(error, aetcd.exceptions.ClientError):  # etcd unreachable, electing, or a lease lost
        return grpc.StatusCode.UNAVAILABLE, f"etcd: {error}"
    return None


def answered(error: BaseException, method: str) -> tuple[grpc.StatusCode, str]:
    """The status to answer with: status_of's, or for a bug INTERNAL, logged with
    its traceback (method: what was being served)."""
    mapped = status_of(error)
    if mapped is None:
        log.error("unhandled error", exc_info=error, extra=fields(method=method))
        mapped = (grpc.StatusCode.INTERNAL, f"internal error: {error!r}")
    return mapped
