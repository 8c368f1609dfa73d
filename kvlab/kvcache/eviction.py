"""Eviction policies: small strategy objects that order cached, unreferenced blocks for eviction.

A policy is a sort key over an entry's bookkeeping (``last_access``: the cache's logical clock at
the entry's last use, ``hits``: how many times it was reused, ``priority``: the retention priority
of the request that last used it, ``depth``: its position in the prefix). The smallest key is
evicted first. Ties prefer the deeper entry, so a prefix's tail goes before its head (a head
evicted first would strand its descendants). Caches keep their evictable entries in an
``EvictableSet`` ordered by the policy they were given.

Examples:
    >>> import types
    >>> ev = EvictableSet(LRU())
    >>> for name, t in [("a", 3), ("b", 1), ("c", 2)]:
    ...     ev.add(name, types.SimpleNamespace(last_access=t, hits=0, priority=0, depth=0))
    >>> ev.discard("b")
    >>> ev.pop(), len(ev)
    ('c', 1)
"""

from __future__ import annotations

import dataclasses
import heapq
import itertools


@dataclasses.dataclass(frozen=True)
class LRU:
    """Least recently used first (vLLM's free queue, SGLang's default)."""

    def key(self, e) -> tuple:
        return (e.last_access, -e.depth)


@dataclasses.dataclass(frozen=True)
class LFU:
    """Least frequently reused first; recency breaks ties (SGLang's ``lfu``)."""

    def key(self, e) -> tuple:
        return (e.hits, e.last_access, -e.depth)


@dataclasses.dataclass(frozen=True)
class PriorityLRU:
    """Lowest retention priority first, LRU within a priority level (TensorRT-LLM's
    priority-based KV reuse). A block takes the highest priority of the requests that used it."""

    def key(self, e) -> tuple:
        return (e.priority, e.last_access, -e.depth)


class EvictableSet:
    """The entries that may be evicted now, popped in policy order.

    A binary heap with lazy deletion: ``discard`` only forgets the entry, ``pop`` skips stale
    heap items; the heap is rebuilt when stale items outnumber live ones. O(log n) per operation.
    """

    def __init__(self, policy):
        self.policy = policy
        self._heap: list = []
        self._live: dict = {}            # id -> (version, entry)
        self._counter = itertools.count()

    def __len__(self) -> int:
        return len(self._live)

    def __contains__(self, item_id) -> bool:
        return item_id in self._live

    def add(self, item_id, entry) -> None:
        """Make ``item_id`` evictable, ordered by the policy's key of ``entry`` (read now)."""
        version = next(self._counter)
        self._live[item_id] = (version, entry)
        heapq.heappush(self._heap, (*self.policy.key(entry), version, item_id))
        if len(self._heap) > 2 * len(self._live) + 64:
            self._compact()

    def discard(self, item_id) -> None:
        self._live.pop(item_id, None)

    def pop(self):
        """Remove and return the id of the entry to evict first; KeyError when empty."""
        while self._heap:
            *_, version, item_id = heapq.heappop(self._heap)
            live = self._live.get(item_id)
            if live is not None and live[0] == version:
                del self._live[item_id]
                return item_id
        raise KeyError("nothing is evictable")

    def _compact(self) -> None:
        self._heap = [(*self.policy.key(e), v, i) for i, (v, e) in self._live.items()]
        heapq.heapify(self._heap)
