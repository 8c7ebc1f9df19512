"""The IN_APP channel's delivery: the provider is the mesh itself. The rendered
content becomes the recipient's inbox item (notifymesh.server.inbox rows), then
every frontend is told the recipient's id so its open streams read it.
"""

from gen.notifymesh.internal.v1 import notify_pb2 as internal_pb2
from gen.notifymesh.v1 import notify_pb2
from notifymesh.clock import timestamp
from notifymesh.server.inbox import PROVIDER, InboxStore, InboxWaker
from sender.channel_worker import Sent


class InAppDelivery:
    def __init__(self, store: InboxStore, waker: InboxWaker):
        self._store, self._waker = store, waker

    async def deliver(self, task: internal_pb2.ChannelTask, rendered: notify_pb2.RenderedContent) -> Sent:
        item = notify_pb2.InboxItem(notification_id=task.notification_id, title=rendered.subject,
                                    body=rendered.text, data=rendered.json_body, category=task.category,
                                    create_time=timestamp(task.accepted_ms))
        # A task delivered again finds its item written: the frontends are woken anyway,
        # since the first attempt may have died before it woke them.
        await self._store.add(task.recipient, task.accepted_ms, item)
        await self._waker.wake([task.recipient])
        return Sent(PROVIDER, task.notification_id)
