"""The pull loop of one shard (a topic partition) on a sender: one long poll
serves every subscription of the topic this sender has room for. A subscription
leases messages of the shard only once storage said it has some there (ready);
otherwise the poll waits with max_messages 0, which leases nothing and holds no
room, so a subscriber's room goes to whichever partition has messages."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, NamedTuple

from gen.notifymesh.internal.v1 import storage_pb2
from notifymesh import errors
from notifymesh.contracts import shard_name
from notifymesh.log import fields
from notifymesh.server.status import status_of

if TYPE_CHECKING:
    from sender.dispatch import Dispatcher, SubscriptionDispatcher

log = logging.getLogger(__name__)

PULL_MAX_MESSAGES = 1000  # per subscription in one pull
# A watch ends early when a message comes, a newcomer or freed room needs a new
# plan, a lease expires, the shard's leader changes or a watched subscription is
# deleted; otherwise it is sent again after this long. Every round sends every
# watched subscription, so this is what idle subscriptions cost: with 1 s, 10,000
# idle streams of one topic kept the sender and the shard's leader each at about
# 0.09 of a core.
PULL_WAIT_MS = 10_000
BUDGET_RECHECK_S = 0.1
# A message of a topic with 45,000 subscriptions here, handed out in one go, held
# the loop for seconds on a loaded machine: the member lease's keep-alive starved,
# the sender took itself for the owner of nothing and ended every stream. So a
# pull's answer is handed out in slices of this many subscriptions.
YIELD_EVERY = 500
# A watch is cut for a newcomer at most once per this much time per subscription it
# watches, since every cut sends all of them again. Measured: a watch costs about
# 4 us per subscription (sender and storage leader together), and cutting at once
# for each of 7,000 streams attaching made attaching quadratic (70 s for 7,000,
# none of 10,000 within 5 min); 40 us keeps those cuts under a tenth of a core.
NEWCOMER_CUT_S_PER_WATCH = 40e-6
# A plan looks at every subscription of the topic served here: the next one starts
# no sooner than this many times the last one's cost after it, so a shard's plans
# take at most about a fifth of the loop. With 45,000 subscriptions a plan took tens
# of ms, and planning again at each of their acks kept the sender at a full core
# for minutes after one message (bench fanout_streams).
PLAN_SPACING = 5


class PullPlan(NamedTuple):
    """What one shard's next pull asks: leases (subscription -> (it, how many)) of
    the subscriptions known to have messages there, with room; watches: the others,
    waited on without holding any room."""
    leases: dict[str, tuple[SubscriptionDispatcher, int]]
    watches: list[SubscriptionDispatcher]
    next_expiry: float | None
    budget_left: int


class ShardPuller:
    """The pulls of one shard for every subscription of its topic on this sender.
    Only a pull that returns at once holds room: a subscription is leased here once
    storage said it has messages here (ready); until then it is long-polled with
    max_messages 0, which leases nothing. So a subscriber's room goes to whichever
    partition has messages, however far its limit is below the partition count."""

    def __init__(self, topic: str, partition: int, dispatcher: "Dispatcher"):
        self.topic, self.partition, self._dispatcher = topic, partition, dispatcher
        self.shard = shard_name(topic, partition)
        self.wake = asyncio.Event()
        self.task: asyncio.Task | None = None
        self._stream = dispatcher.storage.pull_stream()
        # Subscriptions with deliverable messages on this shard, as storage last said
        # (bounded: a subset of the topic's subscriptions served here).
        self._ready: set[str] = set()
        self._watch: asyncio.Task | None = None  # a pull of watches only, under way
        self._watching: set[str] = set()  # the subscriptions it waits for
        self._watch_started = 0.0  # monotonic
        self._newcomer_cut: asyncio.TimerHandle | None = None

    async def run(self) -> None:
        log.info("pulling shard", extra=fields(topic=self.topic, partition=self.partition))
        try:
            await self._serve()
        finally:
            if self._watch is not None:
                self._watch.cancel()
            if self._newcomer_cut is not None:
                self._newcomer_cut.cancel()
            self._stream.close()

    def state(self) -> dict:
        """For Dispatcher.state: whether it runs, and which subscriptions it leases and watches."""
        return {"done": self.task is None or self.task.done(), "ready": sorted(self._ready),
                "watching": sorted(self._watching)}

    def poke(self, name: str | None = None) -> None:
        """Room was freed (for subscription name) or a subscriber came: a watch under
        way that it makes stale is cut short, which is safe as a watch leases nothing.
        A ready subscription with room cuts it at once; subscribers not yet watched
        share one cut (NEWCOMER_CUT_S_PER_WATCH), so many attaching together cost a few
        re-plans, not one each."""
        if self._watch is None or self._watch.done():
            self.wake.set()
            return
        sub = self._dispatcher.subscriptions.get(name) if name else None
        if sub is None or (sub.name in self._ready and sub.room() > 0):
            self._watch.cancel()
        elif sub.name not in self._ready and sub.name not in self._watching and sub.streams \
                and sub.owned(self.partition) and self._newcomer_cut is None:
            cut_at = self._watch_started + len(self._watching) * NEWCOMER_CUT_S_PER_WATCH
            self._newcomer_cut = asyncio.get_running_loop().call_later(
                max(0.0, cut_at - time.monotonic()), self._cut_for_newcomers, self._watch)

    def _cut_for_newcomers(self, watch: asyncio.Future) -> None:
        self._newcomer_cut = None
        watch.cancel()

    async def _serve(self) -> None:
        dispatcher = self._dispatcher
        while True:
            started = time.monotonic()
            # The subscriptions whose pair with this partition this sender owns, and those it
            # owns no pair of (their streams end at the plan): without any, the puller ends.
            subscriptions = [s for s in dispatcher.serving(self.topic) if s.owned(self.partition) or not s.owned()]
            if not subscriptions:
                return
            self.wake.clear()
            plan = self._plan(subscriptions)
            planned_s = time.monotonic() - started
            await self._carry_out(plan)
            # The pokes (acks, newcomers) that come meanwhile share the next plan.
            if (pause := started + planned_s * PLAN_SPACING - time.monotonic()) > 0:
                await asyncio.sleep(pause)

    async def _carry_out(self, plan: PullPlan) -> None:
        """One plan: leases at once, a watch, or a wait for a poke."""
        if plan.leases:
            await self._pull(plan, 0)
        elif plan.watches:
            wait_ms = PULL_WAIT_MS
            if plan.next_expiry is not None:  # wake in time to free the room of expired messages
                wait_ms = min(wait_ms, max(0, int((plan.next_expiry - time.monotonic()) * 1000) + 1))
            self._watching = {sub.name for sub in plan.watches}
            self._watch_started = time.monotonic()
            self._watch = asyncio.ensure_future(self._pull(plan, wait_ms))
            try:
                await self._await_watch()
            finally:
                self._watch.cancel()  # when this task itself is cancelled
            self._watch, self._watching = None, set()
            if self._newcomer_cut is not None:  # the next plan has the newcomers
                self._newcomer_cut.cancel()
                self._newcomer_cut = None
        else:
            timeout = None if plan.next_expiry is None else max(0.0, plan.next_expiry - time.monotonic())
            if plan.budget_left <= 0:  # room freed by another topic's acks wakes only that topic's pulls
                timeout = min(timeout or BUDGET_RECHECK_S, BUDGET_RECHECK_S)
            try:
                await asyncio.wait_for(self.wake.wait(), timeout)
            except TimeoutError:
                pass

    async def _await_watch(self) -> None:
        """Until the watch ends, cut short once the shard has a new leader: the old
        one, alive but no longer leading, would hold it to its end unanswered."""
        cluster = self._dispatcher.cluster
        epoch = cluster.epoch(self.shard)
        while not self._watch.done():
            leaders_changed = cluster.next_leader_change()
            if cluster.epoch(self.shard) != epoch:
                self._watch.cancel()
                return
            changed = asyncio.ensure_future(leaders_changed.wait())
            try:
                await asyncio.wait([self._watch, changed], return_when=asyncio.FIRST_COMPLETED)
            finally:
                changed.cancel()

    def _plan(self, subscriptions: list[SubscriptionDispatcher]) -> PullPlan:
        dispatcher = self._dispatcher
        budget = dispatcher.budget.available() - sum(s.reserved for s in subscriptions)
        leases: dict[str, tuple[SubscriptionDispatcher, int]] = {}
        watches = []
        next_expiry = None
        partitions = dispatcher.partition_count(self.topic)
        self._ready.intersection_update(s.name for s in subscriptions)
        for sub in subscriptions:
            if not sub.owned(self.partition):  # checked before every pull: the fence
                if not sub.owned():
                    sub.end_streams(errors.Unavailable(f"this sender no longer serves subscription {sub.name!r}"))
                continue
            expires = sub.expire()
            if expires is not None:
                next_expiry = expires if next_expiry is None else min(next_expiry, expires)
            if sub.name not in self._ready:
                watches.append(sub)
                continue
            room = sub.room()
            # A fair share, so one partition's pull never takes all the room at once.
            room = min(room, max(1, room // partitions), PULL_MAX_MESSAGES, budget)
            if room > 0:
                leases[sub.name] = (sub, room)
                budget -= room
        return PullPlan(leases, watches, next_expiry, budget)

    async def _pull(self, plan: PullPlan, wait_ms: int) -> None:
        """Leases (at once, wait_ms 0) or waits up to wait_ms for the watched ones."""
        request = storage_pb2.PullRequest(topic=self.topic, partition=self.partition, wait_ms=wait_ms,
                                          sender_addr=self._dispatcher.addr)
        for sub, room in plan.leases.values():
            request.subscriptions.add(name=sub.name, max_messages=room, ack_deadline_ms=sub.ack_deadline_ms)
            sub.reserved += room
        for sub in plan.watches:
            request.subscriptions.add(name=sub.name, max_messages=0, ack_deadline_ms=sub.ack_deadline_ms)
        try:
            response = await self._dispatcher.storage.pull(self._stream, request)
        except asyncio.CancelledError:
            raise
        except Exception as e:
            log.warning("pull failed", extra=fields(topic=self.topic, partition=self.partition,
                                                    error=status_of(e) or repr(e)))
            await asyncio.sleep(0.5)
            return
        finally:
            for sub, room in plan.leases.values():
                sub.reserved -= room
        await self._take(plan, response)

    async def _take(self, plan: PullPlan, response: storage_pb2.PullResponse) -> None:
        """Hands out what was leased and notes which subscriptions have messages left."""
        self._ready.difference_update(plan.leases)  # listed again below when some are left
        subs = {**{name: sub for name, (sub, _) in plan.leases.items()}, **{sub.name: sub for sub in plan.watches}}
        unused = {name: room for name, (_, room) in plan.leases.items()}
        for index, pulled in enumerate(response.subscriptions):
            if index and not index % YIELD_EVERY:
                await asyncio.sleep(0)
            sub = subs[pulled.name]
            if pulled.not_found:  # storage checked etcd: it is gone
                sub.end_streams(errors.NotFound(f"subscription {sub.name!r} not found"))
                continue
            if pulled.ready:
                self._ready.add(pulled.name)
            if pulled.received_messages:
                unused[pulled.name] -= len(pulled.received_messages)
                await sub.hand_out(list(pulled.received_messages), list(pulled.ack_ids))
        for name, room in unused.items():
            if room > 0:  # room this pull held and did not use: another shard's pull may want it
                subs[name].room_freed()
