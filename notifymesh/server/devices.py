"""A recipient's mobile devices, as rows of the replicated table (rows.py):
`V rid platform digest` -> notifymesh.v1.Device for each (keyed by a digest of the
token: rows.device_key), and the marker `V rid`,
the one key the fan-out reads to know that the push channel can reach the
recipient. Checked, added, listed and removed here: by the frontend (the
Devices API) and by the sender (a token the provider calls dead is pruned).

The marker is written with every device (one write, one partition) and deleted
once a removal leaves none; a removal that finds devices again after deleting it
(an add raced it) writes it back, so a device never goes without its marker.
"""

import re
from typing import Protocol

from gen.notifymesh.internal.v1 import storage_pb2
from gen.notifymesh.v1 import notify_pb2
from notifymesh import errors
from notifymesh.clock import now_ms
from notifymesh.server import rows

PLATFORMS = ("apns", "fcm")
MAX_DEVICES = 20  # per recipient: the push channel sends to each; an add beyond is RESOURCE_EXHAUSTED
APNS_TOKEN = re.compile(r"[0-9a-f]{64,200}")  # hex, 32 bytes today, up to 100 bytes allowed for
FCM_TOKEN = re.compile(r"[A-Za-z0-9_:.\-]{1,4096}")
APP_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._\-]{0,254}")


class DeviceTable(Protocol):
    """notifymesh.server.table.TableClient"""

    async def write(self, partition_key: str, ops: list[storage_pb2.TableOp]) -> None: ...

    async def scan(self, partition_key: str, prefix: bytes, start_after: bytes = b"", limit: int = 1000,
                   reverse: bool = False): ...  # -> table.Scanned(keys, values, more)


def platform(value: str) -> str:
    if value not in PLATFORMS:
        raise errors.InvalidArgument(f"platform {value[:40]!r}: one of {', '.join(PLATFORMS)}")
    return value


def token(platform_name: str, value: str) -> str:
    """The token as stored (an APNs token in lower case)."""
    if platform_name == "apns":
        value = value.lower()
        if not APNS_TOKEN.fullmatch(value):
            raise errors.InvalidArgument(f"apns token {value[:16]!r}...: 64 to 200 hex digits")
    elif not FCM_TOKEN.fullmatch(value):
        raise errors.InvalidArgument(f"fcm token {value[:16]!r}...: 1 to 4,096 of A-Z a-z 0-9 - _ : .")
    return value


def check(device: notify_pb2.Device) -> notify_pb2.Device:
    """A copy to store, last_seen left to the writer."""
    name = platform(device.platform)
    if device.app_id and not APP_ID.fullmatch(device.app_id):
        raise errors.InvalidArgument(f"app id {device.app_id[:40]!r}: up to 255 of A-Z a-z 0-9 . _ -, "
                                     "such as com.example.app")
    return notify_pb2.Device(platform=name, token=token(name, device.token), app_id=device.app_id)


def short(device: notify_pb2.Device) -> str:
    """A device as a log reason names it: its platform and the end of its token."""
    return f"{device.platform} device …{device.token[-6:]}"


class Devices:
    def __init__(self, table: DeviceTable):
        self._table = table

    async def _rows(self, recipient: str) -> list[tuple[bytes, notify_pb2.Device]]:
        """(key, device) of every device row of the recipient, each key as the scan
        returned it, not recomputed: a row written before keys were digests names its
        token (rows.device_key), and is found, replaced and removed all the same."""
        page = await self._table.scan(recipient, rows.devices_prefix(recipient), limit=MAX_DEVICES + 1)
        return [(key, notify_pb2.Device.FromString(value)) for key, value in zip(page.keys, page.values)]

    async def list(self, recipient: str) -> list[notify_pb2.Device]:
        """Every device of the recipient (at most MAX_DEVICES: one scan), by platform and
        token (the keys' order before they were digests)."""
        return listed((await self._table.scan(recipient, rows.devices_prefix(recipient),
                                              limit=MAX_DEVICES + 1)).values)

    async def add(self, recipient: str, device: notify_pb2.Device) -> notify_pb2.Device:
        """Adds the checked device, or refreshes its app id and last_seen."""
        stored = check(device)
        found = await self._rows(recipient)
        key = rows.device_key(recipient, stored.platform, stored.token)
        same = [k for k, d in found if d.platform == stored.platform and d.token == stored.token]
        if len(found) >= MAX_DEVICES and not same:
            raise errors.ResourceExhausted(f"recipient {recipient!r} has {MAX_DEVICES} devices; remove one first")
        stored.last_seen.FromMilliseconds(now_ms())
        await self._table.write(recipient, [
            *(_drop(old, key) for old in same if old != key),  # its row keyed by the token: replaced
            storage_pb2.TableOp(key=key, value=stored.SerializeToString()),
            storage_pb2.TableOp(key=rows.has_devices_key(recipient), value=b"")])
        return stored

    async def remove(self, recipient: str, platform_name: str, token_value: str) -> bool:
        """Whether the recipient had the device; the marker goes with its last one."""
        found = await self._rows(recipient)
        key = rows.device_key(recipient, platform_name, token_value)
        same = [k for k, d in found if d.platform == platform_name and d.token == token_value]
        if not same:
            return False
        await self._table.write(recipient, [_drop(old, key) for old in same])
        if len(found) == len(same):
            marker = rows.has_devices_key(recipient)
            await self._table.write(recipient, [storage_pb2.TableOp(key=marker, delete=True)])
            if await self.list(recipient):  # an add came in between: its device keeps its marker
                await self._table.write(recipient, [storage_pb2.TableOp(key=marker, value=b"")])
        return True


def listed(values: list[bytes]) -> list[notify_pb2.Device]:
    """The devices of a scan of a recipient's device rows (devices_prefix), as Devices.list orders them."""
    return sorted(map(notify_pb2.Device.FromString, values), key=lambda d: (d.platform, d.token))


def _drop(found: bytes, key: bytes) -> storage_pb2.TableOp:
    """Deletes a device row found by a scan. A row keyed by the token itself (written
    before digests) is erased: a delete's tombstone would keep the token in the
    storage nodes' files, an erase compacts it out (storage/table.py)."""
    return storage_pb2.TableOp(key=found, delete=True) if found == key else storage_pb2.TableOp(key=found, erase=True)
