"""Admissions rolled back and allocations that fail change nothing (prefix caches).

A scheduler admits a waiting request (attaching its cached prefix), finds it does not fit this
step and frees it again, every step until it runs. That must not count as a use: twin caches, one
of which also sees any number of such rollbacks, must agree on everything eviction depends on -
the whole eviction order, reuse counts, recency, priorities, the radix tree's structure - and on
the statistics. Reuse is counted once, when the sequence starts. And an allocation (or swap-in)
that cannot succeed raises without evicting a single cached page."""

from __future__ import annotations

import copy

import pytest
from cache_helpers import radix_nodes
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from kvlab.kvcache import (
    LFU,
    BlockedKVCache,
    BuiltinBlockHasher,
    HostTier,
    OutOfPagesError,
    PagedKVCache,
    PriorityLRU,
    RadixKVCache,
)

STEMS = [[7, 7, 1, 2, 3, 4, 5, 6], [9, 8, 7, 6, 5, 4, 3, 2, 1, 0]]
prompts = st.builds(lambda stem, cut, tail: STEMS[stem][:cut] + tail,
                    st.integers(0, 1), st.integers(0, 10), st.lists(st.integers(0, 3), max_size=5)
                    ).filter(bool)


def hash_snapshot(cache) -> tuple:
    """What eviction will do next in a hash cache: the whole eviction order (evicting a copy to
    the end), each block's (reuse count, recency, priority), and the statistics."""
    probe, order = copy.deepcopy(cache), []
    while len(probe.index.evictable):
        order.append(probe.index.evict())
    blocks = {p: (b.hits, b.last_access, b.priority) for p, b in cache.index.blocks.items()}
    return cache.stats(), order, blocks


def radix_snapshot(cache) -> tuple:
    """The same for a radix cache, per node (keyed by its tokens and pages: the structure too)."""
    probe, order = copy.deepcopy(cache), []
    while len(probe.tree.evictable):
        order.append(probe.tree.evict())
    nodes = {(n.key, tuple(n.pages)): (n.hits, n.last_access, n.priority) for n in radix_nodes(cache)}
    return cache.stats(), order, nodes


def reuse_counts(snapshot) -> list[int]:
    return [hits for hits, _, _ in snapshot[2].values()]


TWINS = {   # name -> (cache factory, snapshot)
    "hash-lfu": (lambda: PagedKVCache(num_pages=8, page_size=2, prefix_caching=True, eviction=LFU()),
                 hash_snapshot),
    "blocked-priority": (lambda: BlockedKVCache(num_blocks=6, block_tokens=2, eviction=PriorityLRU(),
                                                block_hasher=BuiltinBlockHasher()), hash_snapshot),
    "radix-lfu": (lambda: RadixKVCache(num_pages=16, page_size=1, eviction=LFU()), radix_snapshot),
    "radix-priority": (lambda: RadixKVCache(num_pages=8, page_size=2, eviction=PriorityLRU()),
                       radix_snapshot),
}


def run_seq(cache, seq, prompt, *, priority=0):
    """Admit, allocate and compute ``prompt`` (the sequence stays live)."""
    hit = cache.admit(seq, prompt, priority=priority)
    cache.allocate(seq, len(prompt))
    cache.commit(seq, prompt, len(prompt))
    return hit


class RollbackTwinMachine(RuleBasedStateMachine):
    """Two caches driven alike; one also sees admissions rolled back (admit, then free without
    allocating, as a scheduler does with a request that waits). They must stay identical:
    eviction order, reuse counts, recency, priorities, tree structure, statistics."""

    twin = None   # a TWINS key, set by subclasses

    def __init__(self):
        super().__init__()
        make, self.snapshot = TWINS[self.twin]
        self.plain, self.rolled = make(), make()
        self.live: set[int] = set()

    def both(self, method, *args, **kwargs):
        a = getattr(self.plain, method)(*args, **kwargs)
        b = getattr(self.rolled, method)(*args, **kwargs)
        assert a == b, f"{method} answered {a} and {b}"
        return a

    @rule(seq=st.integers(0, 4), prompt=prompts, priority=st.integers(0, 2))
    def run(self, seq, prompt, priority):
        if seq in self.live:
            return
        self.both("admit", seq, prompt, priority=priority)
        if not self.both("can_allocate", seq, len(prompt)):
            self.both("free", seq)
            return
        self.both("allocate", seq, len(prompt))
        self.both("commit", seq, prompt, len(prompt))
        self.live.add(seq)

    @precondition(lambda self: self.live)
    @rule(data=st.data())
    def finish(self, data):
        seq = data.draw(st.sampled_from(sorted(self.live)))
        self.both("free", seq)
        self.live.discard(seq)

    @rule(waiting=st.lists(prompts, min_size=1, max_size=4), priority=st.integers(0, 2))
    def rollbacks(self, waiting, priority):
        for i, prompt in enumerate(waiting):     # several waiting requests, one after another
            self.rolled.admit(f"wait{i}", prompt, priority=priority, readmission=i % 2 == 1)
            self.rolled.can_allocate(f"wait{i}", len(prompt))
            self.rolled.match_prefix(prompt)
            self.rolled.free(f"wait{i}")

    @invariant()
    def identical(self):
        assert self.snapshot(self.rolled) == self.snapshot(self.plain)


