"""The KV cache contract on every cache type, as one hypothesis state machine: after every random
operation the block table holds each live sequence's row (``pages(s)``), replaying
``drain_changes()`` onto a copy of the previous array reproduces the current one, a failed
allocation or a rolled-back admission changes nothing (stats, eviction order, rows),
``match_prefix`` has no side effects, ``reset_prefix_cache`` is refused while sequences live and
forgets every cached prefix otherwise, and swapped-out sequences keep their rows."""

from __future__ import annotations

import numpy as np
import pytest
from cache_helpers import radix_nodes
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from kvlab.kvcache import (
    LFU,
    BlockedKVCache,
    BuiltinBlockHasher,
    CircularKVCache,
    ContiguousKVCache,
    HostTier,
    OutOfPagesError,
    PagedKVCache,
    PriorityLRU,
    RadixKVCache,
)
from kvlab.kvcache.formats import Kivi


def hash_eviction_state(cache) -> tuple:
    """Eviction order and per-block bookkeeping (reuse counts, recency, priority) of a hash cache."""
    blocks = sorted((p, b.hits, b.last_access, b.priority) for p, b in cache.index.blocks.items())
    return tuple(cache.index.evictable.order()), tuple(blocks)


def radix_eviction_state(cache) -> tuple:
    """Eviction order, tree structure and per-node bookkeeping of a radix cache."""
    nodes = sorted((n.key, tuple(n.pages), n.hits, n.last_access, n.priority, n.lock_ref)
                   for n in radix_nodes(cache))
    return tuple(tuple(n.pages) for n in cache.tree.evictable.order()), tuple(nodes)


def no_eviction_state(cache) -> tuple:
    return ()


# name -> (factory, eviction-state reader); the readers know each family's internals.
KINDS = {
    "paged": (lambda: PagedKVCache(num_pages=12, page_size=2), no_eviction_state),
    "paged-prefix": (lambda: PagedKVCache(num_pages=12, page_size=2, prefix_caching=True, eviction=LFU(),
                                          host_tier=HostTier(num_pages=16)), hash_eviction_state),
    "paged-kivi": (lambda: PagedKVCache(num_pages=12, page_size=2, prefix_caching=True,
                                        host_tier=HostTier(num_pages=16),
                                        kv_format=Kivi(bits=2, group_size=2, staging_pages=10)),
                   hash_eviction_state),
    "blocked": (lambda: BlockedKVCache(num_blocks=10, block_tokens=4, eviction=PriorityLRU(),
                                       block_hasher=BuiltinBlockHasher()), hash_eviction_state),
    "radix-1": (lambda: RadixKVCache(num_pages=24, page_size=1, eviction=LFU(),
                                     host_tier=HostTier(num_pages=24)), radix_eviction_state),
    "radix-2": (lambda: RadixKVCache(num_pages=12, page_size=2, eviction=PriorityLRU()),
                radix_eviction_state),
    "circular": (lambda: CircularKVCache(num_pages=14, page_size=2, window=4, num_sink_tokens=1,
                                         max_step_tokens=8), no_eviction_state),
    "contiguous": (lambda: ContiguousKVCache(num_slots=3, max_seq_len=16, page_size=2), no_eviction_state),
}

STAGING_IDS = {"paged-kivi": 10}      # page ids past the cache's pages: KIVI's staging pages
STEMS = [[5, 5, 1, 2, 3, 4, 5, 6], [9, 8, 7, 6, 5, 4, 3, 2]]
prompts = st.builds(lambda stem, cut, tail: STEMS[stem][:cut] + tail,
                    st.integers(0, 1), st.integers(0, 8), st.lists(st.integers(0, 2), max_size=3)
                    ).filter(lambda p: 0 < len(p) <= 8)
seqs = st.integers(0, 9)


