"""Which subscriptions the push workers' reconciliation looks at: every second,
the push subscriptions and the workers, not every subscription of the cluster."""

from fakes import FakeCluster, FakeDispatchStorage, FakeRegistration
from notifymesh.server import egress
from notifymesh.server.config import Config
from sender.dispatch import Dispatcher
from sender.push import PushSubscriptions

TOPIC = "orders"
ENDPOINT = "https://hooks.example.com/orders"


class LookedUp(dict):
    """The subscriptions mirror's items, noting each name looked up."""

    def __init__(self, items: dict):
        super().__init__(items)
        self.asked: list[str] = []

    def get(self, name, default=None):
        self.asked.append(name)
        return super().get(name, default)


def push_subscriptions(pull_subscriptions: int, push: list[str]):
    """A PushSubscriptions over that many pull subscriptions and the push ones named,
    on a sender that owns none of them (so no worker starts); and the names it
    looked up."""
    cluster = FakeCluster(topics={TOPIC: 1}, subscriptions={f"pull-{i}": TOPIC for i in range(pull_subscriptions)})
    for name in push:
        cluster.add_subscription(name, TOPIC)
        cluster.subscriptions.items[name].push_config.endpoint = ENDPOINT
    items = cluster.subscriptions.items = LookedUp(cluster.subscriptions.items)
    registration = FakeRegistration()
    dispatcher = Dispatcher(cluster, Config(), "sender-1", lambda: registration, storage=FakeDispatchStorage())
    dispatcher.owns = lambda name, partition=None: False
    return PushSubscriptions(cluster, dispatcher, 10, egress.networks_of(Config())), cluster, items.asked


async def test_the_sweep_each_second_asks_only_about_push_subscriptions():
    push, _, asked = push_subscriptions(1000, ["push-a", "push-b"])
    try:
        await push.reconcile(None)  # everything read from etcd
        asked.clear()
        await push.reconcile(set())  # a second later, nothing changed
        assert sorted(asked) == ["push-a", "push-b"]
    finally:
        await push.stop()


async def test_a_subscription_that_gets_or_loses_its_endpoint_is_swept_from_then_on_or_no_more():
    push, cluster, asked = push_subscriptions(10, ["push-a"])
    try:
        await push.reconcile(None)
        cluster.subscriptions.items["pull-3"].push_config.endpoint = ENDPOINT  # UpdateSubscription
        cluster.subscriptions.items.pop("push-a")  # DeleteSubscription
        await push.reconcile({"pull-3", "push-a"})
        asked.clear()
        await push.reconcile(set())
        assert asked == ["pull-3"]
    finally:
        await push.stop()
