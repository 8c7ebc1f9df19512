"""Consistent hashing of topics and subscriptions onto live members.

Every process builds its ring from the same etcd membership view, and uhashring
(ketama, md5) is deterministic, so all of them compute the same owner.

A subscription's unit of ownership on the sender ring is the (subscription,
partition) pair: partition 0 belongs to the subscription's owner on the ring, and
partition p to the p-th of the distinct nodes in ring order from there (modulo
their number), so a topic of P partitions spreads over min(P, senders) senders
evenly, and a one-partition topic stays with one owner, as before pairs.
"""

from typing import Iterable

from uhashring import HashRing

# Ring orders of subscriptions kept per ring (a ring is rebuilt at each membership
# change, which drops them); past this many the cache starts over.
MAX_CACHED_ORDERS = 10_000


class Ring:
    def __init__(self, nodes: Iterable[str] = ()):
        self.nodes = tuple(sorted(nodes))
        self._ring = HashRing(nodes=list(self.nodes)) if self.nodes else None
        self._orders: dict[str, list[str]] = {}

    def owner(self, key: str, partition: int = 0) -> str | None:
        """The node that owns key (its pair with partition, for a subscription), or
        None when there are no live nodes."""
        if not self._ring:
            return None
        if partition == 0 or len(self.nodes) == 1:
            return self._ring.get_node(key)
        order = self._orders.get(key)
        if order is None:
            if len(self._orders) >= MAX_CACHED_ORDERS:
                self._orders.clear()
            order = self._orders[key] = self.replicas(key, len(self.nodes))
        return order[partition % len(order)]

    def replicas(self, key: str, count: int) -> list[str]:
        """count distinct nodes for key (fewer when there are fewer nodes), in ring order."""
        if not self._ring:
            return []
        return [node["nodename"] for node in self._ring.range(key, size=min(count, len(self.nodes)))]

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Ring) and other.nodes == self.nodes
