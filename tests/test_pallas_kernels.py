"""The Pallas kernels in interpret mode on the CPU, against the plain-jnp reference.

Hypothesis draws ragged batches (empty, single-token and chunked sequences, lengths off the page
grid, padded slots, pages in random order) for a few static option sets; relative error under
1e-5 for float32 and 1e-2 for bf16, never NaN. Small tiles (16 tokens) make even short contexts
span several tiles, several pages per tile and several splits.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from kernel_cases import OPTIONS, build_case, ragged_lengths, relative_error

import kvlab
from kvlab.attention import AttentionOptions, ReferenceAttention, query_spec
from kvlab.attention.pallas import (
    DecodeConfig,
    MosaicPrefillConfig,
    PallasAttention,
    PrefillConfig,
    choose_num_splits,
)
from kvlab.attention.pallas import hopper as hopper_module
from kvlab.attention.pallas import prefill as prefill_module
from kvlab.attention.pallas.launches import DecodeLaunch, FusedLaunch
from kvlab.attention.pallas.plan import prefill_plan
from kvlab.engine import DenseReferenceDecoder
from kvlab.kvcache.blocked_storage import BlockedKVStorage
from kvlab.kvcache.storage import PagedKVStorage

# (options, dtype, page size, fused mixed launch, decode splits, blocked layout)
COMBOS = [("plain", "float32", 8, True, None, False),
          ("window", "float32", 4, True, 2, False),
          ("window+sinks", "bfloat16", 16, False, 2, True),
          ("softcap", "float32", 8, True, None, True)]
SHAPES = dict(token_bucket=32, seq_bucket=4, page_bucket=8, num_q_heads=4, num_kv_heads=2, head_dim=16)


def backend(fused=True, splits=None) -> PallasAttention:
    return PallasAttention(interpret=True, fuse_mixed=fused,
                           decode=DecodeConfig(block_k=16, num_splits=splits),
                           prefill=PrefillConfig(block_m=16, block_k=16))


@functools.cache
def compiled(fused, splits, options: AttentionOptions):
    be = backend(fused, splits)
    return jax.jit(lambda q, storage, batch: be(q, storage, 1, batch, options))


@settings(max_examples=24, deadline=None)
@given(combo=st.sampled_from(COMBOS), data=st.data(), seed=st.integers(0, 2 ** 16))
def test_kernels_match_the_reference(combo, data, seed):
    name, dtype, page, fused, splits, blocked = combo
    max_kv = SHAPES["page_bucket"] * page
    q_lens, kv_lens = data.draw(ragged_lengths(max_seqs=4, max_tokens=32, max_kv=max_kv,
                                               decode_only=data.draw(st.booleans())))
    q, storage, batch = build_case(q_lens, kv_lens, seed=seed, page_size=page, dtype=jnp.dtype(dtype),
                                   blocked=blocked, **SHAPES)
    options = AttentionOptions(sm_scale=0.3, **OPTIONS[name])
    out = compiled(fused, splits, options)(q, storage, batch)
    assert not bool(jnp.isnan(out).any())
    err = relative_error(out, q, storage, batch, options)
    assert err < (1e-5 if dtype == "float32" else 1e-2), (q_lens, kv_lens, err)
    # rows that are padding or have no visible key are exactly zero, as the contract says
    assert float(jnp.abs(out[sum(q_lens):]).max(initial=0.0)) == 0.0


@pytest.mark.parametrize("head_dim,num_q_heads,num_kv_heads,dtype", [
    (64, 8, 8, "float16"), (128, 6, 2, "bfloat16"), (256, 8, 1, "float32")])
def test_head_dims_gqa_ratios_and_dtypes(head_dim, num_q_heads, num_kv_heads, dtype):
    q, storage, batch = build_case([1, 9, 0, 1], [30, 40, 7, 1], seed=head_dim, page_size=8,
                                   num_q_heads=num_q_heads, num_kv_heads=num_kv_heads, head_dim=head_dim,
                                   dtype=jnp.dtype(dtype), token_bucket=16, seq_bucket=4, page_bucket=8)
    options = AttentionOptions(sm_scale=head_dim ** -0.5)
    out = backend()(q, storage, 1, batch, options)
    assert out.dtype == q.dtype and not bool(jnp.isnan(out).any())
    assert relative_error(out, q, storage, batch, options) < (1e-5 if dtype == "float32" else 1e-2)


# The Mosaic GPU prefill under Mosaic GPU's interpreter (simulated warpgroups, barriers and TMA
# copies; about 20 s a case here): the producer's page walk, the ring of KV slots, causal tile
# skipping, whole and row-by-row output stores, idle programs zeroing padding, GQA, both layouts.
# (q_lens, kv_lens, page size, blocked, dtype, Hq, Hkv, soft cap, token bucket)
MOSAIC_CASES = [([13, 1], [30, 9], 8, False, "bfloat16", 2, 1, None, 16),
                ([70], [300], 16, True, "float16", 1, 1, 2.0, 72)]


@pytest.mark.parametrize("q_lens,kv_lens,page,blocked,dtype,hq,hkv,cap,tokens", MOSAIC_CASES)
def test_mosaic_prefill_matches_the_reference(q_lens, kv_lens, page, blocked, dtype, hq, hkv, cap, tokens):
    q, storage, batch = build_case(q_lens, kv_lens, seed=len(q_lens), page_size=page, num_q_heads=hq,
                                   num_kv_heads=hkv, head_dim=64, dtype=jnp.dtype(dtype),
                                   token_bucket=tokens, seq_bucket=len(q_lens),
                                   page_bucket=-(-max(kv_lens) // page), blocked=blocked)
    options = AttentionOptions(sm_scale=0.125, soft_cap=cap)
    be = PallasAttention(interpret=True, prefill=MosaicPrefillConfig(), decode=DecodeConfig(block_k=16))
    out = be(q, storage, 1, batch, options)          # the Mosaic prefill, then the decode kernel in place
    assert not bool(jnp.isnan(out).any())
    assert relative_error(out, q, storage, batch, options) < 1e-2
    assert float(jnp.abs(out[sum(q_lens):]).max(initial=0.0)) == 0.0


def test_mosaic_prefill_lowers_once_for_every_layer_of_a_step():
    """The layers of a step call the Hopper prefill with equal shapes: the step's module holds
    one lowering of it, called once a layer (lowered per layer, every layer's kernel was lowered
    and compiled anew: about 1.5 s a layer on the H200). Interpret mode: this shows the layers'
    calls share one function; that the GPU compiles its module once rests on the H200 timings."""
    q, storage, batch = build_case([13, 1], [30, 9], seed=0, page_size=8, num_q_heads=2, num_kv_heads=1,
                                   head_dim=64, dtype=jnp.bfloat16, token_bucket=16, seq_bucket=2,
                                   page_bucket=4, num_layers=3)
    options = AttentionOptions(sm_scale=0.125)
    be = PallasAttention(interpret=True, prefill=MosaicPrefillConfig(), decode=DecodeConfig(block_k=16))
    layers = range(3)
    text = jax.jit(lambda q, s, b: [be(q, s, layer, b, options) for layer in layers]).lower(
        q, storage, batch).as_text()
    assert text.count("func.func private @ragged_prefill") == 1
    assert text.count("call @ragged_prefill") == len(layers)


def test_prefill_kernel_choice_and_its_limits():
    plain = AttentionOptions(sm_scale=0.125)
    pick = functools.partial(PallasAttention().prefill_kernel, head_dim=128, page_size=16, options=plain)
    assert pick(dtype=jnp.bfloat16) == PrefillConfig()                   # no Hopper GPU here: Triton
    forced = PallasAttention(interpret=True, prefill=MosaicPrefillConfig())
    chosen = forced.prefill_kernel(dtype=jnp.bfloat16, head_dim=128, page_size=16, options=plain)
    assert chosen is forced.prefill
    with pytest.raises(ValueError, match="bfloat16 or float16, not float32.*PrefillConfig"):
        forced.prefill_kernel(dtype=jnp.float32, head_dim=128, page_size=16, options=plain)
    with pytest.raises(ValueError, match="head_dim 64 or 128, not 256"):
        forced.prefill_kernel(dtype=jnp.bfloat16, head_dim=256, page_size=16, options=plain)
    with pytest.raises(ValueError, match="powers of two >= 8, not 4"):
        forced.prefill_kernel(dtype=jnp.bfloat16, head_dim=64, page_size=4, options=plain)
    with pytest.raises(ValueError, match="no sliding window"):
        forced.prefill_kernel(dtype=jnp.bfloat16, head_dim=64, page_size=16,
                              options=AttentionOptions(sm_scale=0.1, sliding_window=8))
    with pytest.raises(ValueError, match="needs a Hopper GPU"):
        PallasAttention(prefill=MosaicPrefillConfig()).prefill_kernel(dtype=jnp.bfloat16, head_dim=64,
                                                                      page_size=16, options=plain)
    q, _, mixed = build_case([300] + [1] * 5, [900] + [40] * 5, seed=0, page_size=16, num_q_heads=2,
                             num_kv_heads=1, head_dim=64, dtype=jnp.bfloat16, token_bucket=320, seq_bucket=6,
                             page_bucket=64)
    assert mixed.has_decodes and not mixed.decode_only       # decodes too: the fused Triton launch
    _, _, prefill = build_case([300, 20], [900, 20], seed=0, page_size=16, num_q_heads=2, num_kv_heads=1,
                               head_dim=64, dtype=jnp.bfloat16, token_bucket=320, seq_bucket=2,
                               page_bucket=64)
    assert not prefill.has_decodes                           # prefills alone: the Hopper kernel alone
    with pytest.raises(ValueError, match="block_kv must be a power of two and a multiple of 64"):
        MosaicPrefillConfig(block_kv=96)


def _step_batches():
    """(q, storage, batches): a mixed step, a step of prefills alone, a step of decodes alone."""
    shapes = dict(page_size=16, num_q_heads=2, num_kv_heads=1, head_dim=64, dtype=jnp.bfloat16,
                  token_bucket=32, seq_bucket=2, page_bucket=4)
    q, storage, mixed = build_case([9, 1], [20, 40], seed=0, **shapes)
    prefills = build_case([9, 3], [20, 40], seed=0, **shapes)[2]
    decodes = build_case([1, 1], [20, 40], seed=0, **shapes)[2]
    assert (mixed.has_decodes, prefills.has_decodes, decodes.decode_only) == (True, False, True)
    return q, storage, dict(mixed=mixed, prefills=prefills, decodes=decodes)


def test_plan_picks_the_launches_of_each_kind_of_step(monkeypatch):
    q, storage, batches = _step_batches()
    opts = AttentionOptions(sm_scale=0.125)

    def launches(backend, kind):
        return backend.plan(batches[kind], storage, opts, query_spec(q)).launches

    dec = DecodeLaunch(DecodeConfig())
    fused = (FusedLaunch(prefill=PrefillConfig(), decode=dec),)
    auto, two = PallasAttention(interpret=True), PallasAttention(interpret=True, fuse_mixed=False)
    assert launches(auto, "decodes") == (dec,)
    assert launches(auto, "mixed") == launches(auto, "prefills") == fused     # no Hopper GPU: Triton
    assert launches(two, "mixed") == launches(two, "prefills") == (PrefillConfig(), dec)
    forced = PallasAttention(interpret=True, prefill=MosaicPrefillConfig())
    assert launches(forced, "mixed") == (MosaicPrefillConfig(), dec)
    assert launches(forced, "prefills") == (MosaicPrefillConfig(),)          # no decode launch at all
    assert launches(forced, "decodes") == (dec,)
    # On a Hopper GPU (compiled): the Hopper kernel alone for prefills, the fused launch with decodes.
    monkeypatch.setattr(prefill_module, "is_hopper", lambda: True)
    monkeypatch.setattr(hopper_module, "is_hopper", lambda: True)
    gpu, gpu_two = PallasAttention(), PallasAttention(fuse_mixed=False)
    assert launches(gpu, "prefills") == (MosaicPrefillConfig(),)
    assert launches(gpu, "mixed") == fused
    assert launches(gpu_two, "mixed") == (MosaicPrefillConfig(), dec)
    assert launches(gpu, "decodes") == (dec,)
    plan = gpu.plan(batches["prefills"], storage, opts, query_spec(q))
    assert int(plan.meta[2]) == int(plan.work.total) == 2                   # 9 and 3 tokens: a block each
    f32 = PallasAttention().plan(batches["prefills"], jax.tree.map(lambda a: a.astype(jnp.float32), storage),
                                 opts, query_spec(q.astype(jnp.float32)))
    assert f32.launches == fused                                             # the Hopper kernel: no f32


def test_specialize_keeps_only_the_flags_a_backend_compiles_for(monkeypatch):
    _, _, b = _step_batches()

    def flags(backend, kind):
        out = backend.specialize(b[kind])
        return out.decode_only, out.has_decodes

    assert flags(ReferenceAttention(), "decodes") == flags(ReferenceAttention(), "prefills") == (False, True)
    for backend in (PallasAttention(), PallasAttention(prefill=PrefillConfig())):   # Triton only here
        assert flags(backend, "decodes") == (True, True)
        assert flags(backend, "prefills") == (False, True)
    assert flags(PallasAttention(prefill=MosaicPrefillConfig()), "prefills") == (False, False)
    monkeypatch.setattr(prefill_module, "is_hopper", lambda: True)
    assert flags(PallasAttention(), "prefills") == (False, False)            # the Hopper kernel may run
    assert flags(PallasAttention(interpret=True), "prefills") == (False, True)


@pytest.mark.parametrize("kind", [PagedKVStorage, BlockedKVStorage])
def test_kv_write_kernel_equals_the_scatter(kind):
    rng = np.random.default_rng(0)
    storage = kind.zeros(num_layers=3, num_pages=6, page_size=4, num_kv_heads=2, head_dim=16,
                         dtype=jnp.float32)
    storage = jax.tree.map(lambda a: jnp.asarray(rng.standard_normal(a.shape), jnp.float32), storage)
    slots = jnp.asarray(np.concatenate([rng.permutation(24)[:13], [-1, -1, -1]]).astype(np.int32))
    k, v = (jnp.asarray(rng.standard_normal((16, 2, 16)), jnp.float32) for _ in range(2))
    got = backend().write_kv(storage, 2, k, v, slots)
    want = storage.write(2, k, v, slots)
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_unsupported_combinations_name_the_limit():
    with pytest.raises(ValueError, match="head_dim 96 is not supported.*64, 128, 256"):
        PallasAttention().check(num_q_heads=8, num_kv_heads=8, head_dim=96, page_size=16, dtype=jnp.bfloat16)
    with pytest.raises(ValueError, match="bfloat16, float16 or float32.*not int8"):
        PallasAttention().check(num_q_heads=8, num_kv_heads=8, head_dim=64, page_size=16, dtype=jnp.int8)
    with pytest.raises(ValueError, match="GQA ratio 32 exceeds"):
        PallasAttention().check(num_q_heads=32, num_kv_heads=1, head_dim=64, page_size=16, dtype=jnp.float32)
    with pytest.raises(ValueError, match="block_k must be a power of two"):
        DecodeConfig(block_k=48)
    model = kvlab.models.LlamaModel(kvlab.models.ModelConfig.tiny(head_dim=24), seed=0)
    with pytest.raises(ValueError, match="head_dim 24"):      # the engine refuses at once, no silent fallback
        kvlab.Engine(model, cache=kvlab.PagedKVCache(num_pages=8, page_size=4), attention=PallasAttention())


def test_split_heuristic_fills_the_gpu_only_when_the_batch_does_not():
    cfg = DecodeConfig()
    assert choose_num_splits(cfg, num_seqs=64, num_kv_heads=8, max_kv_len=4096, num_sms=132) == 1
    assert choose_num_splits(cfg, num_seqs=4, num_kv_heads=8, max_kv_len=32768, num_sms=132) == 8
    assert choose_num_splits(cfg, num_seqs=1, num_kv_heads=8, max_kv_len=256, num_sms=132) == 1   # too short
    assert choose_num_splits(DecodeConfig(num_splits=3), num_seqs=1, num_kv_heads=1, max_kv_len=64,
                             num_sms=132) == 3


def test_prefill_plan_covers_every_query_block_once_heaviest_first():
    cu = jnp.array([0, 5, 6, 6, 23, 23], jnp.int32)          # q lens 5, 1 (decode), 0, 17, padding
    seq, first, total = prefill_plan(cu, 4, block_q=4, num_programs=12, include_decodes=False)
    got = sorted(zip(np.asarray(seq)[:int(total)].tolist(), np.asarray(first)[:int(total)].tolist()))
    assert got == [(0, 0), (0, 4), (3, 0), (3, 4), (3, 8), (3, 12), (3, 16)]
    assert (int(seq[0]), int(first[0])) == (3, 16)


def test_engine_with_the_kernels_gives_the_dense_greedy_tokens(tiny_model):
    """Chunked prefill over a prefix-cached paged cache: mixed steps (chunks with cached prefixes
    beside decodes) and decode-only steps, all through the interpret-mode kernels."""
    cache = kvlab.PagedKVCache(num_pages=40, page_size=4, prefix_caching=True)
    engine = kvlab.Engine(tiny_model, cache=cache, attention=backend(),
                          scheduler=kvlab.ChunkedScheduler(max_num_seqs=4, max_num_batched_tokens=16))
    shared = list(range(30, 47))
    prompts = [shared + [5], shared + [6, 7], [9, 10, 11], shared + [8] * 9]
    outs = engine.generate(prompts, kvlab.SamplingParams(max_tokens=6, ignore_eos=True))
    ref = DenseReferenceDecoder(tiny_model)
    assert [o.token_ids for o in outs] == [ref.greedy(p, 6) for p in prompts]
    assert cache.stats().prefix_hit_tokens > 0
