"""Consistent hashing of topics and subscriptions onto live members.

Every process builds its ring from the same etcd membership view, and uhashring
(ketama, md5) is deterministic, so all of them compute the same owner.
"""

from typing import Iterable

from uhashring import HashRing


class Ring:
    def __init__(self, nodes: Iterable[str] = ()):
        self.nodes = tuple(sorted(nodes))
        self._ring = HashRing(nodes=list(self.nodes)) if self.nodes else None

    def owner(self, key: str) -> str | None:
        """The node that owns key, or None when there are no live nodes."""
        return self._ring.get_node(key) if self._ring else None

    def replicas(self, key: str, count: int) -> list[str]:
        """count distinct nodes for key (fewer when there are fewer nodes), in ring order."""
        if not self._ring:
            return []
        return [node["nodename"] for node in self._ring.range(key, size=min(count, len(self.nodes)))]

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Ring) and other.nodes == self.nodes
