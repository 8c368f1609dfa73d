"""PagedKVCache: vLLM's paged KV memory - fixed-size pages from one shared pool (per-layer page
arrays on the device), a page table per sequence, waste only in each sequence's last page - with
optional hash-chained prefix caching (vLLM's automatic prefix caching).

With ``prefix_caching=True``: every full page is indexed by a hash chained to its parent page's
(``block_hash``); a new sequence reuses the longest indexed run of its leading pages, but never
its last token (that one must be recomputed to get logits); a finished sequence's indexed pages
keep their contents and become evictable, ordered by the eviction policy (LRU by default), and
are evicted lazily - only when an allocation finds no free page. A sequence admitted but not yet
started holds its reused blocks tentatively (``EvictableSet.hold``); their recency, reuse count
and priority are updated when it starts, and a rollback restores them untouched.

With ``tiers`` (a ``TierChain`` of host-memory and disk tiers, ``kvlab.kvcache.tiers``; prefix
caching required): an evicted cached page goes down a tier instead of vanishing, as the chain's
offload policy says; admission continues the GPU prefix match through the tiers, and the blocks a
tier holds are loaded back into the sequence's fresh pages at its first ``allocate`` (held in
their tier until then). ``drain_tier_moves`` hands the planned copies to the engine
(``kvlab.kvcache.tiered``). The tiers start their copies once a prompt's first block is hashed,
from the blocks of the last sequence indexed with the same first block (``TierReuse.guess_run``:
a guess, which the match then checks), while the rest of a long prompt is hashed and matched.
"""

from __future__ import annotations

from kvlab.kvcache.block_hash import BlockIndex, Sha256BlockHasher, chain_hashes
from kvlab.kvcache.eviction import LRU
from kvlab.kvcache.formats.base import PLAIN, KVFormat
from kvlab.kvcache.seq_state import SeqState
from kvlab.kvcache.swap import SwappablePoolCache
from kvlab.kvcache.tiered import tier_reuse


