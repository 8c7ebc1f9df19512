"""Channel tasks: the messages of a channel's topic (internal_pb2.ChannelTask),
made and read here only. The fan-out publishes a notification's recipients on a
channel up to TASK_RECIPIENTS a task; the channel worker handles a task's
recipients each on its own and acknowledges the task once every one is done or
goes on as a part: the recipients it could not finish this time (a transient
failure, a rate-limit delay), published as a task of their own that carries the
attempts made and the time to wait. A task of one recipient is as it was before
grouping (`recipient` set). Only a task of one recipient is dead-lettered: a
task of many whose next attempt would be its last goes on as a task for each
recipient, so a dead letter (and its redrive) is one recipient's send.

Why many recipients a task: a task is a replicated message published, delivered
and acknowledged, whatever it carries. At one recipient a task the sink pipeline
spent 1.58 CPU-s a 1,000 recipients (storage 0.90-0.91), at 25 a task 1.21-1.31
(storage 0.62-0.69), and ran 1,504-1,623 recipients/s against 1,179-1,207
(bench/notify.py --mode sink, alternating; docs/benchmarks.md 2026-12-03 16:19).
A trial of 100 a task ran no faster than 25 (1,570 and 1,924 recipients/s
against 1,334 and 1,979, alternating).
"""

from typing import Callable, NamedTuple

from gen.notifymesh.internal.v1 import notify_pb2 as internal_pb2
from gen.notifymesh.v1 import pubsub_pb2
from notifymesh.server.internal_topics import channel_name

TASK_RECIPIENTS = 25


def task_key(notification_id: str, recipient: str, channel: int) -> str:
    """One recipient's send of a notification on a channel: the provider's
    idempotency key and the rate limit's token."""
    return f"{notification_id}/{recipient}/{channel_name(channel)}"


def recipients(task: internal_pb2.ChannelTask) -> list[str]:
    return list(task.recipients) if task.recipients else [task.recipient]


def _with_recipients(task: internal_pb2.ChannelTask, recipient_ids: list[str]) -> internal_pb2.ChannelTask:
    one = internal_pb2.ChannelTask()
    one.CopyFrom(task)
    one.ClearField("recipients")
    if len(recipient_ids) == 1:
        one.recipient = recipient_ids[0]
    else:
        one.recipient = ""
        one.recipients.extend(recipient_ids)
    return one


def _messages(task: internal_pb2.ChannelTask, recipient_ids: list[str], size: int,
              key: Callable[[list[str]], str], log_groups: bool = False) -> list[pubsub_pb2.PubsubMessage]:
    """task for these recipients, size a message, each keyed by key(its recipients);
    log_groups: each its own log group, named by its first recipient."""
    messages = []
    for i in range(0, len(recipient_ids), size):
        group = recipient_ids[i:i + size]
        one = _with_recipients(task, group)
        if log_groups:
            one.log_group = group[0]
        messages.append(pubsub_pb2.PubsubMessage(data=one.SerializeToString(), idempotency_key=key(group)))
    return messages


def log_groups(recipient_ids: list[str]) -> list[str]:
    """The log group of each recipient's task of grouped(task, recipient_ids)."""
    return [recipient_ids[i - i % TASK_RECIPIENTS] for i in range(len(recipient_ids))]


def grouped(task: internal_pb2.ChannelTask, recipient_ids: list[str]) -> list[pubsub_pb2.PubsubMessage]:
    """task's notification to these recipients, TASK_RECIPIENTS a message. The
    idempotency key names the first recipient and the count: a fan-out page
    expanded again (after a crash) makes the same tasks, which are repeats. Each
    is its own log group (ChannelTask.log_group): its recipients' events, and its
    parts', are logged in rows of the task (notification_log.py)."""
    def key(group: list[str]) -> str:
        first = task_key(task.notification_id, group[0], task.channel)
        return first if len(group) == 1 else f"{first}/{len(group)}"

    return _messages(task, recipient_ids, TASK_RECIPIENTS, key, log_groups=True)


def one_recipient(task: internal_pb2.ChannelTask, recipient: str) -> internal_pb2.ChannelTask:
    """The task of one of task's recipients (the channel worker's view of each)."""
    return _with_recipients(task, [recipient])


class Part(NamedTuple):
    """Recipients of a handled task that go on together as a task of their own."""
    attempts_made: int  # so far: the one just made counts unless it was a rate-limit wait (a deferred nack)
    not_before_ms: int  # 0: at once
    alone: bool = False  # a task each: their next attempt is their last (only one recipient's is dead-lettered)


def parts(task: internal_pb2.ChannelTask, data: str, recipient_ids: list[str], spec: Part,
          split_from: str) -> list[pubsub_pb2.PubsubMessage]:
    """The messages of a part, with task's data: TASK_RECIPIENTS a message, or one each when alone.
    split_from names the handled message and its delivery attempt, so a retried
    publish of them is a repeat."""
    part = internal_pb2.ChannelTask()
    part.CopyFrom(task)
    part.data, part.attempts_before, part.not_before_ms = data, spec.attempts_made, spec.not_before_ms
    return _messages(part, recipient_ids, 1 if spec.alone else TASK_RECIPIENTS,
                     lambda group: f"{split_from}/{group[0]}/{spec.attempts_made}/{spec.not_before_ms}")
