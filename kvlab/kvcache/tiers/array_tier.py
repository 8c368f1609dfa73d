"""The bookkeeping every array-backed tier shares: records in one array of ``num_pages`` slots,
a ``PageAllocator`` over the slots, a dict key -> entry, and an ``EvictableSet`` ordered by one of
the caches' eviction policies (``LRU``, ``LFU``, ``PriorityLRU``).

Entries carry what those policies read: ``last_access`` (the tier's own logical clock, advanced by
every put, reserve and hit), ``hits`` (gets and touches that found it), ``priority`` (the highest it
was stored with) and ``depth`` (always 0: a tier does not know a block's position in its prefix, so
ties go by put order).

Two ways to use a tier:

- *records in, records out*: ``put`` copies a record in, ``get`` copies it out, and the victims a
  ``put`` evicts come back with their records;
- *slots*, for a GPU cache whose bytes move later, in order, by whoever runs the steps (the
  engine's executor): ``reserve`` names the slot a key's record will be written to and the victim
  whose record is still in that slot (to be copied elsewhere first), ``slots_of`` where keys'
  records are, ``hold_all``/``unhold_all`` keep keys from being evicted while copies are pending.

The record array is made when the tier learns its page record: at construction, or later by
``bind(page_record)`` (an engine binds its cache's tiers to its KV storage's ``page_record``).
``HostMemoryTier`` and ``DiskTier`` differ only in that array (NumPy memory, a memory-mapped
file); another tier over another buffer (pinned host memory, say) is a subclass with its own
``_new_records``.

Examples:
    >>> import numpy as np
    >>> from kvlab.kvcache.tiers import HostMemoryTier
    >>> tier = HostMemoryTier(num_pages=1)                 # page record bound later
    >>> tier.bind(np.zeros((2,), np.int8))                  # anything with shape and dtype
    >>> tier.put("a", np.array([1, 2], np.int8)), [e.key for e in tier.put("b", np.zeros(2, np.int8))]
    ([], ['a'])
    >>> tier.reserve("c")                                   # slot 0, whose record "b" gives up
    (0, [Vacated(key='b', slot=0, priority=0)])
"""

from __future__ import annotations

import abc
import dataclasses
from typing import NamedTuple

import numpy as np

from kvlab.kvcache.eviction import EvictableSet
from kvlab.kvcache.pool import PageAllocator
from kvlab.kvcache.tiers.protocol import Evicted, TierStats
from kvlab.kvcache.tiers.records import RecordPiece, check_num_pages, pad_slots, record_spec


class Vacated(NamedTuple):
    """A key ``reserve`` evicted: its record is still in ``slot`` until the reserved key's record
    is written there."""

    key: object
    slot: int
    priority: int


@dataclasses.dataclass(eq=False, slots=True)
class _Entry:
    """One stored record's slot and the bookkeeping eviction policies read."""

    slot: int
    last_access: int
    priority: int
    hits: int = 0
    depth: int = 0


