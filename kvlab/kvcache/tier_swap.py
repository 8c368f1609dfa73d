"""SwapInTiers: one host pool for preemption by swap and the prefix tiers. A swapped-out
sequence's pages go into the cache's first KV tier (``tiers=[HostMemoryTier(...)]`` or a pinned
one) as held records under keys of their own, instead of into a separate ``HostTier``: the
tier's pages serve swapped sequences and cached prefixes from one budget, and one ``stats()``
accounts for both (TensorRT-LLM's host offload tier plays both parts the same way).

Swapping out reserves a slot per page (evicting, by the tier's policy, cached prefix records to
make room: demoted to the next tier or dropped) and holds it, so no eviction takes a swapped
page; swapping in loads the records into fresh device pages and frees the slots. The copies are
the cache's tier moves (``kvlab.kvcache.tiers.moves``), made by the engine before the step in
the order they were planned, so a slot freed by a swap-in and reused in the same plan is read
before it is written.

Examples:
    >>> from kvlab.kvcache import PagedKVCache
    >>> from kvlab.kvcache.tiers import HostMemoryTier
    >>> cache = PagedKVCache(num_pages=4, page_size=4, prefix_caching=True,
    ...                      tiers=[HostMemoryTier(num_pages=8)], host_tier=SwapInTiers())
    >>> cache.admit("a", [1] * 6); cache.allocate("a", 6)
    0
    >>> cache.swap_out("a"), cache.drain_tier_moves()     # no copies of its own: two tier moves
    ([], [Offload(page=0, slot=0), Offload(page=1, slot=1)])
    >>> cache.stats().host_pages_used, cache.tiers.stats().pages_used
    (2, 2)
"""

from __future__ import annotations

import dataclasses
import itertools


@dataclasses.dataclass(frozen=True)
class SwappedPage:
    """The tier key of one swapped-out page (never equal to a block hash)."""

    serial: int


class SwapInTiers:
    """A cache's swap space kept in its first KV tier (see the module docstring); the cache needs
    ``tiers=`` (and so prefix caching). Implements ``kvlab.kvcache.offload.SwapSpace``."""

    def __init__(self):
        self._tiers = None                  # the owning cache's TierReuse
        self._serials = itertools.count()

    def bind(self, tiers) -> None:
        if tiers is None:
            raise ValueError("SwapInTiers keeps swapped pages in the cache's first KV tier, so the cache "
                             "needs tiers=[HostMemoryTier(...)] (with prefix caching); for a swap space "
                             "of its own use host_tier=HostTier(num_pages=...)")
        if self._tiers is not None and self._tiers is not tiers:
            raise ValueError("a SwapInTiers serves one cache; give each cache its own")
        self._tiers = tiers

    @property
    def num_pages(self) -> int:
        """The first tier's capacity (shared with the cached prefixes)."""
        return 0 if self._tiers is None else self._tiers.chain.tiers[0].num_pages

    @property
    def num_used(self) -> int:
        """Swapped pages held in the first tier (the tier link counts them in and out)."""
        t = self._tiers
        return 0 if t is None else t.swapped_out - t.swapped_in - t.released

    def can_hold(self, num_pages: int) -> bool:
        return self._tiers.can_hold(num_pages)

    def store(self, pages: list[int]) -> tuple[list, list]:
        keys = [SwappedPage(next(self._serials)) for _ in pages]
        for key, page in zip(keys, pages):
            self._tiers.offload_held(key, page)
        return keys, []

    def restore(self, handles: list, pages: list[int]) -> list:
        self._tiers.swap_in(handles, pages)
        return []

    def release(self, handles: list) -> None:
        self._tiers.release_held(handles)

    def init_storage(self, page_record) -> None:
        """None: the pages live in the tier's own records."""
        return None
