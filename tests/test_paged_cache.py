"""The page allocator and PagedKVCache: stateful property tests against a simple model, leaks, errors."""

from __future__ import annotations

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from kvlab.kvcache import OutOfPagesError, PageAllocator, PagedKVCache


class AllocatorMachine(RuleBasedStateMachine):
    """Model: a multiset of references per page."""

    def __init__(self):
        super().__init__()
        self.pool = PageAllocator(12)
        self.refs: dict[int, int] = {}

    @rule(n=st.integers(0, 14))
    def allocate(self, n):
        free = 12 - len(self.refs)
        if n > free:
            with pytest.raises(OutOfPagesError):
                self.pool.allocate(n)
            return
        pages = self.pool.allocate(n)
        assert len(set(pages)) == n
        for p in pages:
            assert p not in self.refs, f"page {p} handed out twice"
            self.refs[p] = 1

    @precondition(lambda self: self.refs)
    @rule(data=st.data())
    def share(self, data):
        p = data.draw(st.sampled_from(sorted(self.refs)))
        self.pool.incref([p])
        self.refs[p] += 1

    @precondition(lambda self: self.refs)
    @rule(data=st.data())
    def release(self, data):
        p = data.draw(st.sampled_from(sorted(self.refs)))
        freed = self.pool.decref([p])
        self.refs[p] -= 1
        if self.refs[p] == 0:
            del self.refs[p]
            assert freed == [p]
        else:
            assert freed == []

    @rule(p=st.integers(0, 11))
    def double_free_is_an_error(self, p):
        if p not in self.refs:
            with pytest.raises(ValueError, match="already free"):
                self.pool.decref([p])

    @invariant()
    def conserved(self):
        assert self.pool.num_used + self.pool.num_free == 12
        assert self.pool.num_used == len(self.refs)
        for p, r in self.refs.items():
            assert self.pool.refcount(p) == r > 0


class PagedCacheMachine(RuleBasedStateMachine):
    """Model: tokens per sequence; pages must cover exactly ceil(tokens / page_size)."""

    def __init__(self):
        super().__init__()
        self.cache = PagedKVCache(num_pages=10, page_size=4)
        self.tokens: dict[int, int] = {}

    @rule(seq=st.integers(0, 4), grow=st.integers(1, 12))
    def allocate(self, seq, grow):
        total = self.tokens.get(seq, 0) + grow
        ok = self.cache.can_allocate(seq, total)
        used = sum(-(-t // 4) for t in self.tokens.values())
        extra = -(-total // 4) - -(-self.tokens.get(seq, 0) // 4)
        assert ok == (used + extra <= 10)
        if ok:
            self.cache.allocate(seq, total)
            self.tokens[seq] = total
        else:
            with pytest.raises(OutOfPagesError):
                self.cache.allocate(seq, total)

    @rule(seq=st.integers(0, 4))
    def free(self, seq):
        self.cache.free(seq)
        self.tokens.pop(seq, None)

    @invariant()
    def pages_match_model(self):
        owned = [p for s in self.tokens for p in self.cache.pages(s)]
        assert len(owned) == len(set(owned)), "a page is owned by two sequences"
        for s, t in self.tokens.items():
            assert len(self.cache.pages(s)) == -(-t // 4)
        st_ = self.cache.stats()
        assert st_.pages_used + st_.pages_free == st_.pages_total == 10
        assert st_.pages_used == len(owned)
        assert st_.tokens_stored == sum(self.tokens.values())
        assert 0.0 <= st_.internal_fragmentation < 1.0


TestAllocator = AllocatorMachine.TestCase
TestAllocator.settings = settings(max_examples=150, stateful_step_count=40, deadline=None)
TestPagedCache = PagedCacheMachine.TestCase
TestPagedCache.settings = settings(max_examples=150, stateful_step_count=40, deadline=None)


def test_all_pages_return_after_all_sequences_end():
    cache = PagedKVCache(num_pages=16, page_size=8)
    for s in range(5):
        cache.allocate(s, 10 + s)
        cache.allocate(s, 17 + s)
    assert cache.stats().pages_used == 5 * 3
    for s in range(5):
        cache.free(s)
    stats = cache.stats()
    assert stats.pages_free == 16 and stats.pages_used == 0 and stats.num_seqs == 0


def test_fragmentation_is_last_page_waste():
    cache = PagedKVCache(num_pages=8, page_size=16)
    cache.allocate("a", 17)  # two pages, 15 empty slots
    assert cache.stats().internal_fragmentation == pytest.approx(15 / 32)


def test_bad_arguments():
    with pytest.raises(ValueError, match="power of two"):
        PagedKVCache(num_pages=4, page_size=12)
    with pytest.raises(ValueError, match="at least 1 page"):
        PagedKVCache(num_pages=0, page_size=16)
    cache = PagedKVCache(num_pages=4, page_size=4)
    cache.allocate("a", 8)
    with pytest.raises(ValueError, match="only grows"):
        cache.allocate("a", 3)