class ArrayTier(abc.ABC):
    """A ``KVTier`` of ``num_pages`` slots; ``eviction`` orders the victims; ``page_record`` (or a
    later ``bind``) fixes the records' shape and dtype. Subclasses make the record array."""

    def __init__(self, num_pages: int, page_record, eviction):
        owner = type(self).__name__
        if not callable(getattr(eviction, "key", None)):
            raise ValueError(f"{owner} needs an eviction policy object with key(entry), such as LRU(), "
                             f"LFU() or PriorityLRU(); got {eviction!r}")
        self.eviction = eviction
        self.page_record = None
        self.shape, self.dtype = None, None
        self._records = None
        self._allocator = PageAllocator(check_num_pages(num_pages, owner))
        self._entries: dict = {}
        self._evictable = EvictableSet(eviction)
        self._clock = 0
        self._puts = self._hits = self._misses = self._evictions = 0
        if page_record is not None:
            self.bind(page_record)

    @abc.abstractmethod
    def _new_records(self, shape: tuple[int, ...], dtype: np.dtype):
        """The record array ``[num_pages, *shape]`` of ``dtype`` (each subclass its own memory)."""

    def bind(self, page_record) -> None:
        """Fix the page record (make the record array); binding again to the same shape and dtype
        does nothing, to another is a ValueError."""
        owner = type(self).__name__
        spec = record_spec(page_record, owner)
        if self.page_record is not None:
            if spec != (self.shape, self.dtype):
                raise ValueError(f"{owner} holds records of {self.shape} {self.dtype}; it cannot take "
                                 f"{spec[0]} {spec[1]} (a tier serves one KV storage: give each its own)")
            return
        self._records = self._new_records(*spec)
        self.shape, self.dtype = spec
        self.page_record = page_record

    @property
    def num_pages(self) -> int:
        return self._allocator.num_pages

    @property
    def records(self):
        """The record array ``[num_pages, *shape]`` (slot ``s`` holds the record ``slots_of`` names);
        None until the page record is bound."""
        return self._records

    def _storage(self):
        if self._records is None:
            raise ValueError(f"{type(self).__name__} has no page record yet; build it with "
                             f"page_record=... or call bind(page_record) (an engine binds its cache's tiers)")
        return self._records

    def _check_record(self, record) -> np.ndarray:
        self._storage()
        record = np.asarray(record)
        if record.shape != self.shape or record.dtype != self.dtype:
            raise ValueError(f"{type(self).__name__} stores records of shape {self.shape} and dtype "
                             f"{self.dtype}; got shape {record.shape} and dtype {record.dtype}")
        return record

    def _tick(self) -> int:
        self._clock += 1
        return self._clock

    # ---- slots ----------------------------------------------------------------------------------
    def reserve(self, key, priority: int = 0) -> tuple[int, list[Vacated]] | None:
        """The slot ``key``'s record is to be written to, and the key evicted to free it (its
        record still there); None - nothing changed - when the tier is full of held records. A
        key already stored keeps its slot (its priority rises to ``priority`` if higher)."""
        entry = self._entries.get(key)
        if entry is not None:
            self._puts += 1
            self._evictable.discard(key)
            entry.last_access, entry.priority = self._tick(), max(entry.priority, int(priority))
            self._evictable.add(key, entry)
            return entry.slot, []
        if self._allocator.num_free:
            (slot,), vacated = self._allocator.allocate(1), []
        elif len(self._evictable):         # the victim's slot passes to ``key`` as it is
            victim = self._evictable.pop()
            gone = self._entries.pop(victim)
            slot, vacated = gone.slot, [Vacated(victim, gone.slot, gone.priority)]
            self._evictions += 1
        else:
            return None
        entry = self._entries[key] = _Entry(slot, self._tick(), int(priority))
        self._evictable.add(key, entry)
        self._puts += 1
        return slot, vacated

    def slots_of(self, keys) -> list:
        """The slot of each of ``keys``' records, None for a key not stored (nothing counted)."""
        get = self._entries.get
        return [None if (entry := get(key)) is None else entry.slot for key in keys]

    def touch_all(self, keys) -> None:
        """A use of each of ``keys`` (stored) without a copy (their records are being loaded):
        a hit each."""
        entries, add, clock = self._entries, self._evictable.add, self._clock
        for key in keys:           # a new place in the order (a held record stays parked)
            entry = entries[key]
            clock += 1
            entry.last_access, entry.hits = clock, entry.hits + 1
            add(key, entry)
        self._hits += clock - self._clock
        self._clock = clock

    def hold_all(self, keys) -> None:
        """Keep each of ``keys`` from being evicted until as many ``unhold_all`` calls; KeyError,
        holding none, if one is not stored."""
        keys = list(keys)
        missing = [key for key in keys if key not in self._entries]
        if missing:
            raise KeyError(f"{type(self).__name__} does not hold {missing[0]!r}")
        self._evictable.hold_all(keys)

    def unhold_all(self, keys) -> None:
        self._evictable.unhold_all(keys)

    def num_evictable(self) -> int:
        """Records a reservation could evict now (stored and not held)."""
        return len(self._evictable)

    # ---- copies (the engine's executor makes the moves with these: tiers.moves.make_moves) ---------
    def read_rows(self, slots) -> np.ndarray:
        """The records of ``slots`` ``[n, ...]`` (a copy)."""
        return self._storage()[np.asarray(slots, np.int64)]

    def write_rows(self, slots, rows) -> None:
        """Store host records ``rows [n, ...]`` into ``slots``."""
        self._storage()[np.asarray(slots, np.int64)] = np.asarray(rows)

    def store_records(self, slots, data, rows) -> None:
        """Store rows ``rows`` of ``data`` (device pages' records as the engine read them: a
        device array or host records ``[m, ...]``) into ``slots``."""
        self.write_rows(slots, np.asarray(data)[np.asarray(rows, np.int64)])

    def load_records(self, slots):
        """The records of ``slots`` for a device write: ``[next_pow2(n), ...]``, the rows past
        ``n`` padding (here host records; a tier in device-visible memory returns a device array)."""
        return self.read_rows(pad_slots(slots))

    def load_pieces(self, slots) -> list[RecordPiece]:
        """One piece: ``load_records(slots)``."""
        return [RecordPiece(self.load_records(slots))]

    def prefetch(self, slots) -> None:
        """Nothing to start early: host records are copied when ``load_records`` is called."""
        return None

    # ---- records in, records out ------------------------------------------------------------------
    def put(self, key, record, priority: int = 0) -> list[Evicted]:
        """Store ``record`` under ``key``; the records evicted to make room (see ``KVTier.put``).
        ValueError, changing nothing, when every record is held."""
        record = self._check_record(record)
        self._storage()
        reserved = self.reserve(key, priority)
        if reserved is None:
            raise ValueError(f"{type(self).__name__} is full of held records; nothing can be evicted "
                             f"to store {key!r}")
        slot, vacated = reserved
        evicted = [Evicted(v.key, self.read_rows([v.slot])[0], v.priority) for v in vacated]
        self.write_rows([slot], record[None])
        return evicted

    def get(self, key) -> np.ndarray | None:
        """A copy of ``key``'s record, or None; a hit counts as a use."""
        self._storage()
        if key not in self._entries:
            self._misses += 1
            return None
        self.touch_all([key])
        return self.read_rows([self._entries[key].slot])[0]

    def peek(self, key) -> np.ndarray | None:
        """A copy of ``key``'s record, or None, counting nothing (for checks and debugging)."""
        entry = self._entries.get(key)
        return None if entry is None else self.read_rows([entry.slot])[0]

    def pop(self, key) -> Evicted | None:
        """Remove ``key``; its record (a copy) and priority, or None. Counts no hit."""
        entry = self._entries.get(key)
        if entry is None:
            return None
        record = self.read_rows([entry.slot])[0]
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

    def clear(self) -> None:
        """Forget every record and hold (the counters stay)."""
        self._entries.clear()
        self._allocator = PageAllocator(self._allocator.num_pages)
        self._evictable = EvictableSet(self.eviction)

    def keys(self) -> list:
        return list(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def stats(self) -> TierStats:
        per_page = 0 if self.shape is None else int(np.prod(self.shape)) * self.dtype.itemsize
        return TierStats(num_pages=self.num_pages, pages_used=self._allocator.num_used,
                         pages_free=self._allocator.num_free, bytes_per_page=per_page, puts=self._puts,
                         hits=self._hits, misses=self._misses, evictions=self._evictions)