class PagedKVCache(SwappablePoolCache):
    """Paged KV cache, prefix caching optional.

    num_pages, page_size: the pool (page_size a power of two); eviction: a policy object from
    ``kvlab.kvcache.eviction`` (``LRU()``, ``LFU()``, ``PriorityLRU()``); block_hasher: how full
    blocks are named (``Sha256BlockHasher()`` by default); host_tier: a ``HostTier`` that
    preemption by swap moves sequences to.

    Examples:
        >>> cache = PagedKVCache(num_pages=8, page_size=4, prefix_caching=True)
        >>> cache.admit("a", [1, 2, 3, 4, 5, 6]); cache.allocate("a", 6)
        0
        >>> cache.commit("a", [1, 2, 3, 4, 5, 6], 6); cache.free("a")
        >>> cache.stats().pages_cached, cache.match_prefix([1, 2, 3, 4, 9])
        (1, 4)
        >>> cache.admit("b", [1, 2, 3, 4, 9])           # reuses the first page
        4
    """

    def __init__(self, *, num_pages: int, page_size: int = 16, prefix_caching: bool = False,
                 eviction=None, block_hasher=None, host_tier=None, tiers=None, kv_format: KVFormat = PLAIN):
        super().__init__(num_pages=num_pages, page_size=page_size, host_tier=host_tier, kv_format=kv_format)
        self.prefix_caching = prefix_caching
        self.hasher = block_hasher or Sha256BlockHasher()
        self.index = BlockIndex(eviction or LRU()) if prefix_caching else None
        self._tiered = None if tiers is None else tier_reuse(tiers, owner=type(self).__name__,
                                                            prefix_caching=prefix_caching, writes=self.writes)
        self._bind_swap_space()

    # ---- prefix reuse --------------------------------------------------------------------------
    def _hashes(self, token_ids, salt, num_blocks: int) -> list:
        return chain_hashes(self.hasher, self.hasher.root(salt), token_ids, self.page_size, 0, num_blocks)

    def match_prefix(self, token_ids, *, salt=None) -> int:
        return sum(self.match_prefix_by_tier(token_ids, salt=salt))

    def match_prefix_by_tier(self, token_ids, *, salt=None) -> tuple[int, ...]:
        """Leading tokens of ``token_ids`` cached now, by where their blocks are: the GPU first,
        then each tier of ``tiers`` (fastest first). No side effects."""
        hits = [0] * (1 + (0 if self.tiers is None else len(self.tiers.tiers)))
        if self.index is None:
            return tuple(hits)
        # Hash block by block and stop at the first miss: a lookup costs what it matches.
        parent, on_gpu = self.hasher.root(salt), True
        for i in range(len(token_ids) // self.page_size):
            parent = self.hasher.chain(parent, token_ids[i * self.page_size:(i + 1) * self.page_size])
            on_gpu = on_gpu and parent in self.index.by_hash
            where = None if on_gpu or self.tiers is None else self.tiers.where(parent)
            if not on_gpu and where is None:
                break
            hits[0 if on_gpu else 1 + where[0]] += self.page_size
        return tuple(hits)

    def _reuse_prefix(self, seq: SeqState, token_ids) -> int:
        if self.index is None:
            return 0
        usable = (len(token_ids) - 1) // self.page_size      # keep the last token to compute
        if self._tiered is not None and usable:
            self._prefetch_guess(seq, token_ids, usable)
        seq.block_hashes = self._hashes(token_ids, seq.salt, len(token_ids) // self.page_size)
        pages = self.index.lookup(seq.block_hashes[:usable])
        self.allocator.incref(pages)
        self.index.evictable.hold_all(pages)
        self.block_table.append(seq.row, pages)
        seq.num_indexed = len(pages)
        if self._tiered is not None:           # the match goes on below the GPU
            rest = seq.block_hashes[len(pages):usable]
            seq.tier_hits = rest[:len(self._tiered.match(rest))]
            self._tiered.hold(seq.tier_hits)
        return (len(pages) + len(seq.tier_hits)) * self.page_size

    def _prefetch_guess(self, seq: SeqState, token_ids, usable: int) -> None:
        """Before the prompt is hashed whole: from its first block's hash, the first tier starts
        copying the blocks of the last sequence indexed with that first block
        (``TierReuse.guess_run``), if the cache has room for them (the copies are only a
        prefetch; the match decides what is loaded)."""
        first = self.hasher.chain(self.hasher.root(seq.salt), token_ids[:self.page_size])
        self._tiered.prefetch_guess(first, usable, self.num_available_pages(),
                                    skip=self.index.by_hash.__contains__)

    def _attached(self, seq: SeqState) -> list[int]:
        """The GPU pages attached at admission (until the sequence starts)."""
        return self._row(seq)[:seq.num_indexed].tolist()

    def _placed(self, seq: SeqState, first: int, pages: list[int]) -> None:
        """At the first allocate: load the blocks a tier holds into the first fresh pages and
        index them (the load runs before the step that reads them)."""
        if not seq.tier_hits:
            return
        keys, seq.tier_hits = seq.tier_hits, []
        self._tiered.load(keys, pages[:len(keys)])
        self._index(seq, first + len(keys))        # keys are seq.block_hashes[first:]

    def _start_reuse(self, seq: SeqState) -> None:
        if self.index is None:
            return
        if seq.tier_hits:           # the admission stands: the tiers may start their copies
            self._tiered.prefetch(seq.tier_hits)
        attached = self._attached(seq)
        self.index.touch_all(attached, self.clock, seq.priority)
        self.index.evictable.unhold_all(attached)

    def _rollback_reuse(self, seq: SeqState) -> None:
        if self.index is None:
            return
        self.index.evictable.unhold_all(self._attached(seq))
        if seq.tier_hits:
            self._tiered.unhold(seq.tier_hits)
            seq.tier_hits = []

    def commit(self, seq_id, token_ids, num_computed: int) -> None:
        if self.index is None:
            return
        seq = self._seqs.get(seq_id)
        if seq is None or num_computed // self.page_size <= seq.num_indexed:
            return                                  # no page filled since (most steps)
        seq.num_computed = max(seq.num_computed, num_computed)
        full = min(num_computed // self.page_size, self._num_pages(seq))
        if full <= seq.num_indexed:
            return
        if len(seq.block_hashes) < full:            # blocks past the admitted tokens (decoded)
            parent = seq.block_hashes[-1] if seq.block_hashes else self.hasher.root(seq.salt)
            seq.block_hashes += chain_hashes(self.hasher, parent, token_ids, self.page_size,
                                             len(seq.block_hashes), full)
        self._index(seq, self.writes.sealed_prefix(seq_id, full))   # staged pages: once sealed

    def _index(self, seq: SeqState, full: int) -> None:
        """Index the sequence's pages ``num_indexed .. full - 1`` (their hashes known)."""
        if full <= seq.num_indexed:
            return
        pages = self._row(seq)[seq.num_indexed:full].tolist()
        new = self.index.insert_run(seq.block_hashes[seq.num_indexed:full], pages, seq.num_indexed,
                                    self.clock, seq.priority)
        self.allocator.incref([page for _, page in new])      # the index's own references
        if self._tiered is not None:
            self._tiered.indexed(new, seq.priority)
            self._tiered.chained(seq.block_hashes)
        seq.num_indexed = full

    def _before_swap_out(self, seq_id, seq: SeqState, keep_pages: int) -> None:
        if self.index is not None:     # pages sealed for the swap are reusable, as at ``free``
            full = min(len(seq.block_hashes), seq.num_computed // self.page_size, keep_pages)
            self._index(seq, self.writes.sealed_prefix(seq_id, full))
        super()._before_swap_out(seq_id, seq, keep_pages)

    def _before_release(self, seq_id, seq: SeqState) -> None:
        if self.index is not None:     # full staged pages are sealed so that they can be reused
            full = min(len(seq.block_hashes), seq.num_computed // self.page_size)
            if self.writes.seal(seq_id, full, self.block_table, seq.row):      # (in-place: none)
                self._index(seq, self.writes.sealed_prefix(seq_id, full))

    def _after_release(self, pages: list[int]) -> None:
        if self.index is None:
            return
        holds = self.index.evictable.holds
        for p in pages:    # no sequence but tentative ones uses it: evictable (parked if held)
            if p in self.index.blocks and self.allocator.refcount(p) == 1 + holds(p):
                self.index.release(p, self.clock)

    def _num_reclaimable(self) -> int:
        return 0 if self.index is None else len(self.index.evictable)

    def _num_cached_pages(self) -> int:
        return self._num_reclaimable()

    def _drop_cached(self) -> None:
        if self.index is not None:
            self.allocator.decref(self.index.clear())
        if self._tiered is not None:
            self._tiered.clear()

    def _reclaim(self, n: int) -> None:
        victims = self.index.evict_blocks(min(n, self._num_reclaimable()))
        if self._tiered is not None:               # down a tier instead of gone, if the policy says
            self._tiered.evicted([(block.block_hash, page, block.priority) for page, block in victims])
        self.allocator.decref([page for page, _ in victims])
        self.evictions += len(victims)
