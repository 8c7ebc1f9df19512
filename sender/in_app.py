"""The IN_APP channel's delivery: the provider is the mesh itself. The rendered
content becomes the recipient's inbox item (notifymesh.server.inbox rows), then
every frontend is handed it for its open streams of that recipient.
"""

from gen.notifymesh.internal.v1 import notify_pb2 as internal_pb2
from gen.notifymesh.v1 import notify_pb2
from notifymesh.clock import timestamp
from notifymesh.server.inbox import PROVIDER, InboxStore, InboxWaker
from sender.channel_worker import Sent


class InAppDelivery:
    def __init__(self, store: InboxStore, waker: InboxWaker):
        self._store, self._waker = store, waker

    async def deliver(self, task: internal_pb2.ChannelTask, rendered: notify_pb2.RenderedContent,
                      attempt: int) -> Sent:
        item = notify_pb2.InboxItem(notification_id=task.notification_id, title=rendered.subject,
                                    body=rendered.text, data=rendered.json_body, category=task.category,
                                    create_time=timestamp(task.accepted_ms))
        # A task delivered again may find its item written: the frontends are told anyway,
        # since the first attempt may have died before it told them.
        await self._store.add(task.recipient, task.accepted_ms, item, again=attempt > 1)
        self._waker.delivered(task.recipient, task.accepted_ms, item)
        return Sent(PROVIDER, task.notification_id)
