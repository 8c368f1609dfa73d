"""KIVI 2-bit KV (keys per channel over a page, values per token, unfilled pages in full precision):
the codec's error bounds, the storage's staging and sealing, the host bookkeeping of staged pages,
and the engine: any schedule (whole prompts, small chunks, prefix reuse, batching, sealed pages
offloaded to host and disk tiers and loaded back) gives the tokens of a one-request-at-a-time
dense decode that reads K/V by KIVI's rule, and frees every page; what cannot hold KIVI pages
says so."""

from __future__ import annotations

import pathlib
import tempfile

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import kvlab
from kvlab.engine import DenseReferenceDecoder
from kvlab.kvcache import SwapInTiers
from kvlab.kvcache.formats import AsymmetricInt, Kivi, bytes_per_token
from kvlab.kvcache.kivi_storage import KiviPagedKVStorage
from kvlab.kvcache.tiers import DiskTier, HostMemoryTier, TierChain, WriteBackOnEviction, WriteThrough
from kvlab.models import LlamaModel, ModelConfig

G = 8
FMT = Kivi(bits=2, group_size=G, staging_pages=12)


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), bits=st.sampled_from([2, 4]), scale=st.floats(0.01, 50.0))
def test_round_trip_error_is_half_a_step_per_channel_and_per_token(seed, bits, scale):
    fmt = Kivi(bits=bits, group_size=G)
    k, v = scale * jax.random.normal(jax.random.key(seed), (2, 3, G, 2, 16))
    k2, v2 = fmt.round_trip(k, v, jnp.float32)
    levels = 2**bits - 1
    k_step = (k.max(axis=-3, keepdims=True) - k.min(axis=-3, keepdims=True)) / levels   # per channel
    v_step = (v.max(axis=-1, keepdims=True) - v.min(axis=-1, keepdims=True)) / levels   # per token
    slack = 2e-3 * scale                                      # float16 rounding of scale and zero
    assert bool((jnp.abs(k2 - k) <= k_step / 2 + slack).all())
    assert bool((jnp.abs(v2 - v) <= v_step / 2 + slack).all())


def test_keys_with_an_outlier_channel_keep_their_other_channels():
    """KIVI's reason to quantize keys per channel: one large channel does not cost the others."""
    k = jax.random.normal(jax.random.key(0), (G, 4, 64)).at[..., 5].multiply(40.0)
    per_channel, _ = FMT.round_trip(k, k, jnp.float32)
    ints = AsymmetricInt(bits=2)
    per_token = ints.decode(*ints.encode(k, jnp.ones(4)), jnp.ones(4), jnp.float32)
    others = jnp.arange(64) != 5
    err_kivi = float(jnp.abs(per_channel - k)[..., others].mean())
    err_token = float(jnp.abs(per_token - k)[..., others].mean())
    assert err_kivi < 0.3 * err_token


def test_storage_reads_staging_pages_in_full_precision_until_sealed():
    s = KiviPagedKVStorage.zeros(FMT, num_layers=2, num_pages=4, page_size=G, num_kv_heads=2, head_dim=16,
                                 dtype=jnp.float32)
    k, v = jax.random.normal(jax.random.key(1), (2, G, 2, 16))
    staging = s.num_sealed + 3
    s = s.write(1, k, v, staging * G + jnp.arange(G))
    s = s.write(1, k, v, jnp.full(G, 2 * G))                  # sealed pages are never written in place
    assert not bool(s.k.any())
    pages = jnp.array([staging, staging])
    fk, fv = s.gather_pages(1, pages, whole=jnp.array([False, True]))
    qk, qv = FMT.round_trip(k, v, jnp.float32)
    assert bool((fk[0] == k).all() and (fv[0] == v).all())
    assert bool((fk[1] == qk).all() and (fv[1] == qv).all())
    s = s.seal_pages(jnp.array([staging, 0]), jnp.array([2, s.num_pages]))     # second pair: padding
    sk, sv = s.gather_pages(1, jnp.array([2]))
    assert bool((sk[0] == qk).all() and (sv[0] == qv).all())  # sealed reads as the whole read before
    assert s.k.dtype == jnp.uint8 and s.k_meta.shape == (2, 4, 2, 2, 16)


