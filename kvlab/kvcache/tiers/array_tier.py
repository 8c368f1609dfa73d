"""The bookkeeping every array-backed tier shares: records in one array of ``num_pages`` slots,
a ``PageAllocator`` over the slots, a dict key -> entry, and an ``EvictableSet`` ordered by one of
the caches' eviction policies (``LRU``, ``LFU``, ``PriorityLRU``).

Entries carry what those policies read: ``last_access`` (the tier's own logical clock, advanced by
every put and hit), ``hits`` (gets that found it), ``priority`` (the highest it was put with) and
``depth`` (always 0: a tier does not know a block's position in its prefix, so ties go by put
order). Every stored record is evictable: nothing is pinned.

``HostMemoryTier`` and ``DiskTier`` differ only in the array they hand over (NumPy memory, a
memory-mapped file); another tier over another buffer (pinned host memory, say) is a subclass
that does the same.

Examples:
    >>> import numpy as np
    >>> from kvlab.kvcache.eviction import LRU
    >>> spec = np.zeros((2,), np.int8)                      # anything with shape and dtype
    >>> tier = ArrayTier(np.zeros((1, 2), np.int8), spec, LRU())
    >>> tier.put("a", np.array([1, 2], np.int8)), [e.key for e in tier.put("b", spec)]
    ([], ['a'])
"""

from __future__ import annotations

import dataclasses
import numbers

import numpy as np

from kvlab.kvcache.eviction import EvictableSet
from kvlab.kvcache.pool import PageAllocator
from kvlab.kvcache.tiers.protocol import Evicted, TierStats


def check_num_pages(num_pages, owner: str) -> int:
    """``num_pages`` as an int, ValueError unless it is a whole number >= 1."""
    if isinstance(num_pages, bool) or not isinstance(num_pages, numbers.Integral) or num_pages < 1:
        raise ValueError(f"{owner} needs num_pages >= 1 (a whole number of page records), got {num_pages!r}")
    return int(num_pages)


def record_spec(page_record, owner: str) -> tuple[tuple[int, ...], np.dtype]:
    """``(shape, dtype)`` of a page record spec, ValueError unless it has positive dimensions and
    a plain (non-object) dtype."""
    shape, dtype = getattr(page_record, "shape", None), getattr(page_record, "dtype", None)
    if shape is None or dtype is None:
        raise ValueError(f"{owner} needs page_record with .shape and .dtype (a jax.ShapeDtypeStruct), "
                         f"got {page_record!r}")
    try:
        dtype = np.dtype(dtype)
    except TypeError as err:
        raise ValueError(f"{owner}: page_record dtype {dtype!r} is not a NumPy dtype ({err})") from None
    shape = tuple(shape)
    if not shape or any(isinstance(n, bool) or not isinstance(n, numbers.Integral) or n < 1 for n in shape):
        raise ValueError(f"{owner}: page_record shape must be one or more positive dimensions, got {shape}")
    if dtype.hasobject or dtype.itemsize == 0:
        raise ValueError(f"{owner} stores records as bytes: page_record dtype must be a fixed-size "
                         f"numeric type such as float16, bfloat16 or uint8, got {dtype}")
    return tuple(int(n) for n in shape), dtype


@dataclasses.dataclass(eq=False)
class _Entry:
    """One stored record's slot and the bookkeeping eviction policies read."""

    slot: int
    last_access: int
    priority: int
    hits: int = 0
    depth: int = 0


