"""Prefix caches (hash-chained paged/blocked, radix) as hypothesis state machines against a model
of themselves: a simulated device that records which token each slot holds, plus the ownership
every page must have. The invariants: no page owned twice, reference counts exact and never
negative, pages conserved (used + free + cached = total), a reused prefix holds exactly the tokens
that were written, eviction never touches a page or node in use."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from kvlab.kvcache import (
    LFU,
    LRU,
    BlockedKVCache,
    BuiltinBlockHasher,
    OutOfPagesError,
    PagedKVCache,
    PriorityLRU,
    RadixKVCache,
    Sha256BlockHasher,
)

# Prompts share prefixes often: a few stems, a few branches, a random tail.
STEMS = [[7, 7, 1, 2, 3, 4, 5, 6], [9, 8, 7, 6, 5, 4, 3, 2, 1, 0], [3, 1, 4, 1, 5, 9, 2, 6]]
prompts = st.builds(lambda stem, cut, tail: STEMS[stem][:cut] + tail,
                    st.integers(0, 2), st.integers(0, 10), st.lists(st.integers(0, 3), max_size=7)
                    ).filter(bool)


class PrefixCacheMachine(RuleBasedStateMachine):
    """Drives a prefix cache the way a scheduler does and checks it against the model."""

    make_cache = None   # set by subclasses
    NUM_PAGES = 12

    def __init__(self):
        super().__init__()
        self.cache = self.make_cache()
        self.P = self.cache.page_size
        self.slots: dict[int, list] = {}       # page -> token written at each offset (the "device")
        self.live: dict[int, list[int]] = {}   # seq -> its tokens (all computed)
        self.salt: dict[int, str] = {}
        self.committed: set[tuple] = set()     # (salt, tokens) ever committed

    # ---- helpers --------------------------------------------------------------------------------
    def write(self, seq, start, tokens):
        pages = self.cache.pages(seq)
        for pos in range(start, len(tokens)):
            self.slots.setdefault(pages[pos // self.P], [None] * self.P)[pos % self.P] = tokens[pos]

    def read(self, seq, n):
        pages = self.cache.pages(seq)
        return [self.slots.get(pages[i // self.P], [None] * self.P)[i % self.P] for i in range(n)]

    # ---- rules ----------------------------------------------------------------------------------
    @rule(seq=st.integers(0, 5), prompt=prompts, salt=st.sampled_from(["a", "a", "b"]),
          priority=st.integers(0, 2))
    def start(self, seq, prompt, salt, priority):
        if seq in self.live:
            return
        before = self.cache.stats()
        hit = self.cache.admit(seq, prompt, salt=salt, priority=priority)
        assert 0 <= hit <= len(prompt) - 1 and hit % self.P == 0
        assert hit <= self.cache.match_prefix(prompt, salt=salt) or hit == 0
        assert self.read(seq, hit) == prompt[:hit], "a reused prefix holds other tokens"
        if not self.cache.can_allocate(seq, len(prompt)):
            with pytest.raises(OutOfPagesError):
                self.cache.allocate(seq, len(prompt))
            self.cache.free(seq)
            after = self.cache.stats()
            assert (after.prompt_tokens, after.prefix_hit_tokens) == (before.prompt_tokens,
                                                                        before.prefix_hit_tokens)
            return
        self.cache.allocate(seq, len(prompt))
        self.write(seq, hit, prompt)
        self.cache.commit(seq, prompt, len(prompt))
        self.live[seq], self.salt[seq] = list(prompt), salt
        self.committed.add((salt, tuple(prompt)))

    @precondition(lambda self: self.live)
    @rule(data=st.data(), token=st.integers(0, 3))
    def decode(self, data, token):
        seq = data.draw(st.sampled_from(sorted(self.live)))
        tokens = self.live[seq] + [token]
        if self.cache.can_allocate(seq, len(tokens)):
            self.cache.allocate(seq, len(tokens))
            self.write(seq, len(tokens) - 1, tokens)
            self.cache.commit(seq, tokens, len(tokens))
            self.live[seq] = tokens
            self.committed.add((self.salt[seq], tuple(tokens)))

    @precondition(lambda self: self.live)
    @rule(data=st.data())
    def finish(self, data):
        seq = data.draw(st.sampled_from(sorted(self.live)))
        self.cache.free(seq)
        del self.live[seq], self.salt[seq]

    @rule(prompt=prompts, salt=st.sampled_from(["a", "b"]))
    def lookup(self, prompt, salt):
        before = self.cache.stats()
        m = self.cache.match_prefix(prompt, salt=salt)
        assert 0 <= m <= len(prompt) and m % self.P == 0
        assert self.cache.stats() == before, "match_prefix changed the cache"

    # ---- invariants -----------------------------------------------------------------------------
    def index_pages(self) -> dict[int, tuple]:
        """page -> the tokens the prefix index says it holds."""
        raise NotImplementedError

    @invariant()
    def ownership_and_contents(self):
        pool = self.cache.allocator
        index = self.index_pages()
        held: dict[int, int] = {}
        for seq, tokens in self.live.items():
            pages = self.cache.pages(seq)
            assert len(pages) == len(set(pages)), "a sequence holds a page twice"
            assert len(pages) == -(-len(tokens) // self.P)
            assert self.read(seq, len(tokens)) == tokens, "a live sequence's KV was overwritten"
            for p in pages:
                held[p] = held.get(p, 0) + 1
                assert held[p] == 1 or p in index, f"page {p} shared outside the prefix index"
        for p in range(pool.num_pages):
            expected = held.get(p, 0) + (p in index)
            assert pool.refcount(p) == expected >= 0, f"page {p}: refcount {pool.refcount(p)} != {expected}"
        for p, tokens in index.items():
            assert tuple(self.slots[p]) == tokens, "an indexed page holds other tokens"
        s = self.cache.stats()
        assert s.pages_used + s.pages_free + s.pages_cached == s.pages_total
        assert s.pages_cached == sum(1 for p in index if p not in held)
        assert s.pages_free == pool.num_free
        assert 0 <= s.prefix_hit_tokens <= s.prompt_tokens


class HashCacheMachine(PrefixCacheMachine):
    def make_cache(self):
        return PagedKVCache(num_pages=self.NUM_PAGES, page_size=2, prefix_caching=True, eviction=LRU())

    def index_pages(self):
        """The tokens each indexed page must hold, from the hashes of everything committed."""
        hasher, expected = self.cache.hasher, {}
        for salt, tokens in self.committed:
            h = hasher.root(salt)
            for i in range(len(tokens) // self.P):
                block = tokens[i * self.P:(i + 1) * self.P]
                h = hasher.chain(h, block)
                expected[h] = block
        return {p: expected[b.block_hash] for p, b in self.cache.index.blocks.items()}

    @invariant()
    def evictable_pages_are_unused(self):
        held = {p for s in self.live for p in self.cache.pages(s)}
        for p in self.cache.index.evictable._live:
            assert p not in held and self.cache.allocator.refcount(p) == 1


class BlockedCacheMachine(HashCacheMachine):
    def make_cache(self):
        return BlockedKVCache(num_blocks=self.NUM_PAGES, block_tokens=4, eviction=LFU(),
                              block_hasher=BuiltinBlockHasher())


class RadixCacheMachine(PrefixCacheMachine):
    page_size = 1

    def make_cache(self):
        return RadixKVCache(num_pages=self.NUM_PAGES * 2, page_size=self.page_size, eviction=PriorityLRU())

    def nodes(self):
        stack = list(self.cache.tree.roots.values())
        while stack:
            node = stack.pop()
            stack.extend(node.children.values())
            if node.parent is not None:
                yield node

    def index_pages(self):
        out = {}
        for node in self.nodes():
            for i, p in enumerate(node.pages):
                out[p] = tuple(node.key[i * self.P:(i + 1) * self.P])
        return out

    @invariant()
    def locks_count_live_paths(self):
        expected: dict[int, int] = {}
        for seq in self.live:
            node = self.cache._seqs[seq].node
            while node.parent is not None:
                expected[id(node)] = expected.get(id(node), 0) + 1
                node = node.parent
        for node in self.nodes():
            assert node.lock_ref == expected.get(id(node), 0) >= 0
            assert len(node.key) == len(node.pages) * self.P
            if node in self.cache.tree.evictable:
                assert node.lock_ref == 0 and not node.children, "a locked or inner node is evictable"


class PagedRadixCacheMachine(RadixCacheMachine):
    page_size = 2


for _machine in (HashCacheMachine, BlockedCacheMachine, RadixCacheMachine, PagedRadixCacheMachine):
    _machine.TestCase.settings = settings(max_examples=120, stateful_step_count=40, deadline=None)
TestHashCache = HashCacheMachine.TestCase
TestBlockedCache = BlockedCacheMachine.TestCase
TestRadixCache = RadixCacheMachine.TestCase
TestPagedRadixCache = PagedRadixCacheMachine.TestCase


@pytest.mark.parametrize("hasher", [Sha256BlockHasher(), BuiltinBlockHasher()], ids=["sha256", "builtin"])
@settings(max_examples=60, deadline=None)
@given(tokens=st.lists(st.integers(0, 2 ** 40), max_size=40), block=st.integers(1, 6),
       salt=st.none() | st.text(max_size=3))
def test_a_run_of_blocks_hashes_as_its_blocks_one_by_one(hasher, tokens, block, salt):
    """``chain_run`` (one conversion of a run of tokens) names each full block as ``chain`` does
    block by block, and leaves a partial last block out."""
    parent, expected = hasher.root(salt), []
    for start in range(0, len(tokens) - block + 1, block):
        parent = hasher.chain(parent, tokens[start:start + block])
        expected.append(parent)
    assert hasher.chain_run(hasher.root(salt), tokens, block) == expected