def test_a_growing_sequence_seals_each_page_once_its_step_has_run():
    cache = kvlab.PagedKVCache(num_pages=6, page_size=G, kv_format=FMT)
    n_sealed = cache.allocator.num_pages
    cache.admit("a", list(range(20)))
    cache.allocate("a", 20)                                  # 3 pages, all staged
    assert all(p >= n_sealed for p in cache.pages("a")) and cache.drain_seals() == []
    assert cache.allocator.num_free == 3                     # sealed pages reserved up front
    cache.allocate("a", 21)                                  # the 2 full pages seal now
    seals = cache.drain_seals()
    assert [d for _, d in seals] == cache.pages("a")[:2] and all(d < n_sealed for _, d in seals)
    assert cache.pages("a")[2] >= n_sealed and cache.writes.num_free(None, 0) == FMT.staging_pages - 1
    cache.free("a")
    assert cache.allocator.num_free == 6 and cache.writes.num_free(None, 0) == FMT.staging_pages
    assert cache.drain_seals() == []                         # no prefix caching: unfilled pages just go


def test_a_swap_out_seals_the_full_pages_moves_them_and_drops_the_unfilled_one():
    cache = kvlab.PagedKVCache(num_pages=6, page_size=G, kv_format=FMT, host_tier=kvlab.HostTier(num_pages=4))
    n_sealed = cache.allocator.num_pages
    cache.admit("a", list(range(20)))
    cache.allocate("a", 20)                                  # 3 pages, all staged
    assert cache.swap_keeps("a", 20) == 2 * G and cache.swap_keeps("a", 7) == 0
    copies = cache.swap_out("a", keep_tokens=2 * G)
    seals = cache.drain_seals()                              # sealed before the copies are made
    assert [d for _, d in seals] == [d for d, _ in copies] and all(d < n_sealed for d, _ in copies)
    assert cache.allocator.num_free == 6 and cache.writes.num_free(None, 0) == FMT.staging_pages
    assert cache.num_tokens("a") == 2 * G and cache.stats().host_pages_used == 2
    back = cache.swap_in("a")
    assert len(back) == 2 and cache.pages("a") == [d for _, d in back]
    cache.allocate("a", 21)                                  # the dropped page: staged afresh
    assert cache.pages("a")[2] >= n_sealed and cache.stats().host_pages_used == 0
    cache.drain_tier_moves()                                 # the plan is made: its loads are behind it
    for bad in (30, 12, 0):                                  # beyond its tokens; part of a page; none
        with pytest.raises(ValueError, match=f"cannot keep {bad} "):
            cache.swap_out("a", keep_tokens=bad)
    assert len(cache.swap_out("a")) == 2 and cache.num_tokens("a") == 2 * G   # default: what it may keep
    cache.free("a")
    assert cache.allocator.num_free == 6 and cache.writes.num_free(None, 0) == FMT.staging_pages


def test_a_sequence_shorter_than_a_page_is_not_swapped_but_recomputed():
    cache = kvlab.PagedKVCache(num_pages=6, page_size=G, kv_format=FMT, host_tier=kvlab.HostTier(num_pages=4))
    cache.admit("a", list(range(5)))
    cache.allocate("a", 5)
    assert not cache.can_swap_out("a")                       # a swap would keep nothing
    req = kvlab.schedulers.Request("a", list(range(5)), kvlab.SamplingParams(max_tokens=4))
    req.num_computed_tokens = 5
    done = kvlab.schedulers.SwapPreemption().preempt(req, cache)
    assert done.status is kvlab.schedulers.RequestStatus.WAITING and req.num_computed_tokens == 0
    assert cache.allocator.num_free == 6 and cache.writes.num_free(None, 0) == FMT.staging_pages


