"""RadixKVCache: SGLang's RadixAttention cache - a radix tree keyed by token ids over the page
pool, reference-counted (locked) nodes, leaf eviction by a pluggable policy.

A new sequence locks its longest cached prefix (page-aligned, never its last token). Its tokens
join the tree after each prompt step that completes a page (SGLang's ``cache_unfinished_req``),
after a step that completes several pages, and when it is freed (finished or preempted, as
SGLang's ``cache_finished_req``); one-token decode steps do not touch the tree, so a decoding
sequence costs no tree work. Where another sequence inserted the same tokens first, the
sequence switches to the tree's pages and frees its duplicates. A preempted sequence finds its own
tokens when it is readmitted. Memory held by unlocked nodes is reclaimed lazily, only when an
allocation finds no free page. A sequence admitted but not started only holds its matched path
(``RadixTree.hold_path``: no split, no recency or reuse count); it locks it when it starts, so
an admission rolled back leaves the tree exactly as it was.

With ``tiers`` (``kvlab.kvcache.tiers``): an evicted node's pages go down a tier, each named by the
hash chained over its path's pages (``block_hasher``, as ``PagedKVCache`` names its blocks), and
admission continues the tree's match through the tiers page by page; the pages found there are
held in their tier and loaded into the sequence's fresh pages at its first ``allocate``, then
inserted into the tree (SGLang HiCache's host level below the radix tree). Before a prompt's
pages are hashed, the first tier starts copying the pages of the last path copied down with the
same first page (``TierReuse.guess_run``: a guess, which the match then checks).
"""

from __future__ import annotations

from kvlab.kvcache.block_hash import Sha256BlockHasher, chain_hashes
from kvlab.kvcache.eviction import LRU
from kvlab.kvcache.formats.base import PLAIN, KVFormat
from kvlab.kvcache.radix_tree import RadixTree
from kvlab.kvcache.seq_state import SeqState
from kvlab.kvcache.swap import SwappablePoolCache
from kvlab.kvcache.tiered import tier_reuse


