"""Every cache of the family plugged into the engine unchanged: random request traces (shared
prefixes, a cache small enough to preempt) give the greedy tokens of a one-request-at-a-time
dense decode; a prefix hit gives the first token's logits of an uncached run; the circular cache
equals windowed attention over sequences several windows long, in constant memory."""

from __future__ import annotations

import jax
import numpy as np
import pytest
from conftest import examples
from flax import nnx
from hypothesis import given, settings
from hypothesis import strategies as st
from test_engine_property import reference, run_trace

import kvlab
from kvlab.engine import DenseReferenceDecoder
from kvlab.schedulers import Request, SamplingParams, ScheduledSeq, StepPlan, StepTable

SYSTEM = [11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 26, 27]


def make_cache(kind: str, page_size: int, num_pages: int):
    if kind == "paged":
        return kvlab.PagedKVCache(num_pages=num_pages, page_size=page_size)
    if kind == "paged-prefix":
        return kvlab.PagedKVCache(num_pages=num_pages, page_size=page_size, prefix_caching=True)
    if kind == "blocked":
        return kvlab.BlockedKVCache(num_blocks=num_pages, block_tokens=page_size)
    if kind == "radix":
        return kvlab.RadixKVCache(num_pages=num_pages * 2, page_size=page_size // 2)   # same tokens
    if kind == "contiguous":
        return kvlab.ContiguousKVCache(num_slots=max(1, num_pages * page_size // 64), max_seq_len=64,
                                       page_size=page_size)
    raise ValueError(kind)


KINDS = ["paged", "paged-prefix", "blocked", "radix", "contiguous"]


@st.composite
def shared_prefix_traces(draw):
    reqs = []
    for _ in range(draw(st.integers(1, 6))):
        head = SYSTEM[:draw(st.sampled_from([0, 8, 17]))]
        tail = draw(st.lists(st.integers(3, 255), min_size=1, max_size=14))
        reqs.append((head + tail, draw(st.integers(1, 10)), draw(st.integers(0, 5))))
    kind = draw(st.sampled_from(KINDS))
    page_size = draw(st.sampled_from([4, 8]))
    num_pages = draw(st.sampled_from([1, 3])) * 64 // page_size      # 64 or 192 tokens
    return reqs, kind, page_size, num_pages, draw(st.sampled_from([2, 4]))


@settings(max_examples=examples(20))
@given(shared_prefix_traces())
def test_every_cache_equals_one_request_at_a_time(tiny_model, trace):
    reqs, kind, page_size, num_pages, max_num_seqs = trace
    cache = make_cache(kind, page_size, num_pages)
    engine = kvlab.Engine(tiny_model, cache=cache,
                          scheduler=kvlab.ContinuousScheduler(max_num_seqs=max_num_seqs,
                                                              max_num_batched_tokens=64))
    outputs = run_trace(engine, reqs)
    for (prompt, max_tokens, _), got in zip(reqs, outputs):
        assert got == reference(tiny_model, prompt, max_tokens), kind
    stats = cache.stats()
    assert stats.pages_used == 0 and stats.pages_free + stats.pages_cached == stats.pages_total


@pytest.mark.parametrize("kind, page_size", [("paged-prefix", 4), ("blocked", 8), ("radix", 2),
                                             ("radix", 8)])
def test_prefix_hits_under_preemption_stay_exact(tiny_model, kind, page_size):
    cache = make_cache(kind, page_size, 64 // page_size)       # 64 tokens for 6 x 29
    sched = kvlab.ContinuousScheduler(max_num_seqs=6, max_num_batched_tokens=128)
    engine = kvlab.Engine(tiny_model, cache=cache, scheduler=sched)
    prompts = [SYSTEM + [30 + i, 40 + i] for i in range(6)]
    outs = engine.generate(prompts, kvlab.SamplingParams(max_tokens=10, ignore_eos=True))
    for p, c in zip(prompts, outs):
        assert c.token_ids == reference(tiny_model, p, 10)
    s = cache.stats()
    assert s.prefix_hit_tokens > 0 and sched.num_preemptions > 0
    assert 0.3 < s.memory.stored < 1.0
    assert s.pages_used == 0 and s.pages_free + s.pages_cached == s.pages_total


def first_token_logits(engine, request: Request) -> tuple[np.ndarray, int]:
    """Admit ``request`` into the engine's cache and run its prefill through the model directly;
    returns (logits of its next token [V], tokens reused from the cache)."""
    cache, runner = engine.cache, engine.runner
    hit = cache.admit(request.request_id, request.tokens)
    cache.allocate(request.request_id, request.num_tokens)
    seqs = [ScheduledSeq(request, hit, request.num_tokens - hit)]
    batch, _ = runner.pack(StepPlan(seqs, table=StepTable.build(cache, seqs)))

    @jax.jit
    def forward(state, storage, batch):
        return nnx.merge(runner.statics.graphdef, state)(batch, storage, runner.attention, runner.options)

    logits, engine.executor.storage = forward(runner.state, engine.storage, batch)
    cache.free(request.request_id)
    return np.asarray(logits[0]), hit


@pytest.mark.parametrize("kind", ["paged-prefix", "blocked", "radix"])
def test_prefix_hit_gives_the_uncached_logits(tiny_model, kind):
    prompt = SYSTEM + [90, 91, 92]
    warm = kvlab.Engine(tiny_model, cache=make_cache(kind, 4, 64))
    warm.generate([SYSTEM + [50, 51]], SamplingParams(max_tokens=2))
    cold = kvlab.Engine(tiny_model, cache=make_cache("paged", 4, 64))
    hit_logits, hit = first_token_logits(warm, Request("b", prompt, SamplingParams()))
    cold_logits, none = first_token_logits(cold, Request("b", prompt, SamplingParams()))
    assert hit == 16 and none == 0
    np.testing.assert_allclose(hit_logits, cold_logits, rtol=1e-5, atol=1e-5)
    dense = np.asarray(tiny_model.dense_logits(np.asarray(prompt, np.int32))[-1])
    np.testing.assert_allclose(hit_logits, dense, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("window, sinks", [(8, 0), (8, 3), (13, 4)])
def test_circular_cache_equals_windowed_attention(tiny_model, window, sinks):
    cache = kvlab.CircularKVCache(num_pages=64, page_size=4, window=window, num_sink_tokens=sinks,
                                  max_step_tokens=16)
    sched = kvlab.ContinuousScheduler(max_num_seqs=3, max_num_batched_tokens=64)
    engine = kvlab.Engine(tiny_model, cache=cache, scheduler=sched, max_model_len=128)
    prompts = [list(range(30, 44)), [7, 9, 11], list(range(100, 116))]
    params = kvlab.SamplingParams(max_tokens=44, ignore_eos=True)      # ~60 tokens: >= 4 windows
    outputs = {p[0]: [] for p in prompts}
    ids = {engine.add_request(p, params): p[0] for p in prompts}
    while engine.has_unfinished():
        for ev in engine.step():
            outputs[ids[ev.request_id]] += ev.new_token_ids
        s = cache.stats()
        assert s.pages_used == s.num_seqs * cache.pages_per_seq      # constant per sequence
    windowed = DenseReferenceDecoder(tiny_model, options=engine.attention_options)
    full = DenseReferenceDecoder(tiny_model)
    differs = False
    for p in prompts:
        expected = windowed.greedy(p, 44)
        assert outputs[p[0]] == expected
        differs |= expected != full.greedy(p, 44)
    assert differs, "the window never changed the output: the test would not see a wrong mask"
    assert engine.attention_options.sliding_window == window
    assert engine.attention_options.num_sink_tokens == sinks
    assert cache.stats().pages_used == 0


def test_circular_window_larger_than_context_is_rejected(tiny_model):
    with pytest.raises(ValueError, match="larger than the model's context of 64"):
        kvlab.Engine(tiny_model, cache=kvlab.CircularKVCache(num_pages=64, page_size=4, window=100),
                     max_model_len=64)


def test_prompt_longer_than_a_circular_step_is_rejected_unless_chunked(tiny_model):
    """Whole-prompt prefill cannot put 10 tokens through a cache taking 8 a step; the default
    (chunked) scheduler splits the prompt and serves it."""
    def engine(scheduler):
        return kvlab.Engine(tiny_model, cache=kvlab.CircularKVCache(num_pages=64, page_size=4, window=8,
                                                                    max_step_tokens=8), scheduler=scheduler)
    with pytest.raises(ValueError, match="max_step_tokens=8"):
        engine(kvlab.ContinuousScheduler()).add_request(list(range(3, 13)))
    out = engine(None).generate([list(range(3, 13))], SamplingParams(max_tokens=2, ignore_eos=True))[0]
    assert len(out.token_ids) == 2


def test_salted_requests_do_not_share(tiny_model):
    cache = kvlab.RadixKVCache(num_pages=256, page_size=1)
    engine = kvlab.Engine(tiny_model, cache=cache)
    params = SamplingParams(max_tokens=2)
    for salt in ["alice", "bob", "alice"]:
        engine.add_request(SYSTEM + [5], params, cache_salt=salt)
        while engine.has_unfinished():
            engine.step()
    assert cache.stats().prefix_hit_tokens == len(SYSTEM)      # only alice's second request hit


@pytest.mark.parametrize("kind", ["paged-prefix", "radix", "blocked"])
def test_abort_mid_flight_frees_everything_and_others_go_on(tiny_model, kind):
    cache = make_cache(kind, 4, 48)
    engine = kvlab.Engine(tiny_model, cache=cache,
                          scheduler=kvlab.ContinuousScheduler(max_num_seqs=4, max_num_batched_tokens=128))
    params = SamplingParams(max_tokens=12, ignore_eos=True)
    keep = [SYSTEM + [60], SYSTEM + [61, 62]]
    ids = [engine.add_request(p, params) for p in keep]
    doomed = engine.add_request(SYSTEM + [63, 64, 65], params)
    got = {i: [] for i in ids}
    for step in range(20):
        if step == 4:
            engine.abort(doomed)
            engine.abort(doomed)                  # aborting it again changes nothing
        for ev in engine.step():
            ended = ev.finish_reason == "abort" and not ev.new_token_ids
            assert ev.request_id != doomed or step < 4 or ended
            if ev.request_id in got:
                got[ev.request_id] += ev.new_token_ids
        if not engine.has_unfinished():
            break
    for rid, p in zip(ids, keep):
        assert got[rid] == reference(tiny_model, p, 12)
    s = cache.stats()
    assert s.num_seqs == 0 and s.pages_used == 0 and s.pages_free + s.pages_cached == s.pages_total