def test_pages_sealed_for_a_swap_are_reusable_as_after_free():
    tokens = list(range(1, 21))
    cache = kvlab.PagedKVCache(num_pages=8, page_size=G, kv_format=FMT, prefix_caching=True,
                               host_tier=kvlab.HostTier(num_pages=8))
    cache.admit("a", tokens)
    cache.allocate("a", 20)
    cache.commit("a", tokens, 20)
    cache.swap_out("a", keep_tokens=cache.swap_keeps("a", 20))
    assert cache.match_prefix(tokens + [99]) == 2 * G and cache.stats().pages_cached == 2


def test_prefix_caching_indexes_pages_once_sealed_and_reuses_them():
    cache = kvlab.PagedKVCache(num_pages=8, page_size=G, prefix_caching=True, kv_format=FMT)
    prompt = list(range(2 * G + 3))
    cache.admit("a", prompt)
    cache.allocate("a", len(prompt))
    cache.commit("a", prompt, len(prompt))
    assert cache.match_prefix(prompt) == 0                   # full but staged: not yet reusable
    cache.free("a")                                          # sealed on the way out, then indexed
    assert len(cache.drain_seals()) == 2
    assert cache.match_prefix(prompt) == 2 * G and cache.writes.num_free(None, 0) == FMT.staging_pages


@pytest.fixture(scope="module")
def model():
    return LlamaModel(ModelConfig.tiny(), seed=3)


def serve(model, prompts, max_tokens, *, chunk, prefix_caching, max_num_seqs=3, steps_ahead=1, swap_pages=0,
          swap_in_tiers=False):
    """Greedy outputs through a KIVI cache; ``swap_pages``: that few device pages, preemption by
    swap to a host tier (else 40 pages, nothing preempted); ``swap_in_tiers``: the swap space is
    the first KV tier (``SwapInTiers``, with prefix caching)."""
    host = kvlab.HostTier(num_pages=40) if swap_pages else None
    tiers = None
    if swap_pages and swap_in_tiers:
        host, tiers, prefix_caching = SwapInTiers(), [HostMemoryTier(num_pages=40)], True
    cache = kvlab.PagedKVCache(num_pages=swap_pages or 40, page_size=G, prefix_caching=prefix_caching,
                               kv_format=FMT, host_tier=host, tiers=tiers)
    preemption = kvlab.schedulers.SwapPreemption() if swap_pages else kvlab.schedulers.RecomputePreemption()
    scheduler = kvlab.ChunkedScheduler(max_num_seqs=max_num_seqs, max_num_batched_tokens=64,
                                       max_chunk_tokens=chunk, preemption=preemption)
    engine = kvlab.Engine(model, cache=cache, attention=kvlab.ReferenceAttention(), scheduler=scheduler,
                          max_model_len=96, steps_ahead=steps_ahead)
    outs = [c.token_ids for c in engine.generate(prompts, kvlab.SamplingParams(max_tokens=max_tokens,
                                                                                 ignore_eos=True))]
    s = cache.stats()
    assert s.pages_used == 0 and s.pages_free + s.pages_cached == s.pages_total and s.host_pages_used == 0
    assert cache.writes.num_free(None, 0) == FMT.staging_pages      # seals may wait for a next step
    return outs, scheduler


@settings(max_examples=6, deadline=None)
@given(data=st.data())
def test_any_schedule_gives_the_dense_kivi_tokens(model, data):
    shared = data.draw(st.lists(st.integers(1, 250), min_size=0, max_size=18))
    prompts = [shared + data.draw(st.lists(st.integers(1, 250), min_size=1, max_size=20)) for _ in range(3)]
    max_tokens = data.draw(st.integers(1, 14))
    chunk = data.draw(st.sampled_from([3, 8, 64]))
    outs, _ = serve(model, prompts, max_tokens, chunk=chunk, prefix_caching=data.draw(st.booleans()),
                    steps_ahead=data.draw(st.sampled_from([0, 1])))
    ref = DenseReferenceDecoder(model, kv_format=FMT)
    assert outs == [ref.greedy(p, max_tokens) for p in prompts]