class RadixKVCache(SwappablePoolCache):
    """Radix-tree prefix cache over ``num_pages`` pages of ``page_size`` tokens (1 = token
    granularity, as SGLang's default). eviction: ``LRU()`` (default), ``LFU()``, ``PriorityLRU()``.

    Examples:
        >>> cache = RadixKVCache(num_pages=32, page_size=1)
        >>> cache.admit("a", [1, 2, 3, 4]); cache.allocate("a", 4)
        0
        >>> cache.commit("a", [1, 2, 3, 4, 7], 4); cache.free("a")
        >>> cache.match_prefix([1, 2, 3, 5]), cache.admit("b", [1, 2, 3, 5])
        (3, 3)
    """

    def __init__(self, *, num_pages: int, page_size: int = 1, eviction=None, host_tier=None, tiers=None,
                 block_hasher=None, kv_format: KVFormat = PLAIN):
        super().__init__(num_pages=num_pages, page_size=page_size, host_tier=host_tier, kv_format=kv_format)
        self.writes.check_cache("RadixKVCache")
        self.tree = RadixTree(page_size, eviction or LRU())
        self._pending: dict[int, SeqState] = {}     # admitted, not started: they hold, unsplit
        self.hasher = block_hasher or Sha256BlockHasher()
        self._tiered = None if tiers is None else tier_reuse(tiers, owner="RadixKVCache", prefix_caching=True,
                                                            writes=self.writes)
        self._bind_swap_space()

    def num_available_pages(self, seq_id=None) -> int:
        """Free and evictable pages, plus, for ``seq_id``'s own allocation, the unmatched tail of
        a node its pending admission holds whole (split off, and evictable, the moment that
        sequence starts; for any other sequence the hold keeps it)."""
        seq = self._seqs.get(seq_id) if seq_id is not None else None
        own = self._held_tail(seq) if seq is not None and id(seq) in self._pending else 0
        return super().num_available_pages() + own

    def _held_tail(self, seq: SeqState) -> int:
        node = seq.node
        # lock_ref 1: only this hold, so no sequence uses the node or anything below it, and once
        # split the tail (and, leaf by leaf, everything under it) is evictable.
        if node is None or node.parent is None or node.lock_ref != 1:
            return 0
        end, n = 0, node
        while n is not None:
            end, n = end + len(n.key), n.parent
        return (end - seq.num_indexed * self.page_size) // self.page_size

    def match_prefix(self, token_ids, *, salt=None) -> int:
        return sum(self.match_prefix_by_tier(token_ids, salt=salt))

    def match_prefix_by_tier(self, token_ids, *, salt=None) -> tuple[int, ...]:
        """Leading tokens of ``token_ids`` cached now: in the tree, then in each tier (whole
        pages). No side effects."""
        hit = self.tree.match(salt, token_ids)[0]
        if self._tiered is None:
            return (hit,)
        hits = [hit] + [0] * len(self.tiers.tiers)
        for level in self._tier_run(salt, token_ids, hit, len(token_ids) // self.page_size)[1]:
            hits[1 + level] += self.page_size
        return tuple(hits)

    def _tier_run(self, salt, token_ids, hit: int, num_pages: int) -> tuple[list, list[int]]:
        """The hashes of pages ``hit // page_size ..`` the tiers hold, leading run up to page
        ``num_pages``, and each one's tier."""
        hashes = self._hashes(salt, token_ids, num_pages)[hit // self.page_size:]
        levels = self._tiered.match(hashes)
        return hashes[:len(levels)], levels

    def _hashes(self, salt, token_ids, num_pages: int) -> list:
        """Chained hashes of pages ``0 .. num_pages - 1`` of ``token_ids`` (the tiers' keys)."""
        return chain_hashes(self.hasher, self.hasher.root(salt), token_ids, self.page_size, 0, num_pages)

    def _reuse_prefix(self, seq: SeqState, token_ids) -> int:
        usable = (len(token_ids) - 1) // self.page_size * self.page_size
        node, hit, pages = self.tree.match_path(seq.salt, token_ids[:usable])
        self.tree.hold_path(node)
        self.allocator.incref(pages)
        self.block_table.append(seq.row, pages)
        seq.node, seq.tokens, seq.num_indexed = node, token_ids, len(pages)
        if self._tiered is not None:           # the match goes on below the GPU
            self._prefetch_guess(seq.salt, token_ids, hit // self.page_size, usable // self.page_size)
            seq.tier_hits = self._tier_run(seq.salt, token_ids, hit, usable // self.page_size)[0]
            self._tiered.hold(seq.tier_hits)
        seq.hit_tokens = hit + len(seq.tier_hits) * self.page_size
        self._pending[id(seq)] = seq
        return seq.hit_tokens

    def _prefetch_guess(self, salt, token_ids, in_tree: int, usable: int) -> None:
        """Before the prompt's pages are hashed: from its first page's hash, the first tier starts
        copying the pages past the ``in_tree`` ones of the last path copied down with that first
        page (``TierReuse.guess_run``), if the cache has room for them (only a prefetch)."""
        if usable <= in_tree:
            return
        first = self.hasher.chain(self.hasher.root(salt), token_ids[:self.page_size])
        self._tiered.prefetch_guess(first, usable, self.num_available_pages(), start=in_tree)

    def _start_reuse(self, seq: SeqState) -> None:
        if seq.tokens is None:             # allocated without admit: nothing held
            return
        if seq.tier_hits:                  # the admission stands: the tiers may start their copies
            self._tiered.prefetch(seq.tier_hits)
        self._pending.pop(id(seq), None)
        self.tree.unhold_path(seq.node)
        in_tree = seq.num_indexed * self.page_size
        seq.node, hit, _ = self.tree.match_and_lock(seq.salt, seq.tokens[:in_tree], self.clock, seq.priority)
        assert hit == in_tree, "a held prefix changed before its sequence started"

    def _rollback_reuse(self, seq: SeqState) -> None:
        self._pending.pop(id(seq), None)
        self.tree.unhold_path(seq.node)
        if seq.tier_hits:
            self._tiered.unhold(seq.tier_hits)
            seq.tier_hits = []

    def _placed(self, seq: SeqState, first: int, pages: list[int]) -> None:
        """At the first allocate: load the pages a tier holds into the first fresh pages and insert
        them into the tree (the loads run before the step that reads them)."""
        if not seq.tier_hits:
            return
        keys, seq.tier_hits = seq.tier_hits, []
        self._tiered.load(keys, pages[:len(keys)])
        seq.num_computed = max(seq.num_computed, (first + len(keys)) * self.page_size)
        self._index(seq)

    def commit(self, seq_id, token_ids, num_computed: int) -> None:
        seq = self._seqs.get(seq_id)
        if seq is None or not seq.started:
            return
        before, seq.tokens, seq.num_computed = seq.num_computed, token_ids, num_computed
        new_pages = min(num_computed // self.page_size, self._num_pages(seq)) - seq.num_indexed
        # A step of its prompt (a prefill chunk) indexes the pages it completed, so requests
        # running beside it share them (SGLang's cache_unfinished_req); decode growth waits
        # for a jump of several pages or the free.
        if new_pages > 1 or (new_pages == 1 and before < seq.query_tokens):
            self._index(seq)

    def _index(self, seq: SeqState) -> None:
        """Insert the sequence's computed full pages that are not in the tree yet."""
        p = self.page_size
        full = min(seq.num_computed // p, self._num_pages(seq))
        if full <= seq.num_indexed or seq.tokens is None or seq.node is None:
            return
        lo = seq.num_indexed
        own = self._row(seq)[lo:full].tolist()
        seq.node, tree_pages, taken = self.tree.insert(seq.node, seq.tokens[lo * p:full * p], own,
                                                       self.clock, seq.priority)
        self.allocator.incref(tree_pages[len(tree_pages) - taken:])   # the tree's own reference
        if taken and self._tiered is not None and self.tiers.policy.offload_on_insert(seq.priority):
            hashes = self._hashes(seq.salt, seq.tokens, full)
            self._tiered.indexed(list(zip(hashes[full - taken:], tree_pages[len(tree_pages) - taken:])),
                                 seq.priority)
            self._tiered.chained(hashes)
        # Where another sequence put the same tokens in the tree first, switch to its pages and
        # free the duplicates (SGLang does the same): equal tokens at equal positions, equal KV.
        for i, tree_page in enumerate(tree_pages[:len(tree_pages) - taken]):
            if own[i] != tree_page:
                self.allocator.incref([tree_page])
                self.block_table.write(seq.row, lo + i, [tree_page])
                seq.shared_pages += 1
                self.allocator.decref([own[i]])
        seq.num_indexed = full

    def _before_release(self, seq_id, seq: SeqState) -> None:
        if seq.node is not None:           # None: allocated without admit, nothing locked
            if not seq.host_pages:         # a swapped-out sequence's pages are not on the device
                self._index(seq)
            self.tree.unlock(seq.node, self.clock)

    def _before_swap_out(self, seq_id, seq: SeqState, keep_pages: int) -> None:
        if seq.node is not None:
            self._index(seq)
            self.tree.unlock(seq.node, self.clock)
            seq.node = self.tree.root(seq.salt)     # it re-inserts from the root when it ends
        seq.num_indexed = 0

    def _num_reclaimable(self) -> int:
        return self.tree.num_cached_pages

    def _num_cached_pages(self) -> int:
        return self.tree.num_cached_pages

    def _reclaim(self, n: int) -> None:
        while n > 0 and len(self.tree.evictable):
            node = self.tree.evict_node()
            if self._tiered is not None:           # down a tier instead of gone, if the policy says
                self._offload(node)
            self.allocator.decref(node.pages)
            self.evictions += len(node.pages)
            n -= len(node.pages)

    def _offload(self, node) -> None:
        salt, tokens = self.tree.path(node)
        end = len(tokens) // self.page_size
        hashes = self._hashes(salt, tokens, end)
        self._tiered.evicted([(key, page, node.priority)
                                  for key, page in zip(hashes[end - len(node.pages):], node.pages)])
        self._tiered.chained(hashes)

    def _drop_cached(self) -> None:
        self.allocator.decref(self.tree.clear())
        if self._tiered is not None:
            self._tiered.clear()
