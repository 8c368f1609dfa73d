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

    Tentative holds: a sequence admitted but not yet running holds its prefix's entries
    (``hold``) without using them. A held entry is not evictable; one that becomes evictable
    while held (``add``) is *parked*; when the last hold goes (``unhold``) a parked entry comes
    back with its original place in the order (same key, same tie-breaking version), so an
    admission rolled back leaves the order exactly as if it never happened.
    """

    def __init__(self, policy):
        self.policy = policy
        self._heap: list = []
        self._live: dict = {}            # id -> (version, entry)
        self._parked: dict = {}          # id -> (version, entry): evictable once unheld
        self._holds: dict = {}           # id -> tentative holds
        self._counter = itertools.count()

    def __len__(self) -> int:
        return len(self._live)

    def __contains__(self, item_id) -> bool:
        return item_id in self._live

    def add(self, item_id, entry) -> None:
        """Make ``item_id`` evictable, ordered by the policy's key of ``entry`` (read now; the
        entry must not change while it is in the set). Parked instead while held."""
        version = next(self._counter)
        if item_id in self._holds:
            self._parked[item_id] = (version, entry)
        else:
            self._push(item_id, version, entry)

    def _push(self, item_id, version: int, entry) -> None:
        self._live[item_id] = (version, entry)
        heapq.heappush(self._heap, (*self.policy.key(entry), version, item_id))
        if len(self._heap) > 2 * len(self._live) + 64:
            self._compact()

    def discard(self, item_id) -> None:
        """``item_id`` is in use (or gone): not evictable, not parked."""
        self._live.pop(item_id, None)
        self._parked.pop(item_id, None)

    def holds(self, item_id) -> int:
        """Tentative holds on ``item_id``."""
        return self._holds.get(item_id, 0)

    def hold(self, item_id) -> None:
        """A tentative user: ``item_id`` stops being evictable until its last ``unhold``."""
        self.hold_all((item_id,))

    def hold_all(self, item_ids) -> None:
        """``hold`` each of ``item_ids`` (a prefix's entries in one call)."""
        holds, live, parked = self._holds, self._live, self._parked
        for item_id in item_ids:
            holds[item_id] = holds.get(item_id, 0) + 1
            entry = live.pop(item_id, None)
            if entry is not None:
                parked[item_id] = entry

    def unhold(self, item_id) -> None:
        """Drop one tentative hold; after the last, a parked entry is evictable again in its
        original place."""
        self.unhold_all((item_id,))

    def unhold_all(self, item_ids) -> None:
        """``unhold`` each of ``item_ids``."""
        holds, parked = self._holds, self._parked
        for item_id in item_ids:
            n = holds[item_id] - 1
            if n:
                holds[item_id] = n
                continue
            del holds[item_id]
            entry = parked.pop(item_id, None)
            if entry is not None:
                self._push(item_id, *entry)

    def copy_holds(self, source, target) -> None:
        """``target`` is held as often as ``source`` (a radix node split in two)."""
        if source in self._holds:
            self._holds[target] = self._holds[source]

    def pop(self):
        """Remove and return the id of the entry to evict first; KeyError when empty."""
        while self._heap:
            *_, version, item_id = heapq.heappop(self._heap)
            live = self._live.get(item_id)
            if live is not None and live[0] == version:
                del self._live[item_id]
                return item_id
        raise KeyError("nothing is evictable")

    def order(self) -> list:
        """The evictable ids in the order ``pop`` would return them (no side effects)."""
        keyed = sorted((*self.policy.key(e), v, i) for i, (v, e) in self._live.items())
        return [k[-1] for k in keyed]

    def _compact(self) -> None:
        self._heap = [(*self.policy.key(e), v, i) for i, (v, e) in self._live.items()]
        heapq.heapify(self._heap)