@settings(max_examples=5, deadline=None)
@given(data=st.data())
def test_preemption_by_swap_gives_the_dense_kivi_tokens(model, data):
    """Too few pages for three growing sequences: victims swap their sealed pages out, come back,
    recompute their unfilled page and still give the dense decode's tokens; nothing leaks."""
    prompts = [data.draw(st.lists(st.integers(1, 250), min_size=10, max_size=30)) for _ in range(3)]
    outs, scheduler = serve(model, prompts, 24, chunk=data.draw(st.sampled_from([3, 8, 64])),
                            prefix_caching=data.draw(st.booleans()), swap_pages=13,
                            steps_ahead=data.draw(st.sampled_from([0, 1])),
                            swap_in_tiers=data.draw(st.booleans()))
    ref = DenseReferenceDecoder(model, kv_format=FMT)
    assert outs == [ref.greedy(p, 24) for p in prompts]
    assert scheduler.num_swapped_out > 0


def test_kivi_reads_full_pages_quantized_and_takes_a_fifth_of_the_bytes(model):
    tokens = jnp.arange(10, 10 + 3 * G + 2, dtype=jnp.int32)
    plain, kivi = model.dense_logits(tokens), model.dense_logits(tokens, kv_format=FMT)
    # Rows that see no full page read every key in full precision; later rows read quantized pages.
    assert bool((plain[:G - 1] == kivi[:G - 1]).all())
    assert float(jnp.abs(plain[G:] - kivi[G:]).max()) > 1e-3
    dims = dict(num_layers=2, num_kv_heads=2, head_dim=64, model_dtype=jnp.bfloat16)
    per_token = bytes_per_token(Kivi(group_size=32), **dims)           # KIVI's group of 32 tokens
    assert per_token == np.ceil(2 * 2 * (2 * 16 + 2 * 2 + 2 * 64 * 2 / 32))   # codes, V scales, K channels
    assert bytes_per_token(kvlab.kvcache.formats.PLAIN, **dims) / per_token > 5


@settings(max_examples=5, deadline=None)
@given(policy=st.sampled_from([WriteBackOnEviction(), WriteThrough()]), chunk=st.sampled_from([8, 64]),
       steps_ahead=st.sampled_from([0, 1]), order=st.permutations(range(4)))
def test_sealed_pages_go_down_the_tiers_and_come_back_with_the_same_tokens(model, policy, chunk, steps_ahead,
                                                                          order):
    """Four 40-token documents asked twice through a GPU cache of 12 pages: evicted sealed pages go
    to a host tier, then a disk tier, and are loaded back into sealed pages (no staging) when a
    document is asked again; the tokens are those of the dense KIVI decode."""
    docs = [[(11 * d + 3 * i) % 240 + 5 for i in range(40)] for d in range(4)]
    ref = DenseReferenceDecoder(model, kv_format=FMT)
    with tempfile.TemporaryDirectory() as tmp, DiskTier(pathlib.Path(tmp), num_pages=40) as disk:
        chain = TierChain(tiers=[HostMemoryTier(6), disk], policy=policy)
        cache = kvlab.PagedKVCache(num_pages=12, page_size=G, prefix_caching=True, tiers=chain, kv_format=FMT)
        engine = kvlab.Engine(model, cache=cache, attention=kvlab.ReferenceAttention(), max_model_len=64,
                              steps_ahead=steps_ahead,
                              scheduler=kvlab.ChunkedScheduler(max_num_seqs=1, max_num_batched_tokens=64,
                                                               max_chunk_tokens=chunk))
        for rnd in range(2):
            for d in order:
                prompt = docs[d] + [200 + rnd]
                [out] = engine.generate([prompt], kvlab.SamplingParams(max_tokens=3, ignore_eos=True))
                assert out.token_ids == ref.greedy(prompt, 3), (rnd, d)
        s = cache.stats()
        assert s.tiers.loads_per_tier[0] + s.tiers.loads_per_tier[1] > 0
        assert s.prefix_hit_tokens >= 4 * 40 // G * G           # every re-asked document reused whole
        assert s.pages_used == 0 and s.pages_free + s.pages_cached == s.pages_total
        assert cache.writes.num_free(None, 0) == FMT.staging_pages
        assert all(t.num_evictable() == len(t) for t in chain.tiers)