class CacheContractMachine(RuleBasedStateMachine):
    kind = None   # set by subclasses

    def __init__(self):
        super().__init__()
        make, self.eviction_state = KINDS[self.kind]
        self.cache = make()
        self.P = self.cache.page_size
        self.tokens: dict[int, list[int]] = {}        # live sequences (started)
        self.swapped: set[int] = set()
        self.committed: list[tuple[str, list[int]]] = []
        self.mirror = self.cache.block_table.array.copy()

    # ---- helpers --------------------------------------------------------------------------------
    def snapshot(self) -> tuple:
        """Everything a rolled-back or failed operation must leave as it was."""
        bt = self.cache.block_table
        rows = {s: (bt.row_of(s), bt.pages(bt.row_of(s)).tolist()) for s in self.tokens}
        return self.cache.stats(), self.eviction_state(self.cache), rows

    def can_grow(self, seq, n) -> bool:
        step = self.cache.max_step_tokens
        return step is None or n - len(self.tokens.get(seq, [])) <= step

    # ---- rules ----------------------------------------------------------------------------------
    @rule(seq=seqs, prompt=prompts, salt=st.sampled_from(["a", "b"]), priority=st.integers(0, 2),
          readmission=st.booleans())
    def start(self, seq, prompt, salt, priority, readmission):
        if seq in self.tokens:
            return
        before = self.snapshot()
        self.cache.admit(seq, prompt, salt=salt, priority=priority, readmission=readmission)
        if not self.cache.can_allocate(seq, len(prompt)):
            admitted = self.snapshot()
            with pytest.raises(OutOfPagesError):
                self.cache.allocate(seq, len(prompt))
            assert self.snapshot() == admitted, "a failed allocation changed the cache"
            self.cache.free(seq)
            assert self.snapshot() == before, "a rolled-back admission changed the cache"
            return
        self.cache.allocate(seq, len(prompt))
        self.cache.commit(seq, prompt, len(prompt))
        self.tokens[seq] = list(prompt)
        self.committed.append((salt, list(prompt)))

    @rule(seq=seqs, prompt=prompts, salt=st.sampled_from(["a", "b"]), priority=st.integers(0, 2))
    def rollback(self, seq, prompt, salt, priority):
        """What a scheduler does with a request that does not fit this step."""
        if seq in self.tokens:
            return
        before = self.snapshot()
        self.cache.admit(seq, prompt, salt=salt, priority=priority)
        self.cache.can_allocate(seq, len(prompt))
        self.cache.free(seq)
        assert self.snapshot() == before, "a rolled-back admission changed the cache"

    @precondition(lambda self: set(self.tokens) - self.swapped)
    @rule(data=st.data(), new=st.lists(st.integers(0, 2), min_size=1, max_size=4))
    def decode(self, data, new):
        seq = data.draw(st.sampled_from(sorted(set(self.tokens) - self.swapped)))
        tokens = self.tokens[seq] + new
        if self.can_grow(seq, len(tokens)) and self.cache.can_allocate(seq, len(tokens)):
            self.cache.allocate(seq, len(tokens))
            self.cache.commit(seq, tokens, len(tokens))
            self.tokens[seq] = tokens

    @precondition(lambda self: set(self.tokens) - self.swapped)
    @rule(data=st.data())
    def overgrow(self, data):
        """An allocation that cannot succeed raises and changes nothing (no eviction for it)."""
        seq = data.draw(st.sampled_from(sorted(set(self.tokens) - self.swapped)))
        n = len(self.tokens[seq]) + (self.cache.num_available_pages() + 1) * self.P
        if self.cache.pages_needed(seq, n) <= self.cache.num_available_pages():
            return                     # circular and contiguous caches never need more pages
        before = self.snapshot()
        assert not self.cache.can_allocate(seq, n)
        with pytest.raises(OutOfPagesError):
            self.cache.allocate(seq, n)
        assert self.snapshot() == before, "a failed allocation changed the cache"

    @precondition(lambda self: self.tokens)
    @rule(data=st.data())
    def finish(self, data):
        seq = data.draw(st.sampled_from(sorted(self.tokens)))
        self.cache.free(seq)
        del self.tokens[seq]
        self.swapped.discard(seq)

    @precondition(lambda self: self.cache.host_tier is not None and set(self.tokens) - self.swapped)
    @rule(data=st.data())
    def swap_out(self, data):
        seq = data.draw(st.sampled_from(sorted(set(self.tokens) - self.swapped)))
        if self.cache.can_swap_out(seq):
            row, pages = self.cache.block_table.row_of(seq), self.cache.pages(seq)
            keep = self.cache.swap_keeps(seq, len(self.tokens[seq]))     # KIVI: its full pages
            if data.draw(st.booleans()):            # as SwapPreemption does
                copies = self.cache.swap_out(seq, keep_tokens=keep)
            else:                                   # (a radix cache may first switch to tree pages)
                copies = self.cache.swap_out(seq)   # the default keeps the same
            self.tokens[seq] = self.tokens[seq][:keep]         # the rest is computed again
            pages = pages[:-(-keep // self.P)]
            assert len(copies) == len(pages) == len({h for _, h in copies})
            assert self.cache.block_table.row_of(seq) == row, "a swapped sequence keeps its row"
            assert len(self.cache.pages(seq)) == len(pages)
            self.swapped.add(seq)

    @precondition(lambda self: self.swapped)
    @rule(data=st.data())
    def swap_in(self, data):
        seq = data.draw(st.sampled_from(sorted(self.swapped)))
        if self.cache.can_swap_in(seq):
            copies = self.cache.swap_in(seq)
            assert [d for _, d in copies] == self.cache.pages(seq)
            self.swapped.discard(seq)

    @rule(prompt=prompts, salt=st.sampled_from(["a", "b"]))
    def lookup(self, prompt, salt):
        before = self.snapshot()
        m = self.cache.match_prefix(prompt, salt=salt)
        assert 0 <= m <= len(prompt) and m % self.P == 0
        assert self.snapshot() == before, "match_prefix changed the cache"

    @rule()
    def reset(self):
        before = self.snapshot()
        if len(self.cache.block_table):
            assert self.cache.reset_prefix_cache() is False
            assert self.snapshot() == before, "a refused reset changed the cache"
            return
        assert self.cache.reset_prefix_cache() is True
        s = self.cache.stats()
        assert s.pages_cached == 0 and s.pages_free == s.pages_total
        assert s.evictions == before[0].evictions, "a reset counted evictions"
        for salt, prompt in self.committed:
            assert self.cache.match_prefix(prompt, salt=salt) == 0, "a prefix survived the reset"
        self.committed = []

    # ---- invariants -----------------------------------------------------------------------------
    @invariant()
    def table_rows_are_the_pages(self):
        bt = self.cache.block_table
        assert len(bt) == len(self.tokens)
        rows = {bt.row_of(s) for s in self.tokens}
        assert len(rows) == len(self.tokens), "two sequences share a row"
        for s, tokens in self.tokens.items():
            row = bt.row_of(s)
            pages = self.cache.pages(s)
            assert bt.array[row, :bt.num_pages[row]].tolist() == pages
            assert len(pages) == -(-len(tokens) // self.P)
            if s not in self.swapped:         # KIVI's staging pages take ids after the cache's own
                ids = self.cache.capacity_tokens // self.P + STAGING_IDS.get(self.kind, 0)
                assert all(0 <= p < ids for p in pages)
        for r in set(range(bt.array.shape[0])) - rows:
            assert bt.num_pages[r] == 0, "a free row has entries in use"

    @invariant()
    def drained_changes_replay(self):
        bt = self.cache.block_table
        ch = bt.drain_changes()
        assert len(ch.rows) == len(ch.cols) == len(ch.pages)
        assert len(set(zip(ch.rows.tolist(), ch.cols.tolist()))) == len(ch.rows), "a cell twice"
        if ch.resized:
            grown = np.zeros_like(bt.array)                 # growth keeps the old cells
            grown[:self.mirror.shape[0], :self.mirror.shape[1]] = self.mirror
            self.mirror = grown
        else:
            assert self.mirror.shape == bt.array.shape, "reallocated without saying so"
        self.mirror[ch.rows, ch.cols] = ch.pages
        assert np.array_equal(self.mirror, bt.array), "the drained changes miss a written cell"

    @invariant()
    def pages_conserved(self):
        s = self.cache.stats()
        assert s.pages_used + s.pages_free + s.pages_cached == s.pages_total
        assert s.num_seqs == len(self.tokens)


MACHINES = {}
for _kind in KINDS:
    _machine = type(f"Contract_{_kind}", (CacheContractMachine,), {"kind": _kind})
    _machine.TestCase.settings = settings(max_examples=60, stateful_step_count=40, deadline=None)
    MACHINES[_kind] = _machine
    globals()[f"TestContract_{_kind.replace('-', '_')}"] = _machine.TestCase
