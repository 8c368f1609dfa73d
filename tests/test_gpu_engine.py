"""On the GPU (run on the lent machine: ``JAX_PLATFORMS=cuda pytest -m gpu``): every cache of the
family in the engine on the device (one decode step a launch, or four), greedy tokens equal to
the dense one-request-at-a-time decode (float32 with full-precision matmuls, so TF32 rounding
cannot flip a near tie)."""

from __future__ import annotations

import jax
import pytest

import kvlab
from kvlab.engine import DenseReferenceDecoder
from kvlab.models import LlamaModel, ModelConfig

pytestmark = pytest.mark.gpu

SYSTEM = list(range(40, 90))
CACHES = {
    "paged": lambda: kvlab.PagedKVCache(num_pages=24, page_size=8),
    "paged-prefix": lambda: kvlab.PagedKVCache(num_pages=24, page_size=8, prefix_caching=True),
    "blocked": lambda: kvlab.BlockedKVCache(num_blocks=12, block_tokens=16),
    "radix": lambda: kvlab.RadixKVCache(num_pages=192, page_size=1),
    "contiguous": lambda: kvlab.ContiguousKVCache(num_slots=2, max_seq_len=96, page_size=16),
    "circular": lambda: kvlab.CircularKVCache(num_pages=64, page_size=8, window=24, num_sink_tokens=4,
                                              max_step_tokens=64),
}


@pytest.mark.parametrize("decode_steps", [1, 4])
@pytest.mark.parametrize("kind", CACHES)
def test_every_cache_on_the_gpu(kind, decode_steps):
    assert jax.default_backend() == "gpu", "run with JAX_PLATFORMS=cuda on the GPU machine"
    with jax.default_matmul_precision("highest"):
        model = LlamaModel(ModelConfig.tiny(head_dim=64, num_heads=4, num_kv_heads=2), seed=1)
        cache = CACHES[kind]()
        engine = kvlab.Engine(model, cache=cache, max_model_len=256,
                              scheduler=kvlab.ContinuousScheduler(max_num_seqs=4, max_num_batched_tokens=256,
                                                                  decode_steps=decode_steps))
        prompts = [SYSTEM + [5 + i, 6 + i] for i in range(5)]
        params = kvlab.SamplingParams(max_tokens=30, ignore_eos=True)
        assert engine.runner.attention.name == "pallas"     # the GPU default: the kernels
        outs = engine.generate(prompts, params)
        ref = DenseReferenceDecoder(model, options=engine.attention_options)
        for p, c in zip(prompts, outs):
            assert c.token_ids == ref.greedy(p, 30), kind
        s = cache.stats()
        assert s.pages_used == 0 and s.pages_free + s.pages_cached == s.pages_total
        if kind in ("paged-prefix", "blocked", "radix"):
            assert s.prefix_hit_tokens > 0


SCHEDULERS = {
    "chunked": lambda: (kvlab.ChunkedScheduler(max_num_seqs=4, max_num_batched_tokens=32),
                        kvlab.PagedKVCache(num_pages=24, page_size=8, prefix_caching=True)),
    "persistent": lambda: (kvlab.PersistentScheduler(num_slots=4, tokens_per_step=32),
                           kvlab.RadixKVCache(num_pages=192, page_size=1)),
    "swap": lambda: (kvlab.ContinuousScheduler(max_num_seqs=4, max_num_batched_tokens=128,
                                               preemption=kvlab.schedulers.SwapPreemption()),
                     kvlab.BlockedKVCache(num_blocks=9, block_tokens=16, host_tier=kvlab.HostTier(32))),
}


@pytest.mark.parametrize("kind", SCHEDULERS)
def test_schedulers_on_the_gpu(kind):
    assert jax.default_backend() == "gpu", "run with JAX_PLATFORMS=cuda on the GPU machine"
    with jax.default_matmul_precision("highest"):
        model = LlamaModel(ModelConfig.tiny(head_dim=64, num_heads=4, num_kv_heads=2), seed=2)
        sched, cache = SCHEDULERS[kind]()
        engine = kvlab.Engine(model, cache=cache, scheduler=sched, max_model_len=256)
        prompts = [SYSTEM + [5 + i] * (1 + 7 * i) for i in range(5)]
        outs = engine.generate(prompts, kvlab.SamplingParams(max_tokens=30, ignore_eos=True))
        ref = DenseReferenceDecoder(model)
        for p, c in zip(prompts, outs):
            assert c.token_ids == ref.greedy(p, 30), kind
        if kind == "persistent":
            assert engine.num_compilations <= 1
        if kind == "swap":
            assert sched.num_swapped_out > 0


def test_hopper_prefill_in_a_bf16_engine():
    """bf16 with chunked prefill over prefix-cached pages: the Hopper (Mosaic GPU) prefill kernel
    serves the steps without decodes (the default) or every step (forced, then the decode kernel in
    a second launch); the engines' greedy tokens against the same engine on the Triton prefill
    kernel. Two bf16 kernels round differently, so a late near-tie may flip: the first token of every
    request (the prefill's own logits) must agree, and nearly all tokens after it."""
    assert jax.default_backend() == "gpu", "run with JAX_PLATFORMS=cuda on the GPU machine"
    from kvlab.attention import AttentionOptions
    from kvlab.attention.pallas import MosaicPrefillConfig, PallasAttention, PrefillConfig

    model = LlamaModel(ModelConfig.tiny(head_dim=64, num_heads=4, num_kv_heads=2), dtype=jax.numpy.bfloat16,
                       seed=3)
    pick = PallasAttention().prefill_kernel(dtype=model.dtype, head_dim=64, page_size=16,
                                            options=AttentionOptions(sm_scale=0.125))
    assert isinstance(pick, MosaicPrefillConfig)
    prompts = [SYSTEM * 2 + [5 + i] * (3 + 9 * i) for i in range(5)]
    params = kvlab.SamplingParams(max_tokens=24, ignore_eos=True)
    runs = []
    for attention in (PallasAttention(), PallasAttention(prefill=MosaicPrefillConfig()),
                      PallasAttention(prefill=PrefillConfig())):
        cache = kvlab.PagedKVCache(num_pages=64, page_size=16, prefix_caching=True)
        engine = kvlab.Engine(model, cache=cache,
                              scheduler=kvlab.ChunkedScheduler(max_num_seqs=4, max_num_batched_tokens=64),
                              attention=attention, max_model_len=512)
        runs.append([c.token_ids for c in engine.generate(prompts, params)])
        assert engine.cache.stats().pages_used == 0
    *hoppers, triton = runs
    for hopper in hoppers:
        assert [t[0] for t in hopper] == [t[0] for t in triton]
        same = sum(a == b for x, y in zip(hopper, triton) for a, b in zip(x, y))
        assert same >= 0.9 * sum(map(len, triton)), (hopper, triton)
