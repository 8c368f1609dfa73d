"""RadixKVCache: SGLang's RadixAttention cache - a radix tree keyed by token ids over the page
pool, reference-counted (locked) nodes, leaf eviction by a pluggable policy.

A new sequence locks its longest cached prefix (page-aligned, never its last token). Its tokens
join the tree after a prefill (a step that completes several pages) and when it is freed (finished
or preempted, as SGLang's ``cache_finished_req``); decode steps do not touch the tree, so a
decoding sequence costs no tree work. A preempted sequence therefore finds its own tokens when
it is readmitted. Memory held by unlocked nodes is reclaimed lazily, only when an allocation
finds no free page.
"""

from __future__ import annotations

from kvlab.kvcache.eviction import LRU
from kvlab.kvcache.pooled import PagePoolCache, SeqState
from kvlab.kvcache.radix_tree import RadixTree


class RadixKVCache(PagePoolCache):
    """Radix-tree prefix cache over ``num_pages`` pages of ``page_size`` tokens (1 = token
    granularity, as SGLang's default). eviction: ``LRU()`` (default), ``LFU()``, ``PriorityLRU()``.

    Example:
        >>> cache = RadixKVCache(num_pages=32, page_size=1)
        >>> cache.admit("a", [1, 2, 3, 4]); cache.allocate("a", 4)
        0
        >>> cache.commit("a", [1, 2, 3, 4, 7], 4); cache.free("a")
        >>> cache.match_prefix([1, 2, 3, 5]), cache.admit("b", [1, 2, 3, 5])
        (3, 3)
    """

    def __init__(self, *, num_pages: int, page_size: int = 1, eviction=None):
        super().__init__(num_pages=num_pages, page_size=page_size)
        self.tree = RadixTree(page_size, eviction or LRU())

    def match_prefix(self, token_ids, *, salt=None) -> int:
        return self.tree.match(salt, token_ids)[0]

    def _reuse_prefix(self, seq: SeqState, token_ids) -> int:
        usable = (len(token_ids) - 1) // self.page_size * self.page_size
        seq.node, hit, pages = self.tree.match_and_lock(seq.salt, token_ids[:usable], self.clock,
                                                        seq.priority)
        self.allocator.incref(pages)
        seq.pages = list(pages)
        seq.num_indexed = len(pages)
        return hit

    def commit(self, seq_id, token_ids, num_computed: int) -> None:
        seq = self._seqs.get(seq_id)
        if seq is None:
            return
        seq.tokens, seq.num_computed = token_ids, num_computed
        if min(num_computed // self.page_size, len(seq.pages)) - seq.num_indexed > 1:
            self._index(seq)

    def _index(self, seq: SeqState) -> None:
        """Insert the sequence's computed full pages that are not in the tree yet."""
        p = self.page_size
        full = min(seq.num_computed // p, len(seq.pages))
        if full <= seq.num_indexed or seq.tokens is None or seq.node is None:
            return
        seq.node, taken = self.tree.insert(seq.node, seq.tokens[seq.num_indexed * p:full * p],
                                           seq.pages[seq.num_indexed:full], self.clock, seq.priority)
        self.allocator.incref(taken)      # the tree's own reference
        seq.num_indexed = full

    def _before_release(self, seq_id, seq: SeqState) -> None:
        if seq.node is not None:           # None: allocated without admit, nothing locked
            self._index(seq)
            self.tree.unlock(seq.node, self.clock)

    def _num_reclaimable(self) -> int:
        return self.tree.num_cached_pages

    def _num_cached_pages(self) -> int:
        return self.tree.num_cached_pages

    def _reclaim(self, n: int) -> None:
        while n > 0 and len(self.tree.evictable):
            pages = self.tree.evict()
            self.allocator.decref(pages)
            self.evictions += len(pages)
            n -= len(pages)
