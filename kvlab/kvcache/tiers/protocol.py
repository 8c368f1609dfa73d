"""The KV tier contract: a fixed-capacity store of page records keyed by block hash.

A tier holds up to ``num_pages`` *page records*, each a NumPy array of one shape and dtype, the
``page_record`` a tier is built with (a ``jax.ShapeDtypeStruct`` or anything with ``shape`` and
``dtype``: the device storage's record, ``[L, 2, P, Hkv, D]`` for plain pages, the stored bytes of a
quantized page, as ``HostTier.init_storage`` takes it). Keys are block hashes (``bytes`` from
``Sha256BlockHasher``, ints from ``BuiltinBlockHasher``: anything hashable). A full tier makes room
by its own eviction policy and hands the victims back to the caller, who may demote them into the
next tier (``TierChain``) or drop them.

Tiers are host-side: plain Python and NumPy, no JAX. Moving a record to or from the device is the
caller's business.

Examples:
    >>> import jax
    >>> from kvlab.kvcache.tiers import HostMemoryTier, KVTier
    >>> tier = HostMemoryTier(num_pages=2, page_record=jax.ShapeDtypeStruct((4,), "float32"))
    >>> isinstance(tier, KVTier)
    True
"""

from __future__ import annotations

import dataclasses
from collections.abc import Hashable, Iterable
from typing import NamedTuple, Protocol, runtime_checkable

import numpy as np


class Evicted(NamedTuple):
    """A record a tier gave up to make room: its key, the record (a copy, the caller's to keep)
    and the retention priority it was stored with."""

    key: Hashable
    record: np.ndarray
    priority: int


@dataclasses.dataclass(frozen=True, kw_only=True)
class TierStats:
    """One tier's pages and counters since it was built. ``pages_used + pages_free == num_pages``."""

    num_pages: int
    pages_used: int
    pages_free: int
    bytes_per_page: int
    puts: int            # put and reserve calls, new keys and overwrites alike
    hits: int            # get calls that found their key
    misses: int          # get calls that did not
    evictions: int       # records given up to make room (each returned by a put)

    @property
    def hit_rate(self) -> float:
        looked = self.hits + self.misses
        return self.hits / looked if looked else 0.0


@runtime_checkable
class KVTier(Protocol):
    """A store of at most ``num_pages`` page records of one shape and dtype, keyed by block hash.
    Records go in and come out as NumPy arrays of ``page_record.shape`` and ``page_record.dtype``;
    every record a tier returns is a copy."""

    page_record: object          # shape and dtype of one record (jax.ShapeDtypeStruct or alike)

    @property
    def num_pages(self) -> int:
        """Capacity in page records."""
        ...

    def put(self, key: Hashable, record: np.ndarray, priority: int = 0) -> list[Evicted]:
        """Store ``record`` under ``key`` (overwriting the key's record if present; the priority
        kept is the higher of the two) and return what was evicted to make room, chosen by the
        tier's eviction policy (empty when there was room). ValueError for a record of another
        shape or dtype."""
        ...

    def get(self, key: Hashable) -> np.ndarray | None:
        """The record under ``key`` (a copy) or None; a hit counts as a use for eviction."""
        ...

    def contains(self, key: Hashable) -> bool:
        """Whether ``key`` is stored (no use counted, no statistics)."""
        ...

    def discard(self, key: Hashable) -> bool:
        """Forget ``key`` and free its page; whether it was stored."""
        ...

    def pop(self, key: Hashable) -> Evicted | None:
        """Remove ``key`` and return its record and priority (a move to another tier), or None;
        counts no hit."""
        ...

    def keys(self) -> list:
        """The stored keys (a snapshot)."""
        ...

    def stats(self) -> TierStats:
        """Pages used and free and the counters."""
        ...

    # ---- slots (a GPU cache plans the copies, the engine makes them: kvlab.kvcache.tiers.moves) --
    def bind(self, page_record) -> None:
        """Fix the page record if the tier was built without one (its record array is made now);
        ValueError for another shape or dtype than the one it holds."""
        ...

    @property
    def records(self):
        """The record array ``[num_pages, *page_record.shape]``, indexed by slot (None until bound)."""
        ...

    def reserve(self, key: Hashable, priority: int = 0):
        """``(slot, vacated)``: the slot ``key``'s record goes to and the keys evicted to free it
        (``Vacated(key, slot, priority)``, their records still in place); None, changing nothing,
        when every record is held."""
        ...

    def num_evictable(self) -> int:
        """Stored records a ``reserve`` could evict now (not held)."""
        ...

    def slots_of(self, keys) -> list:
        """The slot of each of ``keys``' records, None for a key not stored (nothing counted)."""
        ...

    def touch_all(self, keys) -> None:
        """Count a hit on each of ``keys`` (stored; their records are read from their slots)."""
        ...

    def hold_all(self, keys) -> None:
        """Keep each of ``keys`` (stored) from being evicted until the matching ``unhold_all``;
        KeyError, holding none, if one is not stored."""
        ...

    def unhold_all(self, keys) -> None:
        ...

    def clear(self) -> None:
        """Forget every record and hold."""
        ...

    # ---- copies, as the engine makes the moves (kvlab.kvcache.tiers.moves.make_moves) -----------
    def read_rows(self, slots) -> np.ndarray:
        """The records of ``slots`` ``[n, ...]``, a host copy."""
        ...

    def write_rows(self, slots, rows) -> None:
        """Store host records ``rows [n, ...]`` into ``slots``."""
        ...

    def store_records(self, slots, data, rows) -> None:
        """Store rows ``rows`` of ``data`` (device pages' records as the engine read them, a
        device array) into ``slots``."""
        ...

    def load_records(self, slots):
        """The records of ``slots`` padded to ``next_pow2(n)`` rows (host records, or a device
        array)."""
        ...

    def load_pieces(self, slots) -> Iterable:
        """The records of ``slots`` for the device write, as ``RecordPiece``s that together give
        each slot's record once, in the order they are ready (the caller writes each as it
        comes, before the tier changes): one piece of ``load_records`` for a host tier; a tier
        that copies whole buffers to the device hands over each buffer with the rows wanted of
        it, and the write takes them from there (no assembled copy)."""
        ...

    def prefetch(self, slots) -> None:
        """A hint, given when a sequence with hits here starts (before its pages are found), or
        as a guess while a long prompt is being matched (``TierReuse.guess_run``), so the same
        slots may come twice: ``load_records`` will soon want ``slots``. A tier whose copies run
        beside the host may start them now; what it copies must not outlive a later write of
        those records (nothing may depend on the hint)."""
        ...
