"""Tensor parallelism on fake CPU devices (conftest asks XLA for 4): TP 2 and 4 give the greedy tokens
of TP 1 for every model family, the bundled SmolLM2, every cache and KV format, and any request
trace; the head layout for a degree (replicated or padded KV heads) changes no output; weights and
KV are split as documented; bad meshes are refused."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import examples
from hypothesis import given, settings
from hypothesis import strategies as st
from test_engine_property import reference, run_trace, traces

import kvlab
from kvlab.kvcache.formats import Int4, Int8
from kvlab.models import LlamaModel, ModelConfig
from kvlab.parallel import TensorParallel, tp_config, tp_heads, tp_weights


def mesh(n: int):
    return jax.make_mesh((n,), ("tp",), devices=jax.devices()[:n])


def greedy(model, prompts, *, cache=None, scheduler=None, max_tokens=6):
    engine = kvlab.Engine(model, cache=cache or kvlab.PagedKVCache(num_pages=32, page_size=8),
                          scheduler=scheduler, max_model_len=96)
    outs = engine.generate(prompts, kvlab.SamplingParams(max_tokens=max_tokens, ignore_eos=True))
    assert engine.cache.stats().pages_used == 0
    return [c.token_ids for c in outs]


PROMPTS = [[5, 6, 7, 8, 9], list(range(30, 57)), [200, 3]]


def test_four_fake_devices_are_there():
    assert len(jax.devices()) >= 4, "conftest sets --xla_force_host_platform_device_count=4"


@pytest.mark.parametrize("family", ["llama2", "qwen2-bias-tied", "mistral-window"])
def test_families_give_the_tokens_of_one_device(family, tmp_path):
    from test_model_parity import save_random_hf_model

    save_random_hf_model(family, tmp_path)
    model, _ = kvlab.models.load(str(tmp_path), dtype=jnp.float32)
    want = greedy(model, PROMPTS)
    for n in (2, 4):
        assert greedy(TensorParallel(model, mesh(n)), PROMPTS) == want, f"{family}, TP {n}"


def test_a_checkpoint_is_split_as_it_is_read(tmp_path):
    """``TensorParallel.load``: the checkpoint is read into host memory (no device array of it is
    made) and each device receives only its share; the tokens are the one-device model's."""
    from test_model_parity import save_random_hf_model

    save_random_hf_model("llama2", tmp_path)
    checkpoint = kvlab.models.read_checkpoint(str(tmp_path))
    assert all(isinstance(w, np.ndarray) for w in checkpoint.weights.values())
    sharded, _ = TensorParallel.load(str(tmp_path), mesh(2))
    layers, hidden, inner = checkpoint.weights["w_up"].shape
    shards = sharded.inner.w_gate_up[...].addressable_shards       # gate and up, half of each
    assert [s.data.shape for s in shards] == [(layers, hidden, 2 * (inner // 2))] * 2
    model, _ = kvlab.models.load(str(tmp_path))
    assert greedy(sharded, PROMPTS) == greedy(model, PROMPTS)
    in_bf16, _ = TensorParallel.load(str(tmp_path), mesh(2), dtype=jnp.bfloat16)
    assert in_bf16.inner.w_qkv[...].dtype == jnp.bfloat16 and in_bf16.dtype == jnp.bfloat16


def test_bundled_smollm2_pads_its_heads_and_gives_the_same_tokens(smollm2):
    model, tokenizer = smollm2
    prompts = [tokenizer.encode(t) for t in ("The capital of France is", "def fibonacci(n):")]
    want = greedy(model, prompts, max_tokens=8)
    for n in (2, 4):
        sharded = TensorParallel(model, mesh(n))
        assert (sharded.config.num_heads, sharded.config.num_kv_heads) == (12, 4)       # 9, 3 padded
        assert greedy(sharded, prompts, max_tokens=8) == want, f"TP {n}"


@pytest.mark.parametrize("make_cache", [
    lambda: kvlab.BlockedKVCache(num_blocks=32, block_tokens=8),
    lambda: kvlab.RadixKVCache(num_pages=256, page_size=1),
    lambda: kvlab.PagedKVCache(num_pages=32, page_size=8, prefix_caching=True, kv_format=Int8()),
    lambda: kvlab.BlockedKVCache(num_blocks=32, block_tokens=8, kv_format=Int4()),
], ids=["blocked", "radix", "paged-prefix-int8", "blocked-int4"])
def test_every_cache_and_format_shards(tiny_model, make_cache):
    prompts = PROMPTS + [PROMPTS[1] + [9, 9]]                 # a shared prefix for the prefix caches
    scheduler = kvlab.ChunkedScheduler(max_num_seqs=4, max_num_batched_tokens=16)   # chunked prefill
    want = greedy(tiny_model, prompts, cache=make_cache(), scheduler=scheduler)
    got = greedy(TensorParallel(tiny_model, mesh(2)), prompts, cache=make_cache(),
                 scheduler=kvlab.ChunkedScheduler(max_num_seqs=4, max_num_batched_tokens=16))
    assert got == want


def test_the_pallas_kernels_run_per_shard(tiny_model):
    want = greedy(tiny_model, PROMPTS)
    engine = kvlab.Engine(TensorParallel(tiny_model, mesh(2)), max_model_len=96,
                          attention=kvlab.PallasAttention(interpret=True),
                          cache=kvlab.PagedKVCache(num_pages=32, page_size=8))
    outs = engine.generate(PROMPTS, kvlab.SamplingParams(max_tokens=6, ignore_eos=True))
    assert [c.token_ids for c in outs] == want


@settings(max_examples=examples(12))
@given(traces(), st.sampled_from([2, 4]))
def test_any_trace_on_a_mesh_equals_one_request_at_a_time(tiny_model, trace, degree):
    reqs, num_pages, page_size, max_num_seqs, steps_ahead, kv_format, decode_steps = trace
    cache = kvlab.PagedKVCache(num_pages=max(num_pages, -(-(30 + 12) // page_size)), page_size=page_size,
                               kv_format=kv_format)
    engine = kvlab.Engine(TensorParallel(tiny_model, mesh(degree)), cache=cache, steps_ahead=steps_ahead,
                          scheduler=kvlab.ContinuousScheduler(max_num_seqs=max_num_seqs,
                                                              max_num_batched_tokens=64,
                                                              decode_steps=decode_steps))
    for (prompt, max_tokens, _), got in zip(reqs, run_trace(engine, reqs)):
        assert got == reference(tiny_model, prompt, max_tokens, kv_format)
    assert cache.stats().pages_used == 0


def test_head_layouts():
    config = ModelConfig.tiny()                                                  # 4 heads, 2 KV heads
    assert [tp_heads(config, n) for n in (1, 2, 4)] == [(4, 2, 1), (4, 2, 1), (4, 4, 2)]
    assert tp_heads(ModelConfig.tiny(num_heads=8, num_kv_heads=8), 4) == (8, 8, 1)
    assert tp_heads(ModelConfig.tiny(num_heads=4, num_kv_heads=1), 4) == (4, 4, 4)  # a copy per query head
    assert tp_heads(ModelConfig.tiny(num_heads=2, num_kv_heads=2), 4) == (4, 4, 1)  # groups of 1: padded
    assert tp_heads(ModelConfig.smollm2_135m(), 4) == (12, 4, 1)


@pytest.mark.parametrize("degree, heads, kv_heads", [(4, 4, 2), (4, 6, 3), (2, 6, 3), (8, 4, 2)])
def test_laid_out_heads_change_no_output(degree, heads, kv_heads):
    """Replicated or padded heads give the logits of the original model (one device)."""
    config = ModelConfig.tiny(num_heads=heads, num_kv_heads=kv_heads, attention_bias=True)
    model = LlamaModel(config, seed=1)
    laid_out = LlamaModel(tp_config(config, degree), weights=tp_weights(model.host_weights(), config, degree))
    tokens = jnp.asarray(np.random.default_rng(0).integers(3, 256, size=19))
    np.testing.assert_allclose(np.asarray(laid_out.dense_logits(tokens)),
                               np.asarray(model.dense_logits(tokens)), rtol=1e-5, atol=1e-5)


def test_weights_and_kv_are_split_over_the_mesh(tiny_model):
    sharded = TensorParallel(tiny_model, mesh(2))
    inner = sharded.inner
    assert inner.w_qkv[...].addressable_shards[0].data.shape == (2, 64, 32 + 16 + 16)  # q 2/4 heads, kv 1/2
    assert inner.wo[...].addressable_shards[0].data.shape == (2, 32, 64)
    assert inner.w_down[...].addressable_shards[0].data.shape == (2, 64, 64)    # half of 128 rows
    assert inner.lm_head[...].addressable_shards[0].data.shape == (64, 128)     # half the vocabulary
    assert inner.embed[...].addressable_shards[0].data.shape == (256, 64)       # replicated
    engine = kvlab.Engine(sharded, cache=kvlab.PagedKVCache(num_pages=8, page_size=8), max_model_len=32)
    k = engine.storage.k
    assert k.shape[3] == 2 and k.addressable_shards[0].data.shape[3] == 1 and len(k.sharding.device_set) == 2


def test_unrolled_layers_keep_each_layer_split(tiny_model):
    """The unrolled loop keeps each layer's weights as arrays of their own (the GPUs' default):
    each is split like its stacked weight, and the tokens are those of one device."""
    from kvlab.models import UnrolledLayers

    sharded = TensorParallel(tiny_model, mesh(2), layer_loop=UnrolledLayers())
    inner = sharded.inner
    assert inner.w_qkv_layer1[...].addressable_shards[0].data.shape == (64, 64)
    assert inner.w_down_layer0[...].addressable_shards[0].data.shape == (64, 64)
    assert inner.attn_norm_layer1[...].addressable_shards[0].data.shape == (64,)
    assert greedy(sharded, PROMPTS) == greedy(tiny_model, PROMPTS)


def test_bad_meshes_are_refused(tiny_model):
    with pytest.raises(ValueError, match=r"the mesh has no axis 'tp'; its axes: \('data',\)"):
        TensorParallel(tiny_model, jax.make_mesh((2,), ("data",), devices=jax.devices()[:2]))
    odd = LlamaModel(ModelConfig.tiny(intermediate_size=96 + 2), seed=0)
    with pytest.raises(ValueError, match="intermediate_size=98 does not split over 4 devices"):
        TensorParallel(odd, mesh(4))
    with pytest.raises(ValueError, match="vocab_size=258 does not split over 4 devices"):
        TensorParallel(LlamaModel(ModelConfig.tiny(vocab_size=258), seed=0), mesh(4))


def test_random_weights_are_made_on_the_devices():
    """``TensorParallel.random``: each device generates its share; the model is the one-device model
    of the same weights."""
    sharded = TensorParallel.random(ModelConfig.tiny(), mesh(4), seed=3)
    assert (sharded.config.num_heads, sharded.config.num_kv_heads) == (4, 4)           # laid out for 4
    assert sharded.inner.w_gate_up[...].addressable_shards[0].data.shape == (2, 64, 32 + 32)
    norms = np.asarray(sharded.inner.attn_norm[...])
    assert (norms == 1).all() and 0.015 < np.asarray(sharded.inner.w_qkv[...]).std() < 0.025
    plain = LlamaModel(sharded.config, weights=sharded.inner.host_weights())
    assert greedy(sharded, PROMPTS) == greedy(plain, PROMPTS)
    with pytest.raises(TypeError, match="a model, or"):
        TensorParallel(None, mesh(2))