for _twin in TWINS:
    _machine = type(f"Twin_{_twin}", (RollbackTwinMachine,), {"twin": _twin})
    _machine.TestCase.settings = settings(max_examples=80, stateful_step_count=30, deadline=None)
    globals()[f"TestRollbackTwin_{_twin.replace('-', '_')}"] = _machine.TestCase


@pytest.mark.parametrize("twin", ["hash-lfu", "radix-lfu"])
def test_a_sequence_that_ends_while_another_waits_is_released_as_usual(twin):
    """A waiting admission holds blocks while the running sequence using them ends: rolling the
    wait back leaves them where that end put them (its recency, its place in the order)."""
    make, snapshot = TWINS[twin]
    plain, rolled = make(), make()
    prompt = [1, 2, 3, 4, 5]
    for cache in (plain, rolled):
        run_seq(cache, "old", [7] * 5)
        cache.free("old")
        run_seq(cache, "run", prompt)
    rolled.admit("wait", prompt)                  # holds "run"'s blocks tentatively
    for cache in (plain, rolled):
        cache.free("run")
        run_seq(cache, "other", [9] * 5)
        cache.free("other")
    rolled.free("wait")
    assert snapshot(rolled) == snapshot(plain)


@pytest.mark.parametrize("twin", TWINS)
def test_reuse_counts_once_when_the_sequence_starts(twin):
    make, snapshot = TWINS[twin]
    cache = make()
    prompt = [1, 2, 3, 4, 5]
    run_seq(cache, "a", prompt)
    cache.free("a")
    before = snapshot(cache)
    assert max(reuse_counts(before)) == 0
    for _ in range(3):                            # waits three steps
        assert cache.admit("b", prompt) == 4
        cache.free("b")
    assert snapshot(cache) == before
    run_seq(cache, "b", prompt)                   # then runs
    cache.free("b")
    assert max(reuse_counts(snapshot(cache))) == 1, "one admission counted as several reuses"


# ---- a failed allocation changes nothing ----------------------------------------------------------

@pytest.mark.parametrize("make, snapshot", [
    (lambda: PagedKVCache(num_pages=8, page_size=2, prefix_caching=True, host_tier=HostTier(num_pages=8)),
     hash_snapshot),
    (lambda: RadixKVCache(num_pages=8, page_size=2, host_tier=HostTier(num_pages=8)), radix_snapshot),
    (lambda: RadixKVCache(num_pages=16, page_size=1, eviction=LFU(), host_tier=HostTier(num_pages=16)),
     radix_snapshot),
])
def test_failed_allocation_evicts_nothing(make, snapshot):
    cache = make()
    P, pages = cache.page_size, cache.allocator.num_pages
    cached = [[10 + i] * (2 * P) + [0] for i in range(2)]       # two cached prefixes, 2 pages each
    for i, prompt in enumerate(cached):
        run_seq(cache, f"c{i}", prompt)
        cache.free(f"c{i}")
    run_seq(cache, "live", [1] * (3 * P))
    before, matches = snapshot(cache), [cache.match_prefix(p) for p in cached]
    assert before[0].pages_cached >= 4 and min(matches) >= 2 * P
    too_many = (cache.num_available_pages() + 1) * P
    assert not cache.can_allocate("new", too_many)
    with pytest.raises(OutOfPagesError):
        cache.allocate("new", too_many)
    with pytest.raises(OutOfPagesError):
        cache.allocate("live", 3 * P + too_many)
    assert snapshot(cache) == before
    assert [cache.match_prefix(p) for p in cached] == matches, "a cached prefix was evicted"
    # Swapping in follows the same rule.
    cache.swap_out("live")
    run_seq(cache, "hog", [3] * ((pages - 2) * P))                 # evicts to fit, leaves 2 pages
    swapped = snapshot(cache)
    assert not cache.can_swap_in("live")
    with pytest.raises(OutOfPagesError):
        cache.swap_in("live")
    assert snapshot(cache) == swapped


def test_a_pending_admission_holds_its_node_for_itself_only():
    """A radix admission that has not started holds its matched node whole; the node's unmatched
    tail becomes evictable when that sequence starts, so it counts as room for that sequence's
    own allocation and for no other (which would evict other prefixes and then fail)."""
    cache = RadixKVCache(num_pages=10, page_size=1)
    long, short = list(range(100, 106)), [7, 8]
    for sid, prompt in (("a", long), ("z", short)):
        run_seq(cache, sid, prompt)
        cache.free(sid)
    assert cache.admit("b", long[:2] + [999, 998]) == 2            # holds long's 6-page node
    before = radix_snapshot(cache)
    assert cache.num_available_pages("b") == cache.num_available_pages() + 4
    assert not cache.can_allocate("c", 8) and not cache.try_allocate("c", 8)
    with pytest.raises(OutOfPagesError):
        cache.allocate("c", 8)
    assert radix_snapshot(cache) == before and "c" not in cache.block_table
    assert cache.match_prefix(short + [0]) == 2, "a cached prefix was evicted for nothing"
    assert cache.can_allocate("b", 8)                               # its own tail is room for it
    cache.allocate("b", 8)
    cache.free("b")
    assert cache.stats().pages_used == 0
