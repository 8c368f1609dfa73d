"""One host pool for swap and the prefix tiers (``kvlab.kvcache.tier_swap.SwapInTiers``): swapped
pages are held records of the first tier, planned as tier moves, counted once; cached prefix
records make room for them and held ones never do; a sequence that ends while away gives its
records back; the engine's greedy tokens equal a one-request-at-a-time decode."""

from __future__ import annotations

import pytest
from test_engine_property import reference

import kvlab
from kvlab.kvcache import HostTier, PagedKVCache, RadixKVCache, SwapInTiers, SwapSpace
from kvlab.kvcache.tiers import HostMemoryTier, TierChain
from kvlab.kvcache.tiers.moves import Demote, Load, Offload
from kvlab.schedulers.preemption import SwapPreemption


def _cache(first=4, second=None, **kwargs):
    tiers = [HostMemoryTier(num_pages=first)] + ([] if second is None else [HostMemoryTier(num_pages=second)])
    return PagedKVCache(num_pages=8, page_size=4, prefix_caching=True, tiers=TierChain(tiers=tiers),
                        host_tier=SwapInTiers(), **kwargs)


def _start(cache, seq, tokens):
    cache.admit(seq, tokens)
    cache.allocate(seq, len(tokens))


def test_both_swap_spaces_keep_the_contract():
    assert isinstance(SwapInTiers(), SwapSpace) and isinstance(HostTier(4), SwapSpace)


def test_swapped_pages_are_held_first_tier_records_moved_as_tier_moves():
    cache = _cache()
    _start(cache, "a", list(range(1, 11)))                           # 3 pages
    pages = cache.pages("a")
    assert cache.can_swap_out("a")
    assert cache.swap_out("a") == []                                 # no copies of its own
    moves = cache.drain_tier_moves()
    assert [m.page for m in moves] == pages and all(isinstance(m, Offload) for m in moves)
    first = cache.tiers.tiers[0]
    s = cache.stats()
    assert s.host_pages_used == 3 and s.host_pages_total == 4
    assert first.stats().pages_used == 3 and first.num_evictable() == 0      # held: never evicted
    slots = [m.slot for m in moves]
    assert cache.can_swap_in("a")
    assert cache.swap_in("a") == []
    back = cache.drain_tier_moves()
    assert [(m.slot, m.page) for m in back] == list(zip(slots, cache.pages("a")))
    assert all(isinstance(m, Load) for m in back)
    assert first.stats().pages_used == 0 and cache.stats().host_pages_used == 0
    counted = cache.stats().tiers
    assert (counted.swapped_out, counted.swapped_in, counted.released) == (3, 3, 0)
    assert counted.offloads == 0 and counted.loads_per_tier == (0,)     # prefix moves counted apart
    cache.free("a")
    assert cache.stats().pages_used == 0


def test_cached_records_make_room_for_swapped_pages_and_held_ones_do_not():
    cache = _cache(first=4, second=8)
    first = cache.tiers.tiers[0]
    for i in range(4):                                               # a first tier full of cached records
        first.reserve(("prefix", i))
    assert first.num_evictable() == 4
    _start(cache, "a", list(range(40, 51)))                          # 3 pages
    assert cache.can_swap_out("a")
    cache.swap_out("a")
    moves = cache.drain_tier_moves()
    assert sum(isinstance(m, Demote) for m in moves) == 3            # three prefix records go down
    assert first.num_evictable() == 1 and cache.stats().host_pages_used == 3
    _start(cache, "b", list(range(60, 71)))                          # 3 pages: only 1 evictable left
    assert not cache.can_swap_out("b")
    cache.free("a")                                                  # ended while away: records back
    assert cache.stats().host_pages_used == 0 and first.num_evictable() == 1
    assert cache.can_swap_out("b")


def test_a_swap_space_in_tiers_needs_tiers_and_one_cache():
    with pytest.raises(ValueError, match="needs tiers="):
        PagedKVCache(num_pages=8, page_size=4, host_tier=SwapInTiers())
    space = SwapInTiers()
    PagedKVCache(num_pages=8, page_size=4, prefix_caching=True, tiers=[HostMemoryTier(4)], host_tier=space)
    with pytest.raises(ValueError, match="serves one cache"):
        RadixKVCache(num_pages=8, page_size=4, tiers=[HostMemoryTier(4)], host_tier=space)


@pytest.mark.parametrize("cache_kind", ["paged", "blocked", "radix"])
def test_the_engine_swaps_into_the_first_tier_and_gives_the_same_tokens(tiny_model, cache_kind):
    size = 128 if cache_kind == "radix" else 16                     # radix: one token a page
    tiers = TierChain(tiers=[HostMemoryTier(num_pages=size), HostMemoryTier(num_pages=size)])
    cache = {"paged": lambda: kvlab.PagedKVCache(num_pages=10, page_size=4, prefix_caching=True, tiers=tiers,
                                                 host_tier=SwapInTiers()),
             "blocked": lambda: kvlab.BlockedKVCache(num_blocks=5, block_tokens=8, tiers=tiers,
                                                     host_tier=SwapInTiers()),
             "radix": lambda: kvlab.RadixKVCache(num_pages=40, page_size=1, tiers=tiers,
                                                 host_tier=SwapInTiers()),
             }[cache_kind]()
    sched = kvlab.ContinuousScheduler(max_num_seqs=4, max_num_batched_tokens=64, preemption=SwapPreemption())
    engine = kvlab.Engine(tiny_model, cache=cache, scheduler=sched)
    prompts = [list(range(11, 20)) + [40 + i] for i in range(4)]
    outs = engine.generate(prompts, kvlab.SamplingParams(max_tokens=14, ignore_eos=True))
    for p, c in zip(prompts, outs):
        assert c.token_ids == reference(tiny_model, p, 14)
    assert sched.num_swapped_out > 0
    s = cache.stats()
    assert s.pages_used == 0 and s.host_pages_used == 0
    assert all(t.num_evictable() == len(t) for t in cache.tiers.tiers), "a tier record is still held"


@pytest.mark.parametrize("space", [SwapInTiers, lambda: HostTier(16)])
def test_pages_a_plan_loads_are_not_swapped_out_in_that_plan(space):
    """A swap-out's pages are read before the plan's loads write theirs, so a sequence swapped
    in (or loaded from a tier) in this plan waits for the next one: refused with the reason."""
    cache = PagedKVCache(num_pages=8, page_size=4, prefix_caching=True, tiers=[HostMemoryTier(8)],
                         host_tier=space())
    _start(cache, "a", list(range(1, 10)))
    cache.swap_out("a")
    cache.drain_tier_moves()                                         # the next plan
    cache.swap_in("a")
    assert not cache.can_swap_out("a")
    with pytest.raises(ValueError, match="swap it out in a later plan"):
        cache.swap_out("a")
    cache.drain_tier_moves()                                         # the next plan
    assert cache.can_swap_out("a")
    cache.swap_out("a")
    cache.free("a")
    assert cache.stats().host_pages_used == 0
