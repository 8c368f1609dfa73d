"""Quantized KV formats in the engine (jnp reference attention): every cache layout, prefix reuse
and swap to the host tier give the same greedy tokens as a one-request-at-a-time dense decode whose
K/V go through the same format; every page is freed. The Pallas kernels (interpret mode) serve a
quantized cache with the same tokens, and refuse, naming the limit, a format they cannot read."""

from __future__ import annotations

import jax.numpy as jnp
import pytest

import kvlab
from kvlab.engine import DenseReferenceDecoder
from kvlab.kvcache.formats import CalibratedScales, Fp8E4M3, Fp8E5M2, Int4, Int8, PerHead, Plain, StaticScales
from kvlab.models import LlamaModel, ModelConfig

SYSTEM = list(range(30, 52))
PROMPTS = [SYSTEM + [5 + i] * (1 + 3 * i) for i in range(4)]
PARAMS = kvlab.SamplingParams(max_tokens=10, ignore_eos=True)
FP8_SCALES = StaticScales(k=0.02, v=(0.01, 0.03))


@pytest.fixture(scope="module")
def model():
    return LlamaModel(ModelConfig.tiny(), seed=5)


def generate(model, cache, scheduler=None):
    engine = kvlab.Engine(model, cache=cache, attention=kvlab.ReferenceAttention(), max_model_len=96,
                          scheduler=scheduler or kvlab.ContinuousScheduler(max_num_seqs=3,
                                                                           max_num_batched_tokens=128))
    outs = [c.token_ids for c in engine.generate(PROMPTS, PARAMS)]
    s = cache.stats()
    assert s.pages_used == 0 and s.pages_free + s.pages_cached == s.pages_total
    return engine, outs


def dense(model, fmt, options=None):
    ref = DenseReferenceDecoder(model, options=options, kv_format=fmt)
    return [ref.greedy(p, PARAMS.max_tokens) for p in PROMPTS]


@pytest.mark.parametrize("fmt", [Int8(), Int4(), Fp8E4M3(scales=FP8_SCALES), Fp8E5M2(scales=FP8_SCALES)],
                         ids=lambda f: f.name)
def test_each_format_serves_the_dense_reference_tokens(model, fmt):
    cache = kvlab.PagedKVCache(num_pages=48, page_size=8, prefix_caching=True, kv_format=fmt)
    engine, outs = generate(model, cache)
    assert engine.storage.kv_format == fmt
    assert outs == dense(model, fmt)
    assert cache.stats().prefix_hit_tokens > 0


CACHES = {
    "radix": lambda f: kvlab.RadixKVCache(num_pages=384, page_size=1, kv_format=f),
    "blocked": lambda f: kvlab.BlockedKVCache(num_blocks=24, block_tokens=16, kv_format=f),
    "contiguous": lambda f: kvlab.ContiguousKVCache(num_slots=3, max_seq_len=96, page_size=16, kv_format=f),
}


@pytest.mark.parametrize("kind", CACHES)
def test_every_layout_stores_quantized_pages(model, kind):
    fmt = Int4()
    _, outs = generate(model, CACHES[kind](fmt))
    assert outs == dense(model, fmt)
    assert outs != dense(model, Plain())           # the format is live: int4 changes some tokens here


def test_swapped_quantized_pages_come_back_unchanged(model):
    """Swap preemption moves the blocks' stored bytes to the host tier and back."""
    fmt = Int8()
    cache = kvlab.BlockedKVCache(num_blocks=6, block_tokens=16, kv_format=fmt, host_tier=kvlab.HostTier(16))
    sched = kvlab.ContinuousScheduler(max_num_seqs=3, max_num_batched_tokens=128,
                                      preemption=kvlab.schedulers.SwapPreemption())
    _, outs = generate(model, cache, sched)
    assert sched.num_swapped_out > 0
    assert outs == dense(model, fmt)


def test_calibrated_fp8_sets_every_layer_scale_once(model):
    cache = kvlab.PagedKVCache(num_pages=48, page_size=8, kv_format=Fp8E4M3(scales=CalibratedScales(
        granularity=PerHead())))
    engine, outs = generate(model, cache)
    scales = engine.storage.layer_scales
    assert bool(jnp.all(scales > 0)) and len(set(map(len, outs))) == 1
    with pytest.raises(ValueError, match="needs static scales"):
        dense(model, cache.kv_format)


def test_the_kernels_serve_a_quantized_cache_and_refuse_what_they_cannot_read(model):
    prompts, params = PROMPTS[:2], kvlab.SamplingParams(max_tokens=4, ignore_eos=True)
    cache = kvlab.PagedKVCache(num_pages=48, page_size=8, prefix_caching=True, kv_format=Int8())
    kernels = kvlab.PallasAttention(interpret=True)
    engine = kvlab.Engine(model, cache=cache, attention=kernels, max_model_len=96)
    outs = [c.token_ids for c in engine.generate(prompts, params)]
    ref = DenseReferenceDecoder(model, kv_format=Int8())
    assert outs == [ref.greedy(p, params.max_tokens) for p in prompts]
    assert cache.stats().pages_used == 0
    # the tiny model's head_dim 16 in two int4 halves of 8: too narrow for the kernels' matmuls
    cache = kvlab.PagedKVCache(num_pages=48, page_size=16, kv_format=Int4())
    with pytest.raises(ValueError, match="int4 KV in 2 parts.*head_dim must be >= 32, got 16"):
        kvlab.Engine(model, cache=cache, attention=kvlab.PallasAttention(interpret=True), max_model_len=96)
