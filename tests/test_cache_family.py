"""Each cache of the family on its own (host side): prefix reuse rules, eviction order by policy,
salts, the memory ledger, circular and contiguous layouts, leaks and bad arguments."""

from __future__ import annotations

import numpy as np
import pytest

from kvlab.kvcache import (
    LFU,
    LRU,
    BlockedKVCache,
    CircularKVCache,
    ContiguousKVCache,
    MemoryLedger,
    OutOfPagesError,
    PagedKVCache,
    PriorityLRU,
    RadixKVCache,
)

PREFIX_CACHES = {
    "paged-hash": lambda n, policy=None: PagedKVCache(num_pages=n, page_size=4, prefix_caching=True,
                                                      eviction=policy),
    "blocked": lambda n, policy=None: BlockedKVCache(num_blocks=n, block_tokens=4, eviction=policy),
    "radix": lambda n, policy=None: RadixKVCache(num_pages=n, page_size=4, eviction=policy),
}
ALL_CACHES = {
    **PREFIX_CACHES,
    "paged": lambda n, policy=None: PagedKVCache(num_pages=n, page_size=4),
    "radix-1": lambda n, policy=None: RadixKVCache(num_pages=4 * n, page_size=1, eviction=policy),
    "contiguous": lambda n, policy=None: ContiguousKVCache(num_slots=n // 8, max_seq_len=32, page_size=4),
    "circular": lambda n, policy=None: CircularKVCache(num_pages=n, page_size=4, window=8,
                                                      num_sink_tokens=2, max_step_tokens=16),
}


def run(cache, seq, tokens, *, salt=None, priority=0, keep=False, readmission=False):
    """Admit, compute and (unless keep) free one sequence the way a scheduler does."""
    hit = cache.admit(seq, tokens, salt=salt, priority=priority, readmission=readmission)
    cache.allocate(seq, len(tokens))
    cache.commit(seq, tokens, len(tokens))
    if not keep:
        cache.free(seq)
    return hit


@pytest.mark.parametrize("kind", PREFIX_CACHES)
def test_hit_is_whole_pages_and_never_the_last_token(kind):
    cache = PREFIX_CACHES[kind](32)
    prompt = list(range(10, 26))                       # exactly 4 pages
    assert run(cache, "a", prompt) == 0
    assert cache.match_prefix(prompt) == 16
    assert run(cache, "b", prompt) == 12               # the last page is recomputed for its logits
    assert run(cache, "c", prompt[:10] + [99]) == 8    # page-aligned partial match
    assert run(cache, "d", [1] + prompt) == 0          # a prefix, not a substring
    s = cache.stats()
    assert s.prefix_hit_tokens == 20 and s.prompt_tokens == 16 + 16 + 11 + 17
    assert s.hit_rate == pytest.approx(20 / 60)


@pytest.mark.parametrize("kind", PREFIX_CACHES)
def test_salts_keep_namespaces_apart(kind):
    cache = PREFIX_CACHES[kind](32)
    prompt = list(range(40, 53))
    run(cache, "a", prompt, salt="tenant-1")
    assert cache.match_prefix(prompt, salt="tenant-2") == 0 and cache.match_prefix(prompt) == 0
    assert run(cache, "b", prompt, salt="tenant-2") == 0
    assert run(cache, "c", prompt, salt="tenant-1") == 12


@pytest.mark.parametrize("kind", PREFIX_CACHES)
def test_shared_prefix_is_stored_once_while_in_use(kind):
    cache = PREFIX_CACHES[kind](32)
    system = list(range(100, 116))
    run(cache, "warm", system + [1])
    for i in range(4):
        assert run(cache, f"q{i}", system + [i, i, i], keep=True) == 16
    pages = [cache.pages(f"q{i}") for i in range(4)]
    assert all(p[:4] == pages[0][:4] for p in pages)                 # one copy of the prefix
    assert len({x for p in pages for x in p}) == 4 + 4                # + one private page each
    assert cache.stats().pages_used == 8


@pytest.mark.parametrize("kind", PREFIX_CACHES)
def test_a_running_prefill_is_shared_at_once(kind):
    """A prompt step that completes a page indexes it while its sequence runs (vLLM's hash per
    full block, SGLang's cache_unfinished_req), so a request beside it hits that page; its one-
    token decode steps add nothing until a page fills (hash) or it is freed (radix)."""
    cache = PREFIX_CACHES[kind](32)
    prompt = list(range(200, 206))                                # one full page and two tokens
    run(cache, "a", prompt, keep=True)
    assert cache.match_prefix(prompt + [1]) == 4
    assert run(cache, "b", prompt[:4] + [7, 7]) == 4
    cache.allocate("a", 8)
    cache.commit("a", prompt + [9, 9], 8)                         # two decode steps fill page 2
    expected = 4 if kind == "radix" else 8
    assert cache.match_prefix(prompt + [9, 9, 1]) == expected
    cache.free("a")
    assert cache.match_prefix(prompt + [9, 9, 1]) == 8


def fill(cache, names, priority=0):
    for i, name in enumerate(names):
        run(cache, name, [1000 + 10 * i + j for j in range(5)], priority=priority)   # 1 full page each


@pytest.mark.parametrize("kind", PREFIX_CACHES)
def test_lru_evicts_least_recently_used(kind):
    cache = PREFIX_CACHES[kind](4, LRU())
    fill(cache, ["a", "b", "c"])                       # pages cached: a, b, c (oldest first)
    run(cache, "a2", [1000, 1001, 1002, 1003, 7])      # reuse a: now b is the oldest
    cache.admit("big", [5] * 13)
    cache.allocate("big", 13)                          # needs 4 pages: evicts everything unused...
    assert cache.stats().evictions == 3
    cache.free("big")
    cache2 = PREFIX_CACHES[kind](5, LRU())
    fill(cache2, ["a", "b", "c"])
    run(cache2, "a2", [1000, 1001, 1002, 1003, 7])
    cache2.admit("x", [5] * 9)
    cache2.allocate("x", 9)                            # 3 pages: 2 free + 1 evicted: b
    assert cache2.match_prefix([1010, 1011, 1012, 1013]) == 0
    assert cache2.match_prefix([1000, 1001, 1002, 1003]) == 4
    assert cache2.match_prefix([1020, 1021, 1022, 1023]) == 4


@pytest.mark.parametrize("kind", PREFIX_CACHES)
def test_lfu_keeps_the_frequently_reused(kind):
    cache = PREFIX_CACHES[kind](5, LFU())
    fill(cache, ["a", "b", "c"])
    for _ in range(3):
        run(cache, "b2", [1010, 1011, 1012, 1013, 7])  # b reused 3 times, most recently
    run(cache, "a2", [1000, 1001, 1002, 1003, 7])      # a reused once, most recently of all
    cache.admit("x", [5] * 9)
    cache.allocate("x", 9)                             # evicts c (never reused), then
    assert cache.match_prefix([1020, 1021, 1022, 1023]) == 0
    assert cache.match_prefix([1000, 1001, 1002, 1003]) == 4
    cache.allocate("x", 13)                            # a (fewer hits than b), though newer
    assert cache.match_prefix([1000, 1001, 1002, 1003]) == 0
    assert cache.match_prefix([1010, 1011, 1012, 1013]) == 4


@pytest.mark.parametrize("kind", PREFIX_CACHES)
def test_priority_lru_evicts_low_priority_first(kind):
    cache = PREFIX_CACHES[kind](5, PriorityLRU())
    run(cache, "hi", [2000, 2001, 2002, 2003, 1], priority=5)
    fill(cache, ["a", "b"])                            # priority 0, newer than "hi"
    cache.admit("x", [5] * 13)
    cache.allocate("x", 13)                            # 4 pages: 2 free + a + b; "hi" survives
    assert cache.match_prefix([2000, 2001, 2002, 2003]) == 4
    assert cache.stats().evictions == 2


def assert_cheap_stats_agree(cache):
    """``stats(detailed=False)`` (what a per-step monitor asks) has the same counts, without the
    per-sequence walks."""
    full, cheap = cache.stats(), cache.stats(detailed=False)
    for f in ("pages_total", "pages_used", "pages_free", "pages_cached", "num_seqs", "prompt_tokens",
              "prefix_hit_tokens", "evictions"):
        assert getattr(cheap, f) == getattr(full, f), f
    assert cheap.tokens_stored == 0 and cheap.memory.stored == 0.0


@pytest.mark.parametrize("kind", ALL_CACHES)
def test_every_page_returns_when_all_sequences_end(kind):
    cache = ALL_CACHES[kind](64)
    rng = np.random.default_rng(0)
    live = {}
    for step in range(300):
        if live and rng.random() < 0.3:
            cache.free(live.pop(rng.choice(sorted(live))))
            continue
        seq = f"s{step}"
        tokens = list(rng.integers(0, 4, size=int(rng.integers(1, 16))))
        cache.admit(seq, tokens)
        if cache.can_allocate(seq, len(tokens)):
            cache.allocate(seq, len(tokens))
            cache.commit(seq, tokens, len(tokens))
            live[seq] = seq
            for _ in range(int(rng.integers(0, 8))):
                if not cache.can_allocate(seq, len(tokens) + 1):
                    break
                tokens.append(int(rng.integers(0, 4)))
                cache.allocate(seq, len(tokens))
                cache.commit(seq, tokens, len(tokens))
        else:
            cache.free(seq)
        cache.tick()
        if step % 25 == 0:
            assert_cheap_stats_agree(cache)
    for seq in list(live):
        cache.free(seq)
    assert_cheap_stats_agree(cache)
    s = cache.stats()
    assert s.num_seqs == 0 and s.pages_used == 0 and s.tokens_stored == 0
    assert s.pages_free + s.pages_cached == s.pages_total, f"{kind} leaked pages"
    assert abs(sum([s.memory.stored, s.memory.reserved, s.memory.internal, s.memory.external,
                    s.memory.cached, s.memory.free]) - 1.0) < 1e-9


def test_ledger_tells_reserved_from_internal():
    led = MemoryLedger(total_slots=100, external_slots=4)
    led.update("a", allocated=32, stored=8)             # static region of 32, ends at 16 tokens
    for stored in range(9, 17):
        led.tick()
        led.update("a", allocated=32, stored=stored)
    led.tick()
    led.end("a")
    b = led.breakdown()
    # 9 ticks: stored 8..16 (sum 108); fillable min(32, 16) = 16 per tick (144); held 288.
    assert b.stored == pytest.approx(108 / 900)
    assert b.reserved == pytest.approx((144 - 108) / 900)
    assert b.internal == pytest.approx((288 - 144) / 900)
    assert b.external == pytest.approx(0.04)
    assert b.waste == pytest.approx(1 - 108 / (288 + 36))


def test_paged_waste_is_the_last_page_and_static_waste_is_the_region():
    paged, static = PagedKVCache(num_pages=64, page_size=16), ContiguousKVCache(num_slots=4, max_seq_len=256)
    for cache in (paged, static):
        for s in range(4):
            cache.allocate(s, 100)
        for n in range(101, 141):                       # every sequence ends at 140 tokens
            cache.tick()
            for s in range(4):
                cache.allocate(s, n)
        cache.tick()
        for s in range(4):
            cache.free(s)
    assert paged.stats().memory.stored == static.stats().memory.stored    # the same tokens
    assert paged.stats().memory.waste < 0.07                               # last-page slack only
    assert static.stats().memory.waste > 0.5
    assert static.stats().memory.internal > static.stats().memory.reserved


def test_circular_memory_per_sequence_is_constant():
    cache = CircularKVCache(num_pages=20, page_size=4, window=8, num_sink_tokens=3, max_step_tokens=8)
    cache.allocate("a", 6)
    held = cache.stats().pages_used
    for n in range(7, 200):
        cache.allocate("a", n)
        table = cache.pages("a")
        assert len(table) == -(-n // 4) and set(table) <= set(table[:cache.pages_per_seq])
        assert cache.stats().pages_used == held == cache.pages_per_seq
    # The last `window` positions and the sinks live in distinct slots.
    slots = [table[j // 4] * 4 + j % 4 for j in [0, 1, 2] + list(range(199 - 8 - 8, 199))]
    assert len(set(slots)) == len(slots)
    cache.free("a")
    assert cache.stats().pages_used == 0


def test_circular_and_contiguous_bad_arguments(tiny_model):
    with pytest.raises(ValueError, match="needs 7 pages"):
        CircularKVCache(num_pages=6, page_size=4, window=16, max_step_tokens=12)
    with pytest.raises(ValueError, match="power of two"):
        CircularKVCache(num_pages=6, page_size=6, window=16)
    cache = CircularKVCache(num_pages=16, page_size=4, window=8, max_step_tokens=8)
    with pytest.raises(ValueError, match="max_step_tokens=8"):
        cache.validate_request(prompt_tokens=9, step_tokens=9, total_tokens=20)
    cache.allocate("a", 4)
    with pytest.raises(ValueError, match="grows by 9 tokens"):
        cache.allocate("a", 13)
    # can_allocate says no to what allocate would refuse, so try_allocate answers False.
    assert not cache.can_allocate("a", 13) and not cache.try_allocate("a", 13)
    assert not cache.can_allocate("a", 3) and not cache.can_allocate("new", 9)
    assert cache.can_allocate("a", 12) and cache.try_allocate("new", 8)
    with pytest.raises(ValueError, match="larger than the model's context"):
        CircularKVCache(num_pages=300, page_size=4, window=600).attention_options(
            tiny_model.attention_options, 512)
    with pytest.raises(ValueError, match="smaller than one request"):
        ContiguousKVCache.for_tokens(100, max_seq_len=128)
    with pytest.raises(ValueError, match="multiple of page_size"):
        ContiguousKVCache(num_slots=2, max_seq_len=100, page_size=16)
    static = ContiguousKVCache(num_slots=1, max_seq_len=64, page_size=16)
    with pytest.raises(ValueError, match="max_seq_len=64"):
        static.validate_request(prompt_tokens=10, step_tokens=10, total_tokens=65)
    static.allocate("a", 10)
    assert not static.can_allocate("b", 1)
    with pytest.raises(OutOfPagesError, match="no free region"):
        static.allocate("b", 1)
    with pytest.raises(ValueError, match="power of two"):
        RadixKVCache(num_pages=8, page_size=3)
    with pytest.raises(ValueError, match="power of two"):
        BlockedKVCache(num_blocks=8, block_tokens=48)
    with pytest.raises(ValueError, match="already in the cache"):
        prefix = PagedKVCache(num_pages=8, page_size=4, prefix_caching=True)
        prefix.admit("a", [1, 2])
        prefix.admit("a", [1, 2])


@pytest.mark.parametrize("kind", PREFIX_CACHES)
def test_readmissions_are_counted_apart(kind):
    cache = PREFIX_CACHES[kind](32)
    prompt = list(range(10, 26))
    run(cache, "a", prompt)
    cache.admit("b", prompt + [1, 2], readmission=True)      # waits: rolled back, not counted
    cache.free("b")
    assert run(cache, "b", prompt + [1, 2], readmission=True) == 16
    s = cache.stats()
    assert (s.prompt_tokens, s.prefix_hit_tokens, s.hit_rate) == (16, 0, 0.0)
    assert (s.readmitted_prompt_tokens, s.readmitted_hit_tokens) == (18, 16)
    assert run(cache, "c", prompt) == 12
    s = cache.stats()
    assert (s.prompt_tokens, s.prefix_hit_tokens) == (32, 12) and s.readmitted_prompt_tokens == 18
    assert_cheap_stats_agree(cache)


@pytest.mark.parametrize("kind", ALL_CACHES)
def test_reset_prefix_cache_is_refused_while_sequences_live(kind):
    cache = ALL_CACHES[kind](64)
    prompt = list(range(1, 10))
    run(cache, "a", prompt, keep=True)
    before, table = cache.stats(), cache.pages("a")
    assert cache.reset_prefix_cache() is False
    assert cache.stats() == before and cache.pages("a") == table
    cache.free("a")
    cached = cache.match_prefix(prompt)
    assert cached == (8 if kind in PREFIX_CACHES else 9 if kind == "radix-1" else 0)
    evictions = cache.stats().evictions
    assert cache.reset_prefix_cache() is True
    s = cache.stats()
    assert s.pages_cached == 0 and s.pages_free == s.pages_total and s.evictions == evictions
    assert cache.match_prefix(prompt) == 0 and run(cache, "b", prompt) == 0
    run(cache, "c", prompt)                                  # indexes again after a reset
    assert cache.match_prefix(prompt) == cached


@pytest.mark.parametrize("kind", ALL_CACHES)
def test_caches_without_a_host_tier_cannot_swap(kind):
    cache = ALL_CACHES[kind](64)
    run(cache, "a", [1, 2, 3], keep=True)
    assert cache.host_tier is None
    assert cache.stats().host_pages_total == cache.stats().host_pages_used == 0
    assert not cache.can_swap_out("a") and not cache.can_swap_in("a")
    with pytest.raises(RuntimeError, match="no host tier"):
        cache.swap_out("a")
    with pytest.raises(RuntimeError, match="no host tier"):
        cache.swap_in("a")
    step = cache.max_step_tokens
    assert step is None if kind != "circular" else step == 16

