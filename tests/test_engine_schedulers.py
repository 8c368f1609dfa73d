"""Every scheduler in the engine: random traces over scheduler x policy x cache give the greedy
tokens of a one-request-at-a-time decode; the persistent scheduler compiles its step once over a
long varied trace; chunked prefill composes with the circular cache for prompts longer than its
step limit."""

from __future__ import annotations

import pytest
from conftest import examples
from hypothesis import given, settings
from hypothesis import strategies as st
from test_engine_property import reference, run_trace

import kvlab
from kvlab.engine import DenseReferenceDecoder
from kvlab.schedulers import (
    FCFS,
    ChunkedScheduler,
    ContinuousScheduler,
    LongestPrefixMatch,
    PersistentScheduler,
    Priority,
    ReserveAdmission,
    ShortestPromptFirst,
    StarvationGuard,
    SwapPreemption,
)

SYSTEM = list(range(11, 28))
POLICIES = [FCFS(), Priority(), ShortestPromptFirst(), LongestPrefixMatch(), StarvationGuard(FCFS(), 4)]


def make_cache(kind):
    return {"paged": lambda: kvlab.PagedKVCache(num_pages=24, page_size=4),
            "paged-prefix": lambda: kvlab.PagedKVCache(num_pages=24, page_size=4, prefix_caching=True),
            "radix": lambda: kvlab.RadixKVCache(num_pages=96, page_size=1),
            "contiguous": lambda: kvlab.ContiguousKVCache(num_slots=2, max_seq_len=48, page_size=4)}[kind]()


def make_scheduler(kind, policy, reserve):
    admission = ReserveAdmission() if reserve else None
    if kind == "continuous":
        return ContinuousScheduler(max_num_seqs=4, max_num_batched_tokens=64, policy=policy,
                                   admission=admission)
    if kind == "chunked":
        return ChunkedScheduler(max_num_seqs=4, max_num_batched_tokens=16, max_chunk_tokens=7, policy=policy,
                                admission=admission)
    return PersistentScheduler(num_slots=3, tokens_per_step=16, policy=policy, admission=admission)


@st.composite
def traces(draw):
    reqs = []
    for _ in range(draw(st.integers(1, 5))):
        head = SYSTEM[:draw(st.sampled_from([0, 9, 17]))]
        tail = draw(st.lists(st.integers(3, 255), min_size=1, max_size=12))
        reqs.append((head + tail, draw(st.integers(1, 8)), draw(st.integers(0, 5))))
    return (reqs, draw(st.sampled_from(["continuous", "chunked", "persistent"])),
            draw(st.sampled_from(range(len(POLICIES)))),
            draw(st.sampled_from(["paged", "paged-prefix", "radix", "contiguous"])),
            draw(st.booleans()))


@settings(max_examples=examples(20))
@given(traces())
def test_every_scheduler_equals_one_request_at_a_time(tiny_model, trace):
    reqs, kind, policy, cache_kind, reserve = trace
    cache = make_cache(cache_kind)
    engine = kvlab.Engine(tiny_model, cache=cache, scheduler=make_scheduler(kind, POLICIES[policy], reserve))
    for (prompt, max_tokens, _), got in zip(reqs, run_trace(engine, reqs)):
        assert got == reference(tiny_model, prompt, max_tokens), (kind, cache_kind)
    s = cache.stats()
    assert s.pages_used == 0 and s.pages_free + s.pages_cached == s.pages_total


def test_persistent_scheduler_compiles_once(tiny_model):
    import numpy as np

    sched = PersistentScheduler(num_slots=4, tokens_per_step=32)
    engine = kvlab.Engine(tiny_model, cache=kvlab.PagedKVCache(num_pages=64, page_size=8), scheduler=sched,
                          max_model_len=128)
    rng = np.random.default_rng(0)
    for _ in range(4):
        prompts = [rng.integers(3, 255, int(rng.integers(1, 70))).tolist()
                   for _ in range(int(rng.integers(1, 9)))]
        params = kvlab.SamplingParams(max_tokens=int(rng.integers(1, 24)), ignore_eos=True)
        outs = engine.generate(prompts, params)
        assert all(len(o.token_ids) > 0 for o in outs)
    assert engine.runner.steps > 40
    assert engine.num_compilations == 1


def test_chunked_prefill_lets_the_circular_cache_take_long_prompts(tiny_model):
    cache = kvlab.CircularKVCache(num_pages=32, page_size=4, window=8, num_sink_tokens=2, max_step_tokens=8)
    engine = kvlab.Engine(tiny_model, cache=cache, max_model_len=128,
                          scheduler=ChunkedScheduler(max_num_seqs=2, max_num_batched_tokens=16))
    prompts = [list(range(30, 70)), list(range(100, 125))]             # 40 and 25 > 8 tokens a step
    outs = engine.generate(prompts, kvlab.SamplingParams(max_tokens=20, ignore_eos=True))
    ref = DenseReferenceDecoder(tiny_model, options=engine.attention_options)
    for p, c in zip(prompts, outs):
        assert c.token_ids == ref.greedy(p, 20)
    assert cache.stats().pages_used == 0


@pytest.mark.parametrize("cache_kind", ["paged", "paged-prefix", "blocked", "radix"])
def test_swap_preemption_in_the_engine_is_exact(tiny_model, cache_kind):
    tier = kvlab.kvcache.HostTier
    cache = {"paged": lambda: kvlab.PagedKVCache(num_pages=10, page_size=4, host_tier=tier(64)),
             "paged-prefix": lambda: kvlab.PagedKVCache(num_pages=10, page_size=4, prefix_caching=True,
                                                        host_tier=tier(64)),
             "blocked": lambda: kvlab.BlockedKVCache(num_blocks=5, block_tokens=8, host_tier=tier(32)),
             "radix": lambda: kvlab.RadixKVCache(num_pages=40, page_size=1, host_tier=tier(256)),
             }[cache_kind]()
    sched = ContinuousScheduler(max_num_seqs=4, max_num_batched_tokens=64, preemption=SwapPreemption())
    engine = kvlab.Engine(tiny_model, cache=cache, scheduler=sched)
    prompts = [SYSTEM[:9] + [40 + i] for i in range(4)]
    outs = engine.generate(prompts, kvlab.SamplingParams(max_tokens=14, ignore_eos=True))
    for p, c in zip(prompts, outs):
        assert c.token_ids == reference(tiny_model, p, 14)
    assert sched.num_swapped_out > 0 and sched.num_swapped_out == sched.num_preemptions
    assert cache.host_tier.allocator.num_free == cache.host_tier.num_pages
    s = cache.stats()
    assert s.pages_used == 0 and s.pages_free + s.pages_cached == s.pages_total
