"""notifymesh: the Python client of the notifymesh API.

    from notifymesh import Client, Publisher, Subscriber, Message

The client needs grpcio and protobuf only; the services' shared code lives in
notifymesh.server and comes with the `server` extra. Importing this package does
nothing but make these names available (each loads on first use).
"""

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # what __getattr__ loads, for type checkers and editors
    from notifymesh.client import Client, Message
    from notifymesh.errors import (Aborted, AlreadyExists, Cancelled, DeadlineExceeded, FailedPrecondition, Internal,
                                   InvalidArgument, NotFound, NotifymeshError, PermissionDenied, ResourceExhausted,
                                   Unauthenticated, Unavailable)
    from notifymesh.publisher import Publisher
    from notifymesh.subscriber import Delivery, Subscriber

__all__ = [
    "Client", "Message", "Publisher", "Subscriber", "Delivery",
    "NotifymeshError", "InvalidArgument", "NotFound", "AlreadyExists", "FailedPrecondition", "Aborted",
    "ResourceExhausted", "Unavailable", "DeadlineExceeded", "Unauthenticated", "PermissionDenied", "Cancelled",
    "Internal",
]

_HOMES = {
    "Client": "notifymesh.client", "Message": "notifymesh.client", "Publisher": "notifymesh.publisher",
    "Subscriber": "notifymesh.subscriber", "Delivery": "notifymesh.subscriber",
    **{name: "notifymesh.errors" for name in __all__[5:]},
}


def __getattr__(name: str):
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'notifymesh' has no attribute {name!r}")
    value = getattr(importlib.import_module(home), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