class ArrayTier:
    """A ``KVTier`` over ``records``, an array ``[num_pages, *page_record.shape]`` of the record
    dtype that the tier owns from now on; ``eviction`` orders the victims."""

    def __init__(self, records, page_record, eviction):
        owner = type(self).__name__
        self.shape, self.dtype = record_spec(page_record, owner)
        if not callable(getattr(eviction, "key", None)):
            raise ValueError(f"{owner} needs an eviction policy object with key(entry), such as LRU(), "
                             f"LFU() or PriorityLRU(); got {eviction!r}")
        if records.shape[1:] != self.shape or records.dtype != self.dtype:
            raise ValueError(f"{owner}: storage {records.shape} {records.dtype} does not hold records "
                             f"of {self.shape} {self.dtype}")
        self.page_record = page_record
        self.eviction = eviction
        self._records = records
        self._allocator = PageAllocator(records.shape[0])
        self._entries: dict = {}
        self._evictable = EvictableSet(eviction)
        self._clock = 0
        self._puts = self._hits = self._misses = self._evictions = 0

    @property
    def num_pages(self) -> int:
        return self._allocator.num_pages

    def _storage(self):
        """The record array (a subclass that can be closed checks here)."""
        return self._records

    def _check_record(self, record) -> np.ndarray:
        record = np.asarray(record)
        if record.shape != self.shape or record.dtype != self.dtype:
            raise ValueError(f"{type(self).__name__} stores records of shape {self.shape} and dtype "
                             f"{self.dtype}; got shape {record.shape} and dtype {record.dtype}")
        return record

    def _tick(self) -> int:
        self._clock += 1
        return self._clock

    def put(self, key, record, priority: int = 0) -> list[Evicted]:
        """Store ``record`` under ``key``; the records evicted to make room (see ``KVTier.put``)."""
        record = self._check_record(record)
        storage = self._storage()
        self._puts += 1
        entry = self._entries.get(key)
        if entry is not None:                     # overwrite in place: a use, no room needed
            self._evictable.discard(key)
            entry.last_access, entry.priority = self._tick(), max(entry.priority, int(priority))
            storage[entry.slot] = record
            self._evictable.add(key, entry)
            return []
        evicted = []
        while self._allocator.num_free == 0:
            victim = self._evictable.pop()
            gone = self._entries.pop(victim)
            evicted.append(Evicted(victim, np.array(storage[gone.slot]), gone.priority))
            self._allocator.decref([gone.slot])
            self._evictions += 1
        (slot,) = self._allocator.allocate(1)
        storage[slot] = record
        entry = _Entry(slot, self._tick(), int(priority))
        self._entries[key] = entry
        self._evictable.add(key, entry)
        return evicted

    def get(self, key) -> np.ndarray | None:
        """A copy of ``key``'s record, or None; a hit counts as a use."""
        storage = self._storage()
        entry = self._entries.get(key)
        if entry is None:
            self._misses += 1
            return None
        self._hits += 1
        self._evictable.discard(key)
        entry.last_access, entry.hits = self._tick(), entry.hits + 1
        self._evictable.add(key, entry)
        return np.array(storage[entry.slot])

    def peek(self, key) -> np.ndarray | None:
        """A copy of ``key``'s record, or None, counting nothing (for checks and debugging)."""
        entry = self._entries.get(key)
        return None if entry is None else np.array(self._storage()[entry.slot])

    def pop(self, key) -> Evicted | None:
        """Remove ``key``; its record (a copy) and priority, or None. Counts no hit."""
        entry = self._entries.get(key)
        if entry is None:
            return None
        record = np.array(self._storage()[entry.slot])
        self.discard(key)
        return Evicted(key, record, entry.priority)

    def contains(self, key) -> bool:
        return key in self._entries

    def discard(self, key) -> bool:
        entry = self._entries.pop(key, None)
        if entry is None:
            return False
        self._evictable.discard(key)
        self._allocator.decref([entry.slot])
        return True

    def keys(self) -> list:
        return list(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def stats(self) -> TierStats:
        return TierStats(num_pages=self.num_pages, pages_used=self._allocator.num_used,
                         pages_free=self._allocator.num_free,
                         bytes_per_page=int(np.prod(self.shape)) * self.dtype.itemsize, puts=self._puts,
                         hits=self._hits, misses=self._misses, evictions=self._evictions)