def test_a_document_larger_than_the_staging_pool_comes_back_from_a_tier(model):
    """Ten pages on the host tier, four staging pages: the loaded pages need no staging, so the
    document is admitted and served."""
    fmt = Kivi(bits=2, group_size=G, staging_pages=4)
    cache = kvlab.PagedKVCache(num_pages=14, page_size=G, prefix_caching=True, tiers=HostMemoryTier(16),
                               kv_format=fmt)
    engine = kvlab.Engine(model, cache=cache, attention=kvlab.ReferenceAttention(), max_model_len=96,
                          scheduler=kvlab.ChunkedScheduler(max_num_seqs=1, max_num_batched_tokens=16,
                                                           max_chunk_tokens=16))
    ref = DenseReferenceDecoder(model, kv_format=fmt)
    doc, other = [(5 * i) % 240 + 3 for i in range(80)], [(7 * i) % 240 + 9 for i in range(80)]
    for prompt in (doc + [1], other + [1], doc + [2]):
        [out] = engine.generate([prompt], kvlab.SamplingParams(max_tokens=3, ignore_eos=True))
        assert out.token_ids == ref.greedy(prompt, 3)
    assert cache.stats().tiers.loads_per_tier[0] > fmt.staging_pages          # more than the staging pool
    s = cache.stats()
    assert s.pages_used == 0 and cache.writes.num_free(None, 0) == 4


@pytest.mark.parametrize("build, match", [
    (lambda: kvlab.RadixKVCache(num_pages=8, page_size=G, kv_format=FMT), "RadixKVCache writes its pages"),
    (lambda: kvlab.BlockedKVCache(num_blocks=8, block_tokens=G, kv_format=FMT), "BlockedKVCache"),
    (lambda: kvlab.ContiguousKVCache(num_slots=2, max_seq_len=32, page_size=G, kv_format=FMT), "Contiguous"),
    (lambda: kvlab.PagedKVCache(num_pages=8, page_size=2 * G, kv_format=FMT), "page_size must equal"),
    (lambda: Kivi(bits=3), "2- or 4-bit"),
    (lambda: KiviPagedKVStorage.zeros(FMT, num_layers=1, num_pages=2, page_size=G, num_kv_heads=1, head_dim=6,
                                      dtype=jnp.float32), "kivi2 KV packs 4 codes a byte"),
])
def test_what_cannot_hold_kivi_pages_says_what_can(build, match):
    with pytest.raises(ValueError, match=match):
        build()


def test_a_step_larger_than_the_staging_pool_is_refused_with_the_fix(model):
    cache = kvlab.PagedKVCache(num_pages=40, page_size=G, kv_format=FMT)
    with pytest.raises(ValueError, match="raise staging_pages"):
        cache.validate_request(prompt_tokens=200, step_tokens=200, total_tokens=210)
    with pytest.raises(ValueError, match="kivi2 KV in 4 parts.*head_dim must be >= 64, got 16"):
        kvlab.Engine(model, cache=cache, attention=kvlab.PallasAttention(interpret=True), max_model_len=64)
